"""What the phases publish: a drain set with duplicates and poison, and a steady offered load."""

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.js import JetStreamContext

from service.dev.publisher import encode, session_end

Message = tuple[str, bytes]


def idempotency_key(session_id: str) -> str:
    """The service's key for a session: one row per key."""
    return f"ssh_session_end:{session_id}"


@dataclass(frozen=True)
class DrainSet:
    """Messages in stream order, and what a correct consumer makes of them."""

    messages: list[Message]
    keys: list[str]  # one idempotency key per distinct valid session: the rows expected
    duplicates: int  # extra deliveries of a valid session (re-publish, idle_timeout+normal)
    poison: int  # messages that must become dead letters

    @property
    def total(self) -> int:
        """Messages in the set."""
        return len(self.messages)


def _poison(rng: random.Random, kind: int) -> Message:
    event = session_end(rng)
    subject, _ = encode(event)
    if kind == 0:
        return subject, b'{"session_id": "' + event["session_id"].encode() + b'", not json'
    if kind == 1:
        return subject, json.dumps(event | {"tenant_id": "not-a-uuid"}).encode()
    # Go's RFC 3339 always has an offset; a bare local time says no instant.
    return subject, json.dumps(event | {"end_time": event["end_time"][:19]}).encode()


def drain_set(
    total: int, *, seed: int = 4, share: float = 0.01, tenants: Sequence[str] = ()
) -> DrainSet:
    """total messages: realistic sessions, about share duplicates and share poison, mixed.

    With tenants, the sessions take them in turn (each its own otherwise): a batch then
    holds every tenant's events in equal parts, as measure_transit_limit spreads its items.
    """
    rng = random.Random(seed)  # noqa: S311 - benchmark data, not secrets
    poison = max(3, round(total * share))
    duplicates = max(2, round(total * share))
    sessions = total - poison - duplicates
    if sessions < duplicates:
        raise ValueError(f"--events {total} is too small for a drain set")
    keyed: list[tuple[float, Message]] = []
    keys: list[str] = []
    doubled = set(rng.sample(range(sessions), duplicates))
    for index in range(sessions):
        pair = index in doubled and index % 2 == 0
        tenant = tenants[index % len(tenants)] if tenants else None
        event = session_end(rng, tenant_id=tenant, reason="idle_timeout" if pair else "normal")
        keys.append(idempotency_key(event["session_id"]))
        keyed.append((float(index), encode(event)))
        if index in doubled:
            # The relay's second end event, or a re-publish, arrives a little later.
            again = event | {"reason": "normal"} if pair else event
            keyed.append((index + rng.uniform(0.5, 300.0), encode(again)))
    keyed.extend((rng.uniform(0, sessions), _poison(rng, kind % 3)) for kind in range(poison))
    keyed.sort(key=lambda item: item[0])
    return DrainSet([message for _, message in keyed], keys, duplicates, poison)


def valid_set(total: int, *, seed: int = 7) -> DrainSet:
    """total distinct valid sessions, nothing else: what the seed consumer can survive."""
    rng = random.Random(seed)  # noqa: S311 - benchmark data, not secrets
    events = [session_end(rng) for _ in range(total)]
    keys = [idempotency_key(event["session_id"]) for event in events]
    return DrainSet([encode(event) for event in events], keys, 0, 0)


async def prefill(
    js: JetStreamContext,
    messages: Sequence[Message],
    *,
    in_flight: int = 500,
    progress: Callable[[int], None] | None = None,
) -> float:
    """Publish every message with JetStream acks, in_flight at a time; returns the seconds taken."""
    slots = asyncio.Semaphore(in_flight)
    done = 0

    async def publish(subject: str, payload: bytes) -> None:
        nonlocal done
        try:
            await js.publish(subject, payload, timeout=30)
        finally:
            slots.release()
        done += 1
        if progress is not None and done % 10_000 == 0:
            progress(done)

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for subject, payload in messages:
            await slots.acquire()
            group.create_task(publish(subject, payload))
    return time.monotonic() - started


async def publish_at_rate(
    js: JetStreamContext,
    *,
    rate: float,
    seconds: float,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Publish new sessions at rate per second for seconds; returns key -> wall-clock send time."""
    rng = random.Random(seed)  # noqa: S311 - benchmark data, not secrets
    sent: dict[str, float] = {}

    async def publish(subject: str, payload: bytes, key: str) -> None:
        sent[key] = time.time()
        await js.publish(subject, payload, timeout=10)

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for index in range(round(rate * seconds)):
            # A schedule, not a sleep per message: a late wake-up publishes what is due at
            # once, so the offered load keeps its average rate.
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if progress is not None and index and index % round(5 * rate) == 0:
                progress(index)
            event = session_end(rng, ended=datetime.now(UTC))
            subject, payload = encode(event)
            group.create_task(publish(subject, payload, idempotency_key(event["session_id"])))
    return sent
