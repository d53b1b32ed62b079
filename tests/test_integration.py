"""The service as a child process against real NATS and PostgreSQL: the rows it writes.

Every ServiceProcess here runs against the servers given by NATS_URL / DATABASE_URL (the
ones conftest started, or external ones), each with a durable of its own.
"""

from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from nats.js import JetStreamContext

from tests.integration_support import (
    audit_rows,
    consumer,
    details_of,
    drained,
    eventually,
    has_rows,
    isolated,
    publish_event,
    rows_per_session,
    running_service,
    session_event,
)


async def test_service_writes_contract_examples_to_servers_given_by_env(
    tmp_path: Path, db: asyncpg.Connection, js: JetStreamContext
) -> None:
    offset = session_event()  # -05:00 times, 203.0.113.7:51514
    zulu = session_event(
        user_id="",
        start_time="2026-03-12T21:07:10Z",
        end_time="2026-03-12T21:42:55Z",
        source_ip="[2001:db8::1]:443",
        reason="shutdown",
    )
    bare = session_event(
        start_time="2026-03-12T23:30:00+02:00",
        end_time="2026-03-13T00:15:05+02:00",
        source_ip="198.51.100.23",
        reason="idle_timeout",
    )
    no_address = session_event(source_ip="", reason="")
    events = [offset, zulu, bare, no_address]
    ids = [e["session_id"] for e in events]
    async with (
        isolated(js, "contract") as names,
        running_service(tmp_path / "service.log", **names.env),
    ):
        for event in events:
            await publish_event(js, event)
        await eventually(lambda: has_rows(db, ids, len(ids)), within=20, what="four contract rows")
        await eventually(lambda: drained(js, names.durable), within=20, what="every ack")

        rows = {r["session_id"]: r for r in await audit_rows(db, ids)}
        assert len(rows) == 4
        for event in events:
            row = rows[event["session_id"]]
            assert row["tenant_id"] == event["tenant_id"]
            assert row["device_id"] == event["device_id"]
            assert row["resource_id"] == event["device_id"]
            assert (row["action"], row["resource_type"]) == ("ssh_session_end", "device")
            assert row["occurred_at"] == row["created_at"]

        row = rows[offset["session_id"]]
        assert row["user_id"] == offset["user_id"]
        assert row["ip_address"] == "203.0.113.7"
        assert row["created_at"] == datetime(2026, 3, 12, 21, 42, 55, tzinfo=UTC)
        assert details_of(row) == {
            "session_id": offset["session_id"],
            "start_time": "2026-03-12T16:07:10-05:00",
            "end_time": "2026-03-12T16:42:55-05:00",
            "duration_seconds": 2145,
            "source_ip": "203.0.113.7:51514",
            "reason": "normal",
        }

        row = rows[zulu["session_id"]]
        assert row["user_id"] is None
        assert row["ip_address"] == "2001:db8::1"
        assert row["created_at"] == datetime(2026, 3, 12, 21, 42, 55, tzinfo=UTC)
        assert details_of(row) == {
            "session_id": zulu["session_id"],
            "start_time": "2026-03-12T21:07:10Z",
            "end_time": "2026-03-12T21:42:55Z",
            "duration_seconds": 2145,
            "source_ip": "[2001:db8::1]:443",
            "reason": "shutdown",
        }

        row = rows[bare["session_id"]]
        assert row["ip_address"] == "198.51.100.23"
        assert row["created_at"] == datetime(2026, 3, 12, 22, 15, 5, tzinfo=UTC)
        assert details_of(row) == {
            "session_id": bare["session_id"],
            "start_time": "2026-03-12T23:30:00+02:00",
            "end_time": "2026-03-13T00:15:05+02:00",
            "duration_seconds": 2705,
            "source_ip": "198.51.100.23",
            "reason": "idle_timeout",
        }

        row = rows[no_address["session_id"]]
        assert row["ip_address"] is None
        assert details_of(row)["source_ip"] == ""
        assert details_of(row)["reason"] == ""  # as sent, as the old consumer stored it


async def test_double_end_event_of_idle_session_writes_one_idle_timeout_row(
    tmp_path: Path, db: asyncpg.Connection, js: JetStreamContext
) -> None:
    same_batch = session_event(reason="idle_timeout")
    later_batch = session_event(reason="idle_timeout")
    ids = [same_batch["session_id"], later_batch["session_id"]]
    async with isolated(js, "double") as names:
        # Both events of one session wait on the durable, so they arrive in one fetch.
        await publish_event(js, same_batch)
        await publish_event(js, same_batch | {"reason": "normal"})
        async with running_service(tmp_path / "service.log", **names.env):
            await publish_event(js, later_batch)
            await eventually(lambda: has_rows(db, ids, 2), within=20, what="both first rows")
            await publish_event(js, later_batch | {"reason": "normal"})
            await eventually(lambda: drained(js, names.durable), within=20, what="every ack")
            info = await consumer(js, names.durable)

    assert info.delivered is not None
    assert info.delivered.consumer_seq == 4  # every event was handled, none is left
    assert await rows_per_session(db, ids) == {ids[0]: 1, ids[1]: 1}
    assert [details_of(r)["reason"] for r in await audit_rows(db, ids)] == ["idle_timeout"] * 2
