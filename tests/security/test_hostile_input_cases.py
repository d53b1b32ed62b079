"""Named hostile messages through the real parse-and-write path, and what becomes of each."""

import json

import asyncpg
import pytest
from faststream.nats import NatsBroker

from service import handlers
from tests.security.in_memory import settle
from tests.session_events import session_end, subject_of, wire


def nested(depth: int) -> bytes:
    """A JSON array depth levels deep."""
    return b"[" * depth + b"]" * depth


def with_raw_value(field: str, raw: bytes) -> tuple[bytes, str]:
    """The contract's event with one value replaced by raw bytes, as they are."""
    event = session_end(**{field: "@@raw@@"})
    return wire(event).replace(b'"@@raw@@"', raw), subject_of(event)


async def test_a_one_megabyte_event_is_dead_lettered_as_too_large(
    br: NatsBroker, db: asyncpg.Connection
) -> None:
    event = session_end(source_ip="203.0.113.7" + " " * 1_048_576)
    _, letters = await settle(br, db, wire(event), subject_of(event))
    assert letters[0].reason == "too_large"
    assert len(letters[0].body) > 1_048_576  # the original bytes, unchanged


@pytest.mark.parametrize("where", ["whole-payload", "session_id", "unexpected-key"])
@pytest.mark.parametrize("depth", [10_000, 199])
async def test_deep_nesting_is_dead_lettered_not_a_crash(
    br: NatsBroker,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    depth: int,
) -> None:
    # 10,000 levels are 20 kB: raise the size limit to its maximum so that the parser,
    # not the size check, meets them.
    monkeypatch.setattr(
        handlers, "settings", handlers.settings.model_copy(update={"max_payload_bytes": 1 << 20})
    )
    if where == "whole-payload":
        body, subject = nested(depth), subject_of(session_end())
    else:
        body, subject = with_raw_value(where, nested(depth))

    rows, letters = await settle(br, db, body, subject)
    if where == "unexpected-key" and depth == 199:
        assert rows == 1  # within the parser's depth limit, an unknown key is ignored
        return
    assert letters[0].reason in {"invalid_json", "invalid_field", "not_an_object"}
    assert len(letters[0].detail) < 1_000  # the detail is a summary, not the value


@pytest.mark.parametrize(
    "raw", [b'"\xff\xfe"', b'"\xc3"', b'"\xed\xa0\x80"', b'"caf\xe9"'], ids=lambda r: repr(r)
)
async def test_invalid_utf8_is_dead_lettered_as_invalid_json(
    br: NatsBroker, db: asyncpg.Connection, raw: bytes
) -> None:
    body, subject = with_raw_value("tenant_id", raw)
    _, letters = await settle(br, db, body, subject)
    assert (letters[0].reason, letters[0].body) == ("invalid_json", body)


@pytest.mark.parametrize(
    ("field", "value"),
    [("end_time", "9999-12-31T23:59:59Z"), ("start_time", "0001-01-01T00:00:00Z"),
     ("end_time", "2100-01-01T00:00:00Z"), ("start_time", "2026-02-30T10:00:00Z"),
     ("end_time", "2026-03-12T16:00:00-05:00")],
    ids=["year-9999", "year-1", "year-2100", "feb-30", "negative-duration"],
)  # fmt: skip
async def test_impossible_times_are_dead_lettered_as_invalid_fields(
    br: NatsBroker, db: asyncpg.Connection, field: str, value: str
) -> None:
    event = session_end(**{field: value})
    _, letters = await settle(br, db, wire(event), subject_of(event))
    assert letters[0].reason == "invalid_field"


async def test_control_characters_in_source_ip_keep_the_row_and_are_stored_as_sent(
    br: NatsBroker, db: asyncpg.Connection
) -> None:
    hostile = "203.0.113.7\x00\x1b[31m\r\n\t\u202e<script>'; DROP TABLE audit_logs;--"
    event = session_end(source_ip=hostile)
    rows, _ = await settle(br, db, wire(event), subject_of(event))
    assert rows == 1
    row = await db.fetchrow("SELECT ip_address, details::text AS details FROM audit_logs")
    assert row["ip_address"] is None  # no address in it, so none is claimed
    # jsonb cannot hold U+0000; every other character is kept, as JSON, not as markup or SQL.
    assert json.loads(row["details"])["source_ip"] == hostile.replace("\x00", "\ufffd")
    assert await db.fetchval("SELECT to_regclass('audit_logs') IS NOT NULL")


@pytest.mark.parametrize(
    "reason", ["normal\n", "nor\x00mal", "\x1b[2J", "normal; DROP TABLE audit_logs", "a" * 65]
)
async def test_control_characters_or_junk_in_reason_are_dead_lettered(
    br: NatsBroker, db: asyncpg.Connection, reason: str
) -> None:
    event = session_end(reason=reason)
    _, letters = await settle(br, db, wire(event), subject_of(event))
    assert letters[0].reason == "invalid_field"
    assert "reason" in letters[0].detail
