"""Redelivery through the running service: consumer restarts, database outages, lost fetches."""

import asyncio
from pathlib import Path

import asyncpg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from service.dev.embedded import EmbeddedPostgres
from service.dev.stack import migrate
from tests.integration_support import (
    audit_rows,
    consumer,
    drained,
    eventually,
    has_rows,
    isolated,
    publish_event,
    readyz,
    rows_per_session,
    running_service,
    session_event,
)


async def test_restarted_consumer_redelivers_everything_and_writes_no_second_row(
    tmp_path: Path, db: asyncpg.Connection, js: JetStreamContext
) -> None:
    events = [session_event() for _ in range(5)]
    ids = [e["session_id"] for e in events]
    async with isolated(js, "restart") as names:
        async with running_service(tmp_path / "first.log", **names.env):
            last_seq = 0
            for event in events:
                last_seq = await publish_event(js, event)
            await eventually(lambda: drained(js, names.durable), within=20, what="every ack")
        first_ids = {r["session_id"]: r["id"] for r in await audit_rows(db, ids)}
        assert len(first_ids) == 5

        # A lost durable is recreated by the service, delivering the whole stream again.
        await js.delete_consumer("DEVICE_EVENTS", names.durable)
        async with running_service(tmp_path / "second.log", **names.env):
            await eventually(
                lambda: drained(js, names.durable), within=60, what="the whole stream settled"
            )
            info = await consumer(js, names.durable)

    assert info.config.deliver_policy == DeliverPolicy.ALL
    assert info.delivered is not None
    assert info.delivered.stream_seq >= last_seq  # our events really came again
    assert await rows_per_session(db, ids) == dict.fromkeys(ids, 1)
    assert {r["session_id"]: r["id"] for r in await audit_rows(db, ids)} == first_ids


async def test_events_redelivered_during_database_outage_are_written_once_after_it(
    tmp_path: Path, js: JetStreamContext
) -> None:
    postgres = EmbeddedPostgres(tmp_path / "pg")
    await asyncio.to_thread(postgres.start)
    try:
        await asyncio.to_thread(postgres.create_database, "audit")
        url = postgres.url("audit")
        await asyncio.to_thread(migrate, url)
        events = [session_event() for _ in range(3)]
        ids = [e["session_id"] for e in events]
        async with (
            isolated(js, "pgdown") as names,
            running_service(tmp_path / "service.log", DATABASE_URL=url, **names.env) as service,
        ):
            await asyncio.to_thread(postgres.stop)
            for event in events:
                await publish_event(js, event)

            async def redelivered_while_database_down() -> bool:
                info = await consumer(js, names.durable)
                ready = await readyz(service)
                return (
                    (info.num_redelivered or 0) > 0
                    and ready is not None
                    and ready[1]["checks"]["database"] is False
                )

            await eventually(
                redelivered_while_database_down, within=20, what="a redelivery while down"
            )
            info = await consumer(js, names.durable)
            assert info.num_ack_pending == 3  # held for retry, none acked without its row

            await asyncio.to_thread(postgres.start)
            conn = await asyncpg.connect(postgres.url("audit", driver="postgresql"))
            try:
                await eventually(lambda: has_rows(conn, ids, 3), within=45, what="three rows")
                await eventually(lambda: drained(js, names.durable), within=20, what="acks")
                assert await rows_per_session(conn, ids) == dict.fromkeys(ids, 1)
            finally:
                await conn.close()
            assert service.proc is not None
            assert service.proc.poll() is None  # recovered without a restart
            assert (await readyz(service) or (0, {}))[0] == 200
    finally:
        await asyncio.to_thread(postgres.stop)


async def test_trickle_of_events_is_written_promptly_without_redelivery(
    tmp_path: Path, db: asyncpg.Connection, js: JetStreamContext
) -> None:
    # Regression: FastStream 0.7's own pull loop catches only nats.errors.TimeoutError, and
    # nats-py raises a bare asyncio.TimeoutError when a batch window ends during its no-wait
    # probe; the loop died with messages in hand, which then waited out ACK_WAIT_S (60 s).
    # A steady trickle ends many short windows with messages in hand; the shortest wait the
    # settings allow makes such windows as frequent as they can be.
    events = [session_event() for _ in range(300)]
    ids = [e["session_id"] for e in events]
    async with (
        isolated(js, "trickle") as names,
        running_service(tmp_path / "service.log", BATCH_WAIT_MS="100", **names.env),
    ):
        for event in events:
            await publish_event(js, event)
            await asyncio.sleep(0.01)  # pacing the publisher, not waiting for the service
        # Each batch takes milliseconds; only a lost fetch waits for the 60 s ack wait.
        await eventually(lambda: has_rows(db, ids, len(ids)), within=5, what="every row within 5 s")
        info = await consumer(js, names.durable)

    assert info.delivered is not None
    assert info.delivered.consumer_seq == len(events)  # nothing was delivered twice
    assert await rows_per_session(db, ids) == dict.fromkeys(ids, 1)
