"""The service's broker in memory (TestNatsBroker) on the real database, dead letters captured."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from faststream.message import StreamMessage
from faststream.nats import JStream, NatsBroker, NatsMessage, TestNatsBroker

from service.config import get_settings
from service.deadletters.letters import DETAIL, REASON
from service.main import broker

config = get_settings()


@dataclass(frozen=True)
class Letter:
    """A dead letter as a DLQ reader sees it."""

    body: bytes
    reason: str
    detail: str


captured: list[Letter] = []
dlq_reader = NatsBroker()


async def _undecoded(message: StreamMessage[Any]) -> bytes:
    # FastStream would json.loads a letter's body for the handler; a 3,000-level array
    # would then fail here, in the test's reader, as no reader of the real stream would.
    return message.body


@dlq_reader.subscriber(
    f"{config.dlq_subject_prefix}.*",
    stream=JStream(config.dlq_stream, declare=False),
    decoder=_undecoded,
)
async def read_dead_letter(message: NatsMessage) -> None:
    """Keep every dead letter the service publishes."""
    headers = dict(message.headers)
    captured.append(Letter(message.body, headers[REASON], headers[DETAIL]))


async def in_memory_broker() -> AsyncIterator[NatsBroker]:
    """The service's broker in memory, its dead letters routed to the reader above."""
    captured.clear()
    async with TestNatsBroker(broker, dlq_reader) as (service_broker, _):
        yield service_broker


async def settle(
    br: NatsBroker, db: asyncpg.Connection, body: bytes, subject: str
) -> tuple[int, list[Letter]]:
    """Publish one message: it must end as one row or one dead letter, at once, without error."""
    rows_before, letters_before = await row_count(db), len(captured)
    async with asyncio.timeout(10):  # a hang fails the example instead of the whole run
        await br.publish(body, subject, stream=config.stream)
    rows, letters = await row_count(db) - rows_before, captured[letters_before:]
    assert (rows, len(letters)) in {(1, 0), (0, 1)}, (rows, letters, body[:200], subject)
    return rows, letters


async def row_count(db: asyncpg.Connection) -> int:
    """Every audit row in the run's database."""
    count: int = await db.fetchval("SELECT count(*) FROM audit_logs")
    return count
