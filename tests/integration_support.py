"""Helpers of the integration tests: the service as a child process, one durable per test."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, RawStreamMsg
from nats.js.errors import NotFoundError

from tests.service_process import ServiceProcess

STREAM = "DEVICE_EVENTS"
SUBJECT_PREFIX = "audit.session.end"
DLQ_SUBJECT_PREFIX = "audit.dlq.session.end"


async def eventually(condition: Callable[[], Awaitable[bool]], *, within: float, what: str) -> None:
    """Await condition until it holds; fail with what was awaited after `within` seconds."""
    try:
        async with asyncio.timeout(within):
            # Polling: the state lives in another process or server, nothing to await on.
            while True:
                if await condition():
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {within:.0f} s waiting for {what}") from None


@dataclass(frozen=True)
class Isolation:
    """A durable and a dead-letter stream that belong to one test alone."""

    durable: str
    dlq_stream: str

    @property
    def env(self) -> dict[str, str]:
        """Environment overrides that point a ServiceProcess at them."""
        return {"DURABLE": self.durable, "DLQ_STREAM": self.dlq_stream}


@asynccontextmanager
async def isolated(js: JetStreamContext, tag: str) -> AsyncIterator[Isolation]:
    """A fresh durable that starts at the current end of the stream, removed afterwards.

    The shared stream holds every earlier test's events, poison included; a durable that
    only sees what this test publishes keeps row and dead-letter counts exact.
    """
    suffix = uuid.uuid4().hex[:8]
    names = Isolation(durable=f"it-{tag}-{suffix}", dlq_stream=f"IT_DLQ_{tag.upper()}_{suffix}")
    await create_durable(js, names.durable)
    try:
        yield names
    finally:
        with suppress(NotFoundError):
            await js.delete_consumer(STREAM, names.durable)
        with suppress(NotFoundError):
            await js.delete_stream(names.dlq_stream)


async def create_durable(js: JetStreamContext, durable: str) -> None:
    """Create the durable as the service would, but delivering only new messages."""
    await js.add_consumer(
        STREAM,
        ConsumerConfig(
            durable_name=durable,
            deliver_policy=DeliverPolicy.NEW,
            filter_subject=f"{SUBJECT_PREFIX}.*",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=60,
            max_deliver=-1,
            max_ack_pending=5_000,
        ),
    )


async def consumer(js: JetStreamContext, durable: str, stream: str = STREAM) -> ConsumerInfo:
    """The durable's current state on the server."""
    info: ConsumerInfo = await js.consumer_info(stream, durable)
    return info


async def drained(js: JetStreamContext, durable: str, stream: str = STREAM) -> bool:
    """Whether every message was delivered and settled (acked or terminated)."""
    info = await consumer(js, durable, stream)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def dead_letters(js: JetStreamContext, stream: str) -> list[RawStreamMsg]:
    """Every message stored in a dead-letter stream, oldest first."""
    info = await js.stream_info(stream)
    first, last = info.state.first_seq, info.state.last_seq
    if info.state.messages == 0:
        return []
    return [await js.get_msg(stream, seq) for seq in range(first, last + 1)]


async def stream_exists(js: JetStreamContext, stream: str) -> bool:
    """Whether the stream exists on the server."""
    try:
        await js.stream_info(stream)
    except NotFoundError:
        return False
    return True


def session_event(**overrides: str) -> dict[str, str]:
    """The CONTRACT.md example event with fresh UUIDs, every field a string."""
    return {
        "session_id": str(uuid.uuid4()),
        "user_id": str(uuid.uuid4()),
        "tenant_id": str(uuid.uuid4()),
        "device_id": str(uuid.uuid4()),
        "start_time": "2026-03-12T16:07:10-05:00",
        "end_time": "2026-03-12T16:42:55-05:00",
        "source_ip": "203.0.113.7:51514",
        "reason": "normal",
    } | overrides


def subject_of(session_id: str) -> str:
    """The subject the publisher uses for a session."""
    return f"{SUBJECT_PREFIX}.{session_id}"


async def publish_event(js: JetStreamContext, event: dict[str, str]) -> int:
    """Publish an event as the SSH relay does (plain JetStream publish); its stream sequence."""
    return await publish_raw(js, subject_of(event["session_id"]), json.dumps(event).encode())


async def publish_raw(js: JetStreamContext, subject: str, payload: bytes) -> int:
    """Publish bytes on a subject with a JetStream ack; their stream sequence."""
    ack = await js.publish(subject, payload, stream=STREAM)
    return ack.seq


async def audit_rows(conn: asyncpg.Connection, session_ids: list[str]) -> list[asyncpg.Record]:
    """The audit rows of these sessions, with the inet as text and details decoded later."""
    return await conn.fetch(
        """
        SELECT id, tenant_id::text, user_id::text, action, resource_type, resource_id,
               device_id::text, details, ip_address, created_at,
               occurred_at, idempotency_key, details->>'session_id' AS session_id
        FROM audit_logs
        WHERE details->>'session_id' = ANY($1::text[])
        ORDER BY details->>'session_id'
        """,
        session_ids,
    )


async def rows_per_session(conn: asyncpg.Connection, session_ids: list[str]) -> dict[str, int]:
    """How many audit rows each of these sessions has (sessions without rows are absent)."""
    records = await conn.fetch(
        """
        SELECT details->>'session_id' AS session_id, count(*) AS n
        FROM audit_logs WHERE details->>'session_id' = ANY($1::text[])
        GROUP BY 1
        """,
        session_ids,
    )
    return {r["session_id"]: r["n"] for r in records}


async def has_rows(conn: asyncpg.Connection, session_ids: list[str], count: int) -> bool:
    """Whether these sessions have at least count audit rows between them."""
    return sum((await rows_per_session(conn, session_ids)).values()) >= count


def details_of(row: asyncpg.Record) -> dict[str, Any]:
    """The decoded details column of a row."""
    decoded: dict[str, Any] = json.loads(row["details"])
    return decoded


async def readyz(service: ServiceProcess) -> tuple[int, dict[str, Any]] | None:
    """Status and body of /readyz, or None while nothing answers."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(service.base_url + "/readyz")
    except httpx.HTTPError:
        return None
    return response.status_code, response.json()


@asynccontextmanager
async def running_service(log_file: Path, **env: str) -> AsyncIterator[ServiceProcess]:
    """A ready service process with these env overrides, stopped afterwards."""
    with ServiceProcess(log_file, **env) as service:
        await asyncio.to_thread(service.wait_ready)
        yield service
