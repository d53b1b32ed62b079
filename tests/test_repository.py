"""insert_session_ends against the real database: one row per session, refusals isolated."""

from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from service.db import get_engine
from service.dev.embedded import free_port
from service.events import SessionEndEvent, parse_session_end
from service.repository import DatabaseUnavailable, InsertResult, create_engine, insert_session_ends
from tests.session_events import (
    EXAMPLE,
    audit_rows,
    session_end,
    subject_of,
    tenant_refused_by_database,
    wire,
)


def event(**fields: Any) -> SessionEndEvent:
    """A valid event: the contract example with fields replaced."""
    raw = session_end(**fields)
    parsed = parse_session_end(subject_of(raw), wire(raw), max_bytes=16_384)
    assert isinstance(parsed, SessionEndEvent), parsed
    return parsed


def expected_row(
    e: SessionEndEvent, *, start: str, end: str, seconds: int, reason: str | None = None
) -> dict[str, Any]:
    """The audit_logs row CONTRACT.md asks for; details hold the times and reason as sent."""
    return {
        "tenant_id": str(e.tenant_id),
        "user_id": str(e.user_id) if e.user_id else None,
        "action": "ssh_session_end",
        "resource_type": "device",
        "resource_id": str(e.device_id),
        "device_id": str(e.device_id),
        "details": {
            "session_id": str(e.session_id),
            "start_time": start,
            "end_time": end,
            "duration_seconds": seconds,
            "source_ip": e.source_ip,
            "reason": e.reason if reason is None else reason,
        },
        "ip_address": e.ip_address,
        "created_at": datetime.fromisoformat(end),
        "occurred_at": datetime.fromisoformat(end),
        "idempotency_key": f"ssh_session_end:{e.session_id}",
    }


async def test_batch_writes_one_row_per_event_with_exact_columns(db: asyncpg.Connection) -> None:
    offset = event(user_id="", source_ip="203.0.113.7:51514", reason="normal")
    utc = event(
        start_time="2026-03-12T22:00:00Z",
        end_time="2026-03-12T22:00:30.5Z",
        source_ip="[2001:db8::1]:443",
        reason="idle_timeout",
    )
    unknown = event(
        start_time="2026-03-12T23:00:00Z",
        end_time="2026-03-12T23:01:00Z",
        source_ip="unknown",
        reason="",
    )

    result = await insert_session_ends(get_engine(), events=[offset, utc, unknown])

    assert result == InsertResult(inserted=3, duplicates=0, refused={})
    rows = await audit_rows(db)
    assert rows == [
        expected_row(
            offset, start="2026-03-12T16:07:10-05:00", end="2026-03-12T16:42:55-05:00", seconds=2145
        ),
        expected_row(utc, start="2026-03-12T22:00:00Z", end="2026-03-12T22:00:30.5Z", seconds=30),
        expected_row(
            unknown,
            start="2026-03-12T23:00:00Z",
            end="2026-03-12T23:01:00Z",
            seconds=60,
            reason="",
        ),
    ]
    # The same facts spelled out, independent of the event model's own properties.
    assert [row["user_id"] for row in rows] == [None, EXAMPLE["user_id"], EXAMPLE["user_id"]]
    assert [row["ip_address"] for row in rows] == ["203.0.113.7", "2001:db8::1", None]
    assert [row["details"]["source_ip"] for row in rows] == [
        "203.0.113.7:51514",
        "[2001:db8::1]:443",
        "unknown",
    ]
    # As the old consumer stored it: an empty reason stays empty in details.
    assert [row["details"]["reason"] for row in rows] == ["normal", "idle_timeout", ""]
    assert rows[0]["created_at"] == datetime(2026, 3, 12, 21, 42, 55, tzinfo=UTC)


async def test_same_events_again_write_nothing_and_count_as_duplicates(
    db: asyncpg.Connection,
) -> None:
    events = [event(), event(), event()]
    await insert_session_ends(get_engine(), events=events)
    before = await audit_rows(db)

    again = await insert_session_ends(get_engine(), events=events)

    assert again == InsertResult(inserted=0, duplicates=3, refused={})
    assert await audit_rows(db) == before


async def test_double_end_event_in_one_batch_keeps_the_first(db: asyncpg.Connection) -> None:
    idle = event(reason="idle_timeout")
    normal = event(
        session_id=str(idle.session_id), reason="normal", end_time="2026-03-12T16:42:56-05:00"
    )

    result = await insert_session_ends(get_engine(), events=[idle, normal])

    assert result == InsertResult(inserted=1, duplicates=1, refused={})
    rows = await audit_rows(db)
    assert len(rows) == 1
    assert rows[0]["details"]["reason"] == "idle_timeout"
    assert rows[0]["idempotency_key"] == f"ssh_session_end:{idle.session_id}"


async def test_row_the_database_refuses_is_isolated(db: asyncpg.Connection) -> None:
    async with tenant_refused_by_database(db) as refused_tenant:
        events = [event() for _ in range(5)]
        events[2] = event(tenant_id=refused_tenant)

        result = await insert_session_ends(get_engine(), events=events)

    assert result.inserted == 4
    assert result.duplicates == 0
    assert list(result.refused) == [2]
    assert "test_refused_tenant" in result.refused[2]
    assert "SQLSTATE 23514" in result.refused[2]
    keys = {row["idempotency_key"] for row in await audit_rows(db)}
    assert keys == {f"ssh_session_end:{e.session_id}" for i, e in enumerate(events) if i != 2}


async def test_refused_row_beside_a_duplicate_is_counted_apart(db: asyncpg.Connection) -> None:
    old = event()
    await insert_session_ends(get_engine(), events=[old])
    async with tenant_refused_by_database(db) as refused_tenant:
        fresh, refused = event(), event(tenant_id=refused_tenant)

        result = await insert_session_ends(get_engine(), events=[old, refused, fresh])

    assert (result.inserted, result.duplicates, list(result.refused)) == (1, 1, [1])
    assert len(await audit_rows(db)) == 2


async def test_empty_batch_touches_nothing(db: asyncpg.Connection) -> None:
    assert await insert_session_ends(get_engine(), events=[]) == InsertResult()
    assert await audit_rows(db) == []


async def test_source_ip_with_nul_character_still_gets_its_row(db: asyncpg.Connection) -> None:
    nul = event(source_ip="203.0.113.7\x00")

    result = await insert_session_ends(get_engine(), events=[nul])

    assert result.refused == {}
    assert [row["ip_address"] for row in await audit_rows(db)] == [None]


async def test_database_that_is_down_raises_database_unavailable() -> None:
    port = free_port()
    nowhere = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres")
    try:
        with pytest.raises(DatabaseUnavailable) as raised:
            await insert_session_ends(nowhere, events=[event()])
    finally:
        await nowhere.dispose()
    assert str(port) in str(raised.value)
