"""Fixtures of the security tests.

Nothing here imports the service at module level: pytest imports this file before the
root conftest's pytest_configure has pointed the settings at the run's servers.
"""

from collections.abc import AsyncIterator

import asyncpg
import pytest
from faststream.nats import NatsBroker


@pytest.fixture
async def br(db: asyncpg.Connection) -> AsyncIterator[NatsBroker]:
    """The service's broker in memory on the emptied run database, dead letters captured."""
    from tests.security.in_memory import in_memory_broker

    async for service_broker in in_memory_broker():
        yield service_broker
