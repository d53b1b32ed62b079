"""PostgreSQL faults: an outage in the middle of a stream, a row the database refuses."""

import asyncio
import random
import time
from pathlib import Path

import pytest

from tests.faults.support import (
    fault_stack,
    until,
)
from tests.faults.traffic import (
    Message,
    Publisher,
    event,
    expected,
    mixed_stream,
    refused,
    valid,
)
from tests.integration_support import readyz
from tests.session_events import tenant_refused_by_database

pytestmark = pytest.mark.faults


async def test_postgres_outage_mid_stream_recovers_in_process_without_loss_or_double(
    tmp_path: Path,
) -> None:
    messages = mixed_stream(random.Random(1), 4_000, duplicate_share=0.02, poison_share=0.01)
    async with fault_stack(tmp_path) as stack:
        service = await stack.start_service("service")
        publishing = asyncio.create_task(Publisher(stack.js).publish(messages, rate=250))

        await until(lambda: stack.has_rows(300), within=60, what="rows being written")
        await asyncio.to_thread(stack.postgres.stop)
        down_at = time.monotonic()

        async def database_reported_down() -> bool:
            answer = await readyz(service)
            return (
                answer is not None
                and answer[0] == 503
                and answer[1]["checks"]["database"] is False
                and "database" in answer[1]["down"]
            )

        await until(database_reported_down, within=20, what="/readyz 503 with database false")
        # The outage itself: ~10 s of events arriving while nothing can be written.
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - down_at)))
        await asyncio.to_thread(stack.postgres.start)

        async def ready_again() -> bool:
            answer = await readyz(service)
            return answer is not None and answer[0] == 200

        await until(ready_again, within=30, what="/readyz 200 after the outage")
        sequences = await publishing
        outcome = await stack.verify_exact(expected(messages, sequences), within=180)

        assert service.proc is not None
        assert service.proc.poll() is None, "recovered in the same process, never restarted"
        assert "database unavailable" in service.log()  # the outage really hit the writes
        assert outcome.deliveries > len(messages)  # events were retried, and written once


async def test_row_refused_by_database_is_dead_lettered_alone_and_its_batch_committed(
    tmp_path: Path,
) -> None:
    rng = random.Random(8)
    async with (
        fault_stack(tmp_path) as stack,
        stack.owner() as conn,
        tenant_refused_by_database(conn) as tenant,
    ):
        messages: list[Message] = [valid(event(rng)) for _ in range(300)]
        messages[150] = refused(event(rng, tenant_id=tenant))
        # Published before the service starts, so that one fetch takes them all.
        sequences = await Publisher(stack.js).publish(messages)
        await stack.start_service("service")
        want = expected(messages, sequences)
        await stack.verify_exact(want, within=60)

        assert len(want.dead) == 1
        neighbours = [messages[149].session_id, messages[151].session_id]
        same_transaction = await conn.fetchval(
            "SELECT count(DISTINCT ingested_at) FROM audit_logs "
            "WHERE details->>'session_id' = ANY($1::text[])",
            neighbours,
        )
        # ingested_at is now(), the transaction's start: one value, one transaction.
        assert same_transaction == 1, "the refused row's neighbours were one commit"
