"""Start-up of the service process: waiting for the publisher's stream, refusing bad set-ups."""

import asyncio
import uuid
from pathlib import Path

import asyncpg
import nats
import pytest
from sqlalchemy import make_url

from service.dev.embedded import EmbeddedNats
from service.dev.publisher import ensure_publisher_stream
from tests.integration_support import (
    eventually,
    publish_event,
    readyz,
    rows_per_session,
    session_event,
)
from tests.service_process import ServiceProcess, run_to_exit


async def test_service_waits_for_absent_stream_then_consumes_it(
    tmp_path: Path, db: asyncpg.Connection
) -> None:
    server = EmbeddedNats(tmp_path / "nats")  # fresh store: no DEVICE_EVENTS
    await asyncio.to_thread(server.start)
    try:
        with ServiceProcess(tmp_path / "service.log", NATS_URL=server.url) as service:

            async def waiting_for_stream() -> bool:
                ready = await readyz(service)
                return ready is not None and ready[0] == 503 and "stream" in ready[1]["down"]

            await eventually(waiting_for_stream, within=30, what="/readyz to report the stream")
            assert service.proc is not None
            assert service.proc.poll() is None  # waits rather than exits

            assert await ensure_publisher_stream(server.url, "DEVICE_EVENTS") is True
            event = session_event()
            nc = await nats.connect(server.url, connect_timeout=5)
            try:
                assert await publish_event(nc.jetstream(), event) == 1
            finally:
                await nc.close()

            async def ready() -> bool:
                answer = await readyz(service)
                return answer is not None and answer[0] == 200

            await eventually(ready, within=45, what="/readyz 200 once the stream exists")
            ids = [event["session_id"]]
            await eventually(
                lambda: _rows_are(db, ids, {ids[0]: 1}), within=20, what="the event's row"
            )
    finally:
        await asyncio.to_thread(server.stop)


async def _rows_are(conn: asyncpg.Connection, ids: list[str], expected: dict[str, int]) -> bool:
    return await rows_per_session(conn, ids) == expected


def only_line(output: str) -> str:
    """The one non-blank line of output; fails if there are more or none."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BATCH_SIZE", "0", "configuration error: BATCH_SIZE: "),
        ("DATABASE_URL", "postgresql://db/x", "configuration error: DATABASE_URL: "),
    ],
    ids=["BATCH_SIZE", "DATABASE_URL"],
)
async def test_bad_setting_stops_start_up_with_one_line_naming_it(
    variable: str, value: str, message: str
) -> None:
    done = await asyncio.to_thread(run_to_exit, **{variable: value})
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in output
    assert only_line(output).startswith(message)


async def test_unmigrated_database_stops_start_up_asking_for_make_migrate(
    database_url: str,
) -> None:
    name = f"never_migrated_{uuid.uuid4().hex[:8]}"
    url = make_url(database_url)
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        empty = url.set(database=name).render_as_string(hide_password=False)
        done = await asyncio.to_thread(run_to_exit, DATABASE_URL=empty)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in output
    line = only_line(output)
    assert line.startswith("database schema is at revision (none) but this service needs ")
    assert "run `make migrate`" in line
