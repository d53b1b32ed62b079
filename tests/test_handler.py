"""The subscriber in memory (TestNatsBroker) against the real database: rows and dead letters."""

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from faststream.nats import JStream, NatsBroker, NatsMessage, TestNatsBroker

from service.config import get_settings
from service.deadletters.letters import DETAIL, ORIGINAL_SUBJECT, REASON
from service.main import broker, specification
from tests.session_events import (
    ABSENT,
    audit_rows,
    session_end,
    subject_of,
    tenant_refused_by_database,
    wire,
)

settings = get_settings()


@dataclass(frozen=True)
class DeadLetter:
    """A dead letter as a DLQ reader sees it."""

    subject: str
    body: bytes
    headers: dict[str, str]


captured: list[DeadLetter] = []
dlq_reader = NatsBroker()


@dlq_reader.subscriber(
    f"{settings.dlq_subject_prefix}.*", stream=JStream(settings.dlq_stream, declare=False)
)
async def read_dead_letter(message: NatsMessage) -> None:
    """Keep every dead letter the service publishes, with its headers."""
    captured.append(DeadLetter(message.raw_message.subject, message.body, dict(message.headers)))


@pytest.fixture
async def br(db: asyncpg.Connection) -> AsyncIterator[NatsBroker]:
    """The service's broker in memory, its dead letters routed to the reader above."""
    captured.clear()
    async with TestNatsBroker(broker, dlq_reader) as (service_broker, _):
        yield service_broker


async def publish(br: NatsBroker, body: bytes, subject: str) -> None:
    """Publish as the relay does: plain bytes on the events stream."""
    await br.publish(body, subject, stream=settings.stream)


@pytest.mark.parametrize(
    ("fields", "start", "end", "seconds", "user_id", "ip"),
    [
        pytest.param({}, "2026-03-12T16:07:10-05:00", "2026-03-12T16:42:55-05:00", 2145,
                     "9b2d4a36-3c1e-4f7a-8d55-0e6f1a2b3c4d", "203.0.113.7", id="offset-ip:port"),
        pytest.param({"start_time": "2026-03-12T21:07:10Z", "end_time": "2026-03-12T21:07:11Z",
                      "source_ip": "[2001:db8::1]:443"}, "2026-03-12T21:07:10Z",
                     "2026-03-12T21:07:11Z", 1, "9b2d4a36-3c1e-4f7a-8d55-0e6f1a2b3c4d",
                     "2001:db8::1", id="Z-[v6]:port"),
        pytest.param({"user_id": "", "source_ip": "198.51.100.23", "reason": "shutdown"},
                     "2026-03-12T16:07:10-05:00", "2026-03-12T16:42:55-05:00", 2145, None,
                     "198.51.100.23", id="no-user-bare-ip"),
    ],
)  # fmt: skip
async def test_contract_example_becomes_exactly_its_row(
    br: NatsBroker,
    db: asyncpg.Connection,
    fields: dict[str, Any],
    start: str,
    end: str,
    seconds: int,
    user_id: str | None,
    ip: str,
) -> None:
    event = session_end(**fields)

    await publish(br, wire(event), subject_of(event))

    rows = await audit_rows(db)
    assert [(row["user_id"], row["ip_address"], row["details"]) for row in rows] == [
        (
            user_id,
            ip,
            {
                "session_id": event["session_id"],
                "start_time": start,
                "end_time": end,
                "duration_seconds": seconds,
                "source_ip": event["source_ip"],
                "reason": event["reason"],
            },
        )
    ]
    row = rows[0]
    assert (row["tenant_id"], row["device_id"], row["resource_id"]) == (
        event["tenant_id"],
        event["device_id"],
        event["device_id"],
    )
    assert (row["action"], row["resource_type"]) == ("ssh_session_end", "device")
    assert row["created_at"] == datetime.fromisoformat(end)
    assert row["occurred_at"] == row["created_at"]
    assert row["idempotency_key"] == f"ssh_session_end:{event['session_id']}"
    assert captured == []


async def test_idle_timeout_then_normal_gives_one_row_with_idle_timeout(
    br: NatsBroker, db: asyncpg.Connection
) -> None:
    idle = session_end(reason="idle_timeout")
    normal = idle | {"reason": "normal", "end_time": "2026-03-12T16:42:56-05:00"}

    await publish(br, wire(idle), subject_of(idle))
    await publish(br, wire(normal), subject_of(normal))

    assert [row["details"]["reason"] for row in await audit_rows(db)] == ["idle_timeout"]
    assert captured == []


async def test_redelivered_event_writes_one_row(br: NatsBroker, db: asyncpg.Connection) -> None:
    event = session_end()

    await publish(br, wire(event), subject_of(event))
    await publish(br, wire(event), subject_of(event))

    assert [row["details"]["session_id"] for row in await audit_rows(db)] == [event["session_id"]]
    assert captured == []


def _poison(name: str, message: bytes | dict[str, Any], reason: str, detail: str) -> Any:
    # An event travels on its own subject, so that each case carries exactly one defect.
    if isinstance(message, dict):
        return pytest.param(wire(message), subject_of(message), reason, detail, id=name)
    return pytest.param(message, f"audit.session.end.{uuid.uuid4()}", reason, detail, id=name)


@pytest.mark.parametrize(
    ("body", "subject", "reason", "detail"),
    [
        _poison("bad-json", b'{"session_id": "5f0c', "invalid_json", "not JSON"),
        _poison("not-an-object", b'["a", "b"]', "not_an_object", "JSON list, not an object"),
        _poison("bad-uuid", session_end(tenant_id="tenant-42"), "invalid_field",
                "tenant_id: Input should be a valid UUID"),
        _poison("time-without-offset", session_end(end_time="2026-03-12T16:42:55"),
                "invalid_field", "end_time: Value error, must be an RFC 3339 time"),
        _poison("end-before-start", session_end(end_time="2026-03-12T16:00:00-05:00"),
                "invalid_field", "end_time is before start_time"),
        _poison("missing-tenant", session_end(tenant_id=ABSENT), "invalid_field",
                "tenant_id: Field required"),
        _poison("oversize", session_end(source_ip=" " * settings.max_payload_bytes),
                "too_large", f"limit {settings.max_payload_bytes}"),
        _poison("subject-mismatch", wire(session_end()), "subject_mismatch",
                "differs from session_id"),
    ],
)  # fmt: skip
async def test_poison_message_is_dead_lettered_unchanged_with_its_reason(
    br: NatsBroker, db: asyncpg.Connection, body: bytes, subject: str, reason: str, detail: str
) -> None:
    await publish(br, body, subject)

    assert await audit_rows(db) == []
    assert len(captured) == 1
    letter = captured[0]
    assert letter.body == body
    assert letter.subject == f"{settings.dlq_subject_prefix}.{subject.rsplit('.', 1)[-1]}"
    assert letter.headers[REASON] == reason
    assert detail in letter.headers[DETAIL]
    assert letter.headers[ORIGINAL_SUBJECT] == subject


async def test_row_the_database_refuses_is_dead_lettered(
    br: NatsBroker, db: asyncpg.Connection
) -> None:
    async with tenant_refused_by_database(db) as refused_tenant:
        refused, fine = session_end(tenant_id=refused_tenant), session_end()
        await publish(br, wire(refused), subject_of(refused))
        await publish(br, wire(fine), subject_of(fine))

    assert [row["details"]["session_id"] for row in await audit_rows(db)] == [fine["session_id"]]
    assert [(letter.body, letter.headers[REASON]) for letter in captured] == [
        (wire(refused), "database_refused")
    ]
    assert "test_refused_tenant" in captured[0].headers[DETAIL]
    assert captured[0].headers[ORIGINAL_SUBJECT] == subject_of(refused)


def test_asyncapi_documents_the_event_channel_its_fields_and_the_dlq() -> None:
    spec = specification.to_specification().to_jsonable()
    channels = spec["channels"]
    assert set(channels) == {"audit.session.end.{session_id}", "audit.dlq.session.end.{session_id}"}
    assert "Audit-Dlq-Reason" in channels["audit.dlq.session.end.{session_id}"]["description"]

    schemas = spec["components"]["schemas"]
    payload = schemas["audit.session.end.{session_id}:Message:Payload"]
    fields = payload["properties"]
    assert set(fields) == {
        "session_id", "user_id", "tenant_id", "device_id",
        "start_time", "end_time", "source_ip", "reason",
    }  # fmt: skip
    undocumented = [name for name, field in fields.items() if not field.get("description")]
    without_example = [name for name, field in fields.items() if not field.get("examples")]
    assert (undocumented, without_example) == ([], [])
    assert set(payload["required"]) == {
        "session_id", "tenant_id", "device_id", "start_time", "end_time",
    }  # fmt: skip


def test_asyncapi_payload_is_one_event_object() -> None:
    spec = specification.to_specification().to_jsonable()
    payload = spec["components"]["schemas"]["audit.session.end.{session_id}:Message:Payload"]
    assert payload.get("type") == "object"
    assert "session_id" in payload.get("properties", {})
