"""The scenarios' traffic: realistic events, poison of every kind, a publisher that loses
nothing, and what the service owes for what was published."""

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count
from typing import Any

from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from service.dev.publisher import encode, session_end

STREAM = "DEVICE_EVENTS"
SUBJECT_PREFIX = "audit.session.end"
MAX_PAYLOAD_BYTES = 16_384  # the service's default, which the scenarios keep

# Each kind of poison of CONTRACT.md / the README's rules: the reason its dead letter must
# carry, and a fragment its Audit-Dlq-Detail must contain (which field, or why).
POISON_KINDS: dict[str, tuple[str, str]] = {
    "bad_json": ("invalid_json", "not JSON"),
    "not_an_object": ("not_an_object", "not an object"),
    "bad_session_id": ("invalid_field", "session_id"),
    "bad_user_id": ("invalid_field", "user_id"),
    "bad_tenant_id": ("invalid_field", "tenant_id"),
    "bad_device_id": ("invalid_field", "device_id"),
    "time_without_offset": ("invalid_field", "with an offset"),
    "end_before_start": ("invalid_field", "end_time is before start_time"),
    "subject_mismatch": ("subject_mismatch", "differs from session_id"),
    "too_large": ("too_large", f"limit {MAX_PAYLOAD_BYTES}"),
}
# A valid event the database itself refuses (a CHECK constraint the scenario adds).
DEAD_REASONS = POISON_KINDS | {"database_refused": ("database_refused", "check constraint")}


@dataclass(frozen=True)
class Message:
    """One message to publish, and what the service must make of it."""

    subject: str
    payload: bytes
    session_id: str | None = None  # a valid event: this session must have exactly one row
    kind: str = "valid"  # a POISON_KINDS key for a message that must be dead-lettered

    @property
    def dead_reason(self) -> str | None:
        """The Audit-Dlq-Reason this message must be dead-lettered with, None if valid."""
        return DEAD_REASONS[self.kind][0] if self.kind in DEAD_REASONS else None


def event(rng: random.Random, **fields: str) -> dict[str, str]:
    """A realistic session-end event (every field a Go string), fields replaced."""
    return session_end(rng) | fields


def valid(an_event: dict[str, str]) -> Message:
    """The event as the relay publishes it."""
    subject, payload = encode(an_event)
    return Message(subject, payload, session_id=an_event["session_id"])


def refused(an_event: dict[str, str]) -> Message:
    """A valid event that the scenario's CHECK constraint makes the database refuse."""
    subject, payload = encode(an_event)
    return Message(subject, payload, kind="database_refused")


def poison(rng: random.Random, kind: str) -> Message:
    """A message of one POISON_KINDS kind, built from an otherwise realistic event."""
    good = session_end(rng)
    subject, _ = encode(good)

    def body(**fields: Any) -> bytes:
        return json.dumps(good | fields).encode()

    match kind:
        case "bad_json":
            payload = b'{"session_id": "' + good["session_id"].encode() + b'", not json'
        case "not_an_object":
            payload = rng.choice([b"[1, 2]", b'"text"', b"42", b"null", b"true"])
        case "bad_session_id":
            subject, payload = f"{SUBJECT_PREFIX}.not-a-uuid", body(session_id="not-a-uuid")
        case "bad_user_id":
            payload = body(user_id="user-7")
        case "bad_tenant_id":
            payload = body(tenant_id="not-a-uuid")
        case "bad_device_id":
            payload = body(device_id=good["device_id"][:-1])
        case "time_without_offset":
            field_name = rng.choice(["start_time", "end_time"])
            payload = body(**{field_name: good[field_name][:19]})
        case "end_before_start":
            payload = body(start_time=good["end_time"], end_time=good["start_time"])
        case "subject_mismatch":
            subject = f"{SUBJECT_PREFIX}.{uuid.UUID(int=rng.getrandbits(128), version=4)}"
            payload = body()
        case "too_large":
            payload = body(padding="x" * (MAX_PAYLOAD_BYTES + 1))
        case _:
            raise ValueError(f"unknown poison kind {kind!r}")
    return Message(subject, payload, kind=kind)


def mixed_stream(
    rng: random.Random, total: int, *, duplicate_share: float, poison_share: float
) -> list[Message]:
    """total messages: sessions, some published twice (re-publish or idle_timeout + normal),
    some poison of every kind, interleaved in a seeded random order."""
    poison_count = round(total * poison_share)
    duplicate_count = round(total * duplicate_share)
    sessions = total - poison_count - duplicate_count
    placed: list[tuple[float, Message]] = []
    doubled = set(rng.sample(range(sessions), duplicate_count))
    for index in range(sessions):
        if index in doubled and rng.random() < 0.5:
            first = event(rng, reason="idle_timeout")
            placed.append((index, valid(first)))
            placed.append((index + rng.uniform(0.01, 50), valid(first | {"reason": "normal"})))
        elif index in doubled:  # the same bytes again, a little later
            again = valid(event(rng))
            placed += [(index, again), (index + rng.uniform(0.01, 50), again)]
        else:
            placed.append((index, valid(event(rng))))
    kinds = list(POISON_KINDS)
    placed += [
        (rng.uniform(0, sessions), poison(rng, kinds[n % len(kinds)])) for n in range(poison_count)
    ]
    placed.sort(key=lambda item: item[0])
    return [message for _, message in placed]


class Publisher:
    """Publishes as the relay does (a plain JetStream publish), but never loses a message.

    The relay drops what it cannot publish; a scenario must know exactly what the stream
    holds, so a publish that fails (NATS restarting) is retried. Each message carries its
    own Nats-Msg-Id so that a retry of a publish that was stored after all is not stored
    twice: the stream then holds each message once, and a duplicate the scenario wants
    (same bytes twice) is two messages with two ids. The service ignores the header.
    """

    def __init__(self, js: JetStreamContext, *, in_flight: int = 256) -> None:
        self.js = js
        self.in_flight = in_flight
        self.retries = 0
        self._ids = count()
        self._run = uuid.uuid4().hex[:8]

    async def publish(self, messages: Sequence[Message], *, rate: float | None = None) -> list[int]:
        """Publish every message (at most rate per second); their stream sequences, in order."""
        sequences = [0] * len(messages)
        slots = asyncio.Semaphore(self.in_flight)

        async def one(index: int, message: Message, msg_id: str) -> None:
            try:
                sequences[index] = await self._publish_one(message, msg_id)
            finally:
                slots.release()

        started = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for index, message in enumerate(messages):
                if rate is not None:
                    # A schedule, not a sleep per message: a late wake-up catches up.
                    delay = started + index / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await slots.acquire()
                msg_id = f"fault-test:{self._run}:{next(self._ids)}"
                group.create_task(one(index, message, msg_id))
        return sequences

    async def _publish_one(self, message: Message, msg_id: str, give_up_s: float = 180) -> int:
        deadline = time.monotonic() + give_up_s
        while True:
            try:
                ack = await self.js.publish(
                    message.subject,
                    message.payload,
                    stream=STREAM,
                    timeout=5,
                    headers={"Nats-Msg-Id": msg_id},
                )
            except (NatsError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                self.retries += 1
                await asyncio.sleep(0.25)
            else:
                return int(ack.seq)


@dataclass(frozen=True)
class Expected:
    """What the published messages must become."""

    sessions: frozenset[str]  # each: exactly one row
    dead: dict[int, Message]  # stream sequence -> poison message: exactly one dead letter each
    published: int


def expected(messages: Sequence[Message], sequences: Sequence[int]) -> Expected:
    """The outcome the service owes for these messages, published at these sequences."""
    assert len(set(sequences)) == len(messages), "every message must be stored once"
    return Expected(
        sessions=frozenset(m.session_id for m in messages if m.session_id is not None),
        dead={seq: m for m, seq in zip(messages, sequences, strict=True) if m.dead_reason},
        published=len(messages),
    )


def dead_letter_problems(headers: list[dict[str, str]], dead: dict[int, Message]) -> list[str]:
    """What differs from exactly one dead letter per poison message, with its reason."""
    by_sequence = Counter(int(h.get("Audit-Original-Sequence", "0")) for h in headers)
    problems = []
    doubled = sorted(seq for seq, n in by_sequence.items() if n > 1)
    missing = sorted(dead.keys() - by_sequence.keys())
    stray = sorted(by_sequence.keys() - dead.keys())
    if doubled:
        problems.append(f"{len(doubled)} messages dead-lettered more than once: {doubled[:5]}")
    if missing:
        kinds = Counter(dead[seq].kind for seq in missing)
        problems.append(f"{len(missing)} poison messages not dead-lettered: {dict(kinds)}")
    if stray:
        problems.append(f"{len(stray)} dead letters of valid messages, sequences {stray[:5]}")
    for h in headers:
        seq = int(h.get("Audit-Original-Sequence", "0"))
        if seq not in dead:
            continue
        message = dead[seq]
        reason, fragment = DEAD_REASONS[message.kind]
        if h.get("Audit-Dlq-Reason") != reason or fragment not in h.get("Audit-Dlq-Detail", ""):
            problems.append(
                f"{message.kind} at {seq}: reason {h.get('Audit-Dlq-Reason')!r} "
                f"detail {h.get('Audit-Dlq-Detail')!r}, want {reason!r} with {fragment!r}"
            )
        if h.get("Nats-Msg-Id") != f"dlq:{STREAM}:{seq}":
            problems.append(f"dead letter of {seq} has Nats-Msg-Id {h.get('Nats-Msg-Id')!r}")
    return problems
