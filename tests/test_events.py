"""parse_session_end and bare_address: every accepted form and every refusal of the contract."""

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from service.events import (
    Refusal,
    Rejected,
    SessionEndEvent,
    bare_address,
    parse_session_end,
    parse_session_ends,
)
from tests.session_events import ABSENT, session_end, subject_of, wire

MAX_BYTES = 16_384


def accepted(event: dict[str, Any]) -> SessionEndEvent:
    """Parse event on its own subject and insist that it was accepted."""
    outcome = parse_session_end(subject_of(event), wire(event), max_bytes=MAX_BYTES)
    assert isinstance(outcome, SessionEndEvent), outcome
    return outcome


def test_contract_example_becomes_an_event() -> None:
    event = session_end()
    parsed = accepted(event)
    assert str(parsed.session_id) == event["session_id"]
    assert str(parsed.user_id) == event["user_id"]
    assert str(parsed.tenant_id) == event["tenant_id"]
    assert str(parsed.device_id) == event["device_id"]
    assert parsed.start_time == datetime(2026, 3, 12, 21, 7, 10, tzinfo=UTC)
    assert parsed.end_time == datetime(2026, 3, 12, 21, 42, 55, tzinfo=UTC)
    assert parsed.duration_seconds == 35 * 60 + 45
    assert parsed.source_ip == "203.0.113.7:51514"
    assert parsed.ip_address == "203.0.113.7"
    assert parsed.reason == "normal"


@pytest.mark.parametrize(
    ("start", "end", "start_utc", "duration"),
    [
        pytest.param("2026-03-12T16:07:10-05:00", "2026-03-12T16:42:55-05:00",
                     datetime(2026, 3, 12, 21, 7, 10, tzinfo=UTC), 2145, id="offset-05:00"),
        pytest.param("2026-03-12T21:07:10Z", "2026-03-12T21:42:55Z",
                     datetime(2026, 3, 12, 21, 7, 10, tzinfo=UTC), 2145, id="utc-Z"),
        pytest.param("2026-03-12T16:07:10-05:00", "2026-03-12T21:42:55Z",
                     datetime(2026, 3, 12, 21, 7, 10, tzinfo=UTC), 2145, id="mixed-offset-and-Z"),
        pytest.param("2026-03-12T21:07:10.250Z", "2026-03-12T21:07:12.750000+00:00",
                     datetime(2026, 3, 12, 21, 7, 10, 250_000, tzinfo=UTC), 2, id="fractional"),
        pytest.param("2026-03-12T21:07:10.123456789Z", "2026-03-12T21:07:11Z",
                     datetime(2026, 3, 12, 21, 7, 10, 123_456, tzinfo=UTC), 0, id="nanoseconds"),
        pytest.param("2026-03-12t21:07:10z", "2026-03-12t21:07:10z",
                     datetime(2026, 3, 12, 21, 7, 10, tzinfo=UTC), 0, id="lower-case-t-z"),
    ],
)  # fmt: skip
def test_rfc3339_times_with_an_offset_are_accepted(
    start: str, end: str, start_utc: datetime, duration: int
) -> None:
    parsed = accepted(session_end(start_time=start, end_time=end))
    assert parsed.start_time == start_utc
    assert parsed.duration_seconds == duration


@pytest.mark.parametrize(
    ("source_ip", "address"),
    [
        pytest.param("203.0.113.7", "203.0.113.7", id="ip"),
        pytest.param("203.0.113.7:51514", "203.0.113.7", id="ip:port"),
        pytest.param("[2001:db8::1]:443", "2001:db8::1", id="[v6]:port"),
        pytest.param("2001:db8::1", "2001:db8::1", id="bare-v6"),
        pytest.param("", None, id="empty"),
        pytest.param("not an address", None, id="garbage"),
        pytest.param(ABSENT, None, id="absent"),
    ],
)
def test_source_ip_is_kept_raw_and_yields_its_bare_address(
    source_ip: object, address: str | None
) -> None:
    parsed = accepted(session_end(source_ip=source_ip))
    assert parsed.source_ip == ("" if source_ip is ABSENT else source_ip)
    assert parsed.ip_address == address


@pytest.mark.parametrize(
    ("source", "address"),
    [
        pytest.param(" 203.0.113.7 ", "203.0.113.7", id="surrounding-blanks"),
        pytest.param("2001:DB8:0::1", "2001:db8::1", id="v6-normalised"),
        pytest.param("fe80::1%eth0", "fe80::1", id="v6-zone-dropped"),
        pytest.param("[fe80::1%eth0]:22", "fe80::1", id="[v6-zone]:port"),
        pytest.param("[2001:db8::1", None, id="unclosed-bracket"),
        pytest.param("example.com:22", None, id="hostname"),
        pytest.param("999.1.1.1", None, id="ipv4-out-of-range"),
    ],
)
def test_bare_address(source: str, address: str | None) -> None:
    assert bare_address(source) == address


@pytest.mark.parametrize(
    ("user_id", "expected"),
    [
        pytest.param("", None, id="empty-string"),
        pytest.param(None, None, id="null"),
        pytest.param(ABSENT, None, id="absent"),
        pytest.param("9b2d4a36-3c1e-4f7a-8d55-0e6f1a2b3c4d",
                     uuid.UUID("9b2d4a36-3c1e-4f7a-8d55-0e6f1a2b3c4d"), id="uuid"),
    ],
)  # fmt: skip
def test_user_id_may_be_missing(user_id: object, expected: uuid.UUID | None) -> None:
    assert accepted(session_end(user_id=user_id)).user_id == expected


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        pytest.param("normal", "normal", id="normal"),
        pytest.param("idle_timeout", "idle_timeout", id="idle_timeout"),
        pytest.param("shutdown", "shutdown", id="shutdown"),
        pytest.param("relay-restart.v2", "relay-restart.v2", id="unknown-token"),
        pytest.param("", None, id="empty-string"),
        pytest.param(None, None, id="null"),
        pytest.param(ABSENT, None, id="absent"),
    ],
)
def test_reason_is_any_short_token(reason: object, expected: str | None) -> None:
    assert accepted(session_end(reason=reason)).reason == expected


def test_subject_token_in_upper_case_matches_session_id() -> None:
    event = session_end()
    outcome = parse_session_end(subject_of(event).upper(), wire(event), max_bytes=MAX_BYTES)
    assert isinstance(outcome, SessionEndEvent)


def _refusal(name: str, code: Refusal, detail: str, **fields: Any) -> Any:
    event = session_end(**fields)
    return pytest.param(subject_of(event), wire(event), code, detail, id=name)


def _raw(name: str, data: bytes, code: Refusal, detail: str) -> Any:
    return pytest.param(f"audit.session.end.{uuid.uuid4()}", data, code, detail, id=name)


@pytest.mark.parametrize(
    ("subject", "data", "code", "detail"),
    [
        _raw("bad-json", b'{"session_id": ', Refusal.INVALID_JSON, "not JSON"),
        _raw("invalid-utf8", b'{"source_ip": "\xff\xfe"}', Refusal.INVALID_JSON, "not JSON"),
        _raw("empty-body", b"", Refusal.INVALID_JSON, "not JSON"),
        _raw("json-array", b"[1, 2]", Refusal.NOT_AN_OBJECT, "a JSON list, not an object"),
        _raw("json-string", b'"hello"', Refusal.NOT_AN_OBJECT, "a JSON str, not an object"),
        _raw("json-number", b"42", Refusal.NOT_AN_OBJECT, "a JSON int, not an object"),
        _refusal("missing-tenant_id", Refusal.INVALID_FIELD, "tenant_id: Field required",
                 tenant_id=ABSENT),
        _refusal("bad-session_id", Refusal.INVALID_FIELD,
                 "session_id: Input should be a valid UUID", session_id="not-a-uuid"),
        _refusal("bad-user_id", Refusal.INVALID_FIELD, "user_id: Input should be a valid UUID",
                 user_id="1234"),
        _refusal("bad-tenant_id", Refusal.INVALID_FIELD, "tenant_id: Input should be a valid UUID",
                 tenant_id="tenant-1"),
        _refusal("bad-device_id", Refusal.INVALID_FIELD, "device_id: Input should be a valid UUID",
                 device_id="c4d5e6f7-a8b9-4c0d-9e1f-2a3b4c5d6e7"),
        _refusal("time-without-offset", Refusal.INVALID_FIELD, "start_time: Value error, must be "
                 "an RFC 3339 time with an offset", start_time="2026-03-12T16:07:10"),
        _refusal("time-as-unix-number", Refusal.INVALID_FIELD, "end_time: Value error, must be "
                 "an RFC 3339 time with an offset", end_time=1773351775),
        _refusal("end-before-start", Refusal.INVALID_FIELD, "end_time is before start_time",
                 end_time="2026-03-12T16:07:09-05:00"),
        _refusal("year-9999", Refusal.INVALID_FIELD, "end_time: Value error, must lie between "
                 "the years 2000 and 2099", end_time="9999-12-31T23:59:59Z"),
        _refusal("impossible-date", Refusal.INVALID_FIELD, "start_time:",
                 start_time="2026-02-30T10:00:00Z"),
        _refusal("reason-with-spaces", Refusal.INVALID_FIELD, "reason: Value error, must be a "
                 "short token", reason="idle timeout"),
        _refusal("reason-with-control-char", Refusal.INVALID_FIELD, "reason: Value error",
                 reason="normal\n"),
        _refusal("reason-65-chars", Refusal.INVALID_FIELD, "reason: Value error", reason="r" * 65),
        pytest.param(f"audit.session.end.{uuid.uuid4()}", wire(session_end()),
                     Refusal.SUBJECT_MISMATCH, "differs from session_id", id="subject-mismatch"),
        pytest.param("audit.session.end.x", wire(session_end(source_ip="1" * (MAX_BYTES + 1))),
                     Refusal.TOO_LARGE, f"limit {MAX_BYTES}", id="oversize"),
    ],
)  # fmt: skip
def test_refusal_names_its_reason_and_field(
    subject: str, data: bytes, code: Refusal, detail: str
) -> None:
    outcome = parse_session_end(subject, data, max_bytes=MAX_BYTES)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is code
    assert detail in outcome.detail


def test_oversize_is_refused_before_parsing() -> None:
    data = b"{" * 600
    outcome = parse_session_end("audit.session.end.x", data, max_bytes=512)
    assert outcome == Rejected(Refusal.TOO_LARGE, "payload is 600 bytes, limit 512")


def test_source_ip_null_is_accepted_like_absent() -> None:
    parsed = accepted(session_end(source_ip=None))
    assert parsed.ip_address is None


def test_long_garbage_source_ip_does_not_block_the_event() -> None:
    parsed = accepted(session_end(source_ip="x" * 300))
    assert parsed.ip_address is None


def _one_by_one(messages: list[tuple[str, bytes]]) -> list[Any]:
    return [parse_session_end(s, d, max_bytes=16_384) for s, d in messages]


def _message(event: dict[str, Any]) -> tuple[str, bytes]:
    return f"audit.session.end.{event['session_id']}", json.dumps(event).encode()


def test_a_batch_validated_at_once_gives_what_each_message_alone_gives() -> None:
    good = [_message(session_end()) for _ in range(5)]
    other = session_end()
    bad = [
        ("audit.session.end.x", b"{not json"),
        ("audit.session.end.x", b'["an", "array"]'),
        _message(session_end(tenant_id="not-a-uuid")),
        (f"audit.session.end.{uuid.uuid4()}", json.dumps(other).encode()),
        _message(session_end() | {"padding": "x" * 17_000}),
        # Upper case in the subject: valid, though the batch call cannot tell.
        (f"audit.session.end.{other['session_id'].upper()}", json.dumps(other).encode()),
    ]
    for messages in (good, good[:2] + bad + good[2:], bad):
        batch = parse_session_ends(messages, max_bytes=16_384)
        assert [repr(r) for r in batch] == [repr(r) for r in _one_by_one(messages)]
    assert all(isinstance(r, SessionEndEvent) for r in parse_session_ends(good, max_bytes=16_384))


def test_payloads_that_would_join_into_other_objects_are_judged_one_by_one() -> None:
    first, second = session_end(), session_end()
    one, two = json.dumps(first), json.dumps(second)
    # Together, `{first},{second` and `"x": 1}` join into two valid objects.
    split = [
        (f"audit.session.end.{first['session_id']}", f"{one},{two[:-1]}".encode()),
        (f"audit.session.end.{second['session_id']}", b'"x": 1}'),
    ]
    batch = parse_session_ends(split, max_bytes=16_384)
    assert [type(r) for r in batch] == [Rejected, Rejected]
    assert [repr(r) for r in batch] == [repr(r) for r in _one_by_one(split)]
