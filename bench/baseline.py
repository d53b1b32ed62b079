"""The baseline: the seed consumer's way, one event per handler call, one INSERT + COMMIT each."""

import ipaddress
import json
import logging
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from faststream import AckPolicy
from faststream.message import StreamMessage
from faststream.nats import JStream, NatsBroker, NatsMessage
from nats.js.api import DeliverPolicy
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from bench.probes import commit_span, row_count, wait_until
from bench.servers import STREAM, PhaseFailed, plain_dsn
from service.models import AuditLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaselineResult:
    """How fast the seed-style consumer writes rows."""

    events: int
    seconds: float
    events_per_s: float


async def _raw_body(message: StreamMessage[Any]) -> bytes:
    return message.body


def _bare_ip(source_ip: str) -> str | None:
    # The seed stored source_ip as is; here ip_address is inet, which refuses a port.
    for candidate in (source_ip, source_ip.rsplit(":", 1)[0].strip("[]")):
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None


def _row(data: dict[str, Any]) -> AuditLog:
    duration = None
    start, end = data.get("start_time", ""), data.get("end_time", "")
    if start and end:
        duration = int(
            (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
        )
    user_id = data.get("user_id")
    # id, created_at and ingested_at are left to the table's server defaults.
    return AuditLog(  # type: ignore[call-arg]
        tenant_id=uuid.UUID(data["tenant_id"]),
        user_id=uuid.UUID(user_id) if user_id else None,
        action="ssh_session_end",
        resource_type="device",
        resource_id=data["device_id"],
        device_id=uuid.UUID(data["device_id"]),
        details={
            "session_id": data.get("session_id"),
            "start_time": start,
            "end_time": end,
            "duration_seconds": duration,
            "source_ip": data.get("source_ip"),
            "reason": data.get("reason"),
        },
        ip_address=_bare_ip(data.get("source_ip") or ""),
    )


async def measure_baseline(
    nats_url: str, *, database_url: str, durable: str, total: int, deadline_s: float
) -> BaselineResult:
    """Consume total valid events the seed's way in this process; rate from the rows written."""
    engine = create_async_engine(database_url)
    broker = NatsBroker(nats_url, logger=None)

    # A durable push subscription, like the seed's js.subscribe(..., durable=...);
    # FastStream warns that such a consumer does not scale out: that is the seed's way.
    warnings.filterwarnings("ignore", "The JetStream Push consumer", RuntimeWarning)

    @broker.subscriber(
        "audit.session.end.>",
        stream=JStream(STREAM, declare=False),
        durable=durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.MANUAL,
        decoder=_raw_body,
    )
    async def on_session_end(body: bytes, message: NatsMessage) -> None:
        try:
            row = _row(json.loads(body))
            async with AsyncSession(engine) as session:
                session.add(row)
                await session.commit()
            await message.ack()
        except Exception:
            logger.exception("baseline: event failed")
            await message.nack()

    conn = await asyncpg.connect(plain_dsn(database_url))
    try:
        await broker.start()

        async def done() -> tuple[bool, str]:
            rows = await row_count(conn)
            return rows >= total, f"{rows:,}/{total:,} rows"

        await wait_until(done, deadline_s=deadline_s, what="baseline")
        span = await commit_span(conn)
    finally:
        await broker.stop()
        await conn.close()
        await engine.dispose()
    if span.rows != total:
        raise PhaseFailed(f"baseline: {span.rows} rows for {total} events")
    return BaselineResult(total, span.seconds, span.events_per_s(total))
