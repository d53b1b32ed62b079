"""Session-end events as the publisher sends them, and the audit rows they should become."""

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

PREFIX = "audit.session.end"
# The example of CONTRACT.md; every builder call gets a fresh session_id.
EXAMPLE: dict[str, Any] = {
    "user_id": "9b2d4a36-3c1e-4f7a-8d55-0e6f1a2b3c4d",
    "tenant_id": "0e8f6a1c-2b3d-4e5f-8a9b-1c2d3e4f5a6b",
    "device_id": "c4d5e6f7-a8b9-4c0d-9e1f-2a3b4c5d6e7f",
    "start_time": "2026-03-12T16:07:10-05:00",
    "end_time": "2026-03-12T16:42:55-05:00",
    "source_ip": "203.0.113.7:51514",
    "reason": "normal",
}
ABSENT = object()  # a field value that removes the key from the event


def session_end(**fields: Any) -> dict[str, Any]:
    """The contract's example event with a fresh session_id and the given fields replaced."""
    event = {"session_id": str(uuid.uuid4()), **EXAMPLE, **fields}
    return {key: value for key, value in event.items() if value is not ABSENT}


def subject_of(event: dict[str, Any]) -> str:
    """The subject the publisher uses for event."""
    return f"{PREFIX}.{event['session_id']}"


def wire(event: Any) -> bytes:
    """Event as the Go publisher encodes it: compact JSON."""
    return json.dumps(event, separators=(",", ":")).encode()


async def audit_rows(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every audit_logs row, oldest event first, with details decoded."""
    records = await conn.fetch(
        """
        SELECT tenant_id::text, user_id::text, action, resource_type, resource_id,
               device_id::text, details::text, ip_address,
               created_at, occurred_at, idempotency_key
        FROM audit_logs ORDER BY occurred_at, idempotency_key
        """
    )
    return [dict(r) | {"details": json.loads(r["details"])} for r in records]


@asynccontextmanager
async def tenant_refused_by_database(conn: asyncpg.Connection) -> AsyncIterator[str]:
    """A tenant id that a real CHECK constraint on audit_logs refuses, for the block's duration."""
    tenant = str(uuid.uuid4())
    await conn.execute(
        "ALTER TABLE audit_logs ADD CONSTRAINT test_refused_tenant "
        f"CHECK (tenant_id <> '{tenant}'::uuid)"
    )
    try:
        yield tenant
    finally:
        await conn.execute("ALTER TABLE audit_logs DROP CONSTRAINT IF EXISTS test_refused_tenant")
