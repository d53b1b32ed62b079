"""The SSH relay's side, for local runs and tests: its stream and realistic events (CONTRACT.md)."""

import json
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import nats
from nats.js import api
from nats.js.errors import NotFoundError

# The publisher's own stream config (CONTRACT.md); created here only for local runs,
# where no publisher has created it. The service itself never creates or changes it.
PUBLISHER_SUBJECTS = [
    "device.status.>",
    "device.metrics.>",
    "device.interfaces.>",
    "device.firmware.>",
    "device.credential_changed.>",
    "config.changed.>",
    "config.snapshot.>",
    "config.push.rollback.>",
    "config.push.alert.>",
    "audit.session.end.>",
]


def publisher_stream_config(name: str) -> api.StreamConfig:
    """DEVICE_EVENTS as the SSH relay creates it: 24 h, 64 MiB, discard old, file, 1 replica."""
    return api.StreamConfig(
        name=name,
        subjects=PUBLISHER_SUBJECTS,
        retention=api.RetentionPolicy.LIMITS,
        max_age=24 * 3600,
        max_bytes=64 * 1024 * 1024,
        discard=api.DiscardPolicy.OLD,
        storage=api.StorageType.FILE,
        num_replicas=1,
    )


async def ensure_publisher_stream(nats_url: str, name: str, **options: Any) -> bool:
    """Create the publisher's stream if absent; True if it was created."""
    nc = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False, **options)
    try:
        js = nc.jetstream()
        try:
            await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(publisher_stream_config(name))
            return True
        return False
    finally:
        await nc.close()


SUBJECT_PREFIX = "audit.session.end"
_SOURCES = ["203.0.113.7:51514", "[2001:db8::1]:443", "198.51.100.23", "10.20.30.40:2222", ""]
_OFFSETS = [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=2))]


# The tenants of `make publish-sample`: few and fixed, so that the stack `make run` starts
# can hold their data keys in its OpenBao, as the platform does for its tenants.
SAMPLE_TENANTS = (
    "7c1f3a52-0d4e-4b8a-9e61-2f5b8c3d4a01",
    "a93e6b07-5c21-4f9d-8b34-6e0a1d7c9b02",
    "e4d28c19-7a6f-4c03-a5b8-91f3c0e2d603",
)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _rfc3339(moment: datetime) -> str:
    # Go's time.RFC3339: whole seconds, "Z" for UTC, else the local offset.
    text = moment.replace(microsecond=0).isoformat()
    return text.replace("+00:00", "Z")


def session_end(
    rng: random.Random,
    *,
    tenant_id: str | None = None,
    reason: str = "normal",
    ended: datetime | None = None,
) -> dict[str, str]:
    """One event with every field a Go string, as the publisher marshals it."""
    end = ended or datetime.now(UTC) - timedelta(seconds=rng.randint(0, 600))
    start = end - timedelta(seconds=rng.randint(1, 4 * 3600))
    zone = rng.choice(_OFFSETS)
    return {
        "session_id": _uuid(rng),
        "user_id": "" if rng.random() < 0.2 else _uuid(rng),
        "tenant_id": tenant_id or _uuid(rng),
        "device_id": _uuid(rng),
        "start_time": _rfc3339(start.astimezone(zone)),
        "end_time": _rfc3339(end.astimezone(zone)),
        "source_ip": rng.choice(_SOURCES),
        "reason": reason,
    }


def encode(event: dict[str, str]) -> tuple[str, bytes]:
    """(subject, payload) for an event."""
    return f"{SUBJECT_PREFIX}.{event['session_id']}", json.dumps(event).encode()


def sample_messages(
    count: int, *, seed: int = 0, poison: bool = False
) -> Iterator[tuple[str, bytes]]:
    """count sessions; every tenth ends by idle timeout and so sends two events; optional poison."""
    rng = random.Random(seed)  # noqa: S311 - sample data, not secrets
    for index in range(count):
        if index % 10 == 9:
            event = session_end(rng, tenant_id=rng.choice(SAMPLE_TENANTS), reason="idle_timeout")
            yield encode(event)
            yield encode(event | {"reason": "normal"})
        else:
            yield encode(session_end(rng, tenant_id=rng.choice(SAMPLE_TENANTS)))
    if poison:
        good = session_end(rng, tenant_id=rng.choice(SAMPLE_TENANTS))
        subject, _ = encode(good)
        yield subject, b"{not json"
        yield subject, json.dumps(good | {"tenant_id": "not-a-uuid"}).encode()
        yield subject, json.dumps(good | {"end_time": "2026-03-12 16:07:10"}).encode()
        yield f"{SUBJECT_PREFIX}.{uuid.uuid4()}", json.dumps(good).encode()
