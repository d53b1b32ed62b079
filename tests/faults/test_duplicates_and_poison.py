"""What the relay and JetStream really send: repeated end events, duplicates, redelivery, poison."""

import json
import random
import signal
from pathlib import Path

import pytest

from tests.faults.support import (
    DURABLE,
    FaultStack,
    fault_stack,
    metric,
)
from tests.faults.traffic import (
    POISON_KINDS,
    STREAM,
    Message,
    Publisher,
    event,
    expected,
    poison,
    valid,
)

pytestmark = pytest.mark.faults


def relay_traffic(rng: random.Random) -> tuple[list[Message], set[str]]:
    """Sessions ending normally, by idle timeout (idle_timeout then normal), and re-published
    (the same bytes twice), some repeats right behind the first, some far apart; and the
    idle-timed-out sessions."""
    messages: list[Message] = []
    idle: set[str] = set()
    later: list[tuple[int, Message]] = []
    for index in range(600):
        kind = index % 6
        if kind in (0, 1):  # idle timeout: the relay sends a second, "normal" end event
            first = event(rng, reason="idle_timeout")
            idle.add(first["session_id"])
            messages.append(valid(first))
            repeat = valid(first | {"reason": "normal"})
        elif kind == 2:  # the same bytes published twice
            repeat = valid(event(rng))
            messages.append(repeat)
        else:
            messages.append(valid(event(rng)))
            continue
        if kind == 0:  # right behind: the same fetch, the same INSERT
            messages.append(repeat)
        else:  # a later batch
            later.append((len(messages) + rng.randint(1, 400), repeat))
    for position, message in sorted(later, key=lambda item: item[0], reverse=True):
        messages.insert(min(position, len(messages)), message)
    return messages, idle


async def test_repeated_end_events_duplicates_and_redeliveries_make_one_row_keeping_idle_timeout(
    tmp_path: Path,
) -> None:
    messages, idle = relay_traffic(random.Random(6))
    async with fault_stack(tmp_path) as stack:
        first = await stack.start_service("first")
        want = expected(messages, await Publisher(stack.js).publish(messages))
        assert len(want.sessions) == 600
        assert want.published == 900
        await stack.verify_exact(want, within=60)
        assert await metric(first, "session_audit_duplicates_skipped_total") == 300
        rows_before = await _rows(stack)
        code, _ = await stack.stop_service(first, signal.SIGTERM)
        assert code == 0

        # A lost durable: the service recreates it and JetStream delivers everything again.
        await stack.js.delete_consumer(STREAM, DURABLE)
        second = await stack.start_service("second")
        outcome = await stack.verify_exact(want, within=60)

        assert outcome.deliveries >= want.published, "the whole stream came again"
        assert await metric(second, "session_audit_rows_inserted_total") == 0
        assert await metric(second, "session_audit_duplicates_skipped_total") == want.published
        assert await _rows(stack) == rows_before, "the rows are the first ones, untouched"
    reasons = {session: row[1] for session, row in rows_before.items()}
    assert {s for s, reason in reasons.items() if reason == "idle_timeout"} == idle
    assert all(reason == "normal" for s, reason in reasons.items() if s not in idle)


async def _rows(stack: FaultStack) -> dict[str, tuple[str, str]]:
    """(row id, details.reason) of every row, by session."""
    async with stack.owner() as conn:
        records = await conn.fetch("SELECT id::text, details FROM audit_logs")
    return {
        json.loads(r["details"])["session_id"]: (r["id"], json.loads(r["details"])["reason"])
        for r in records
    }


async def test_poison_of_every_kind_mixed_with_good_events_is_dead_lettered_once_with_its_reason(
    tmp_path: Path,
) -> None:
    rng = random.Random(7)
    kinds = list(POISON_KINDS)
    messages = [valid(event(rng)) for _ in range(2_700)]
    # 10 %: 30 of each kind, spread over the stream.
    for n in range(300):
        messages.insert(rng.randrange(len(messages) + 1), poison(rng, kinds[n % len(kinds)]))
    async with fault_stack(tmp_path) as stack:
        await stack.start_service("service")
        want = expected(messages, await Publisher(stack.js).publish(messages))
        outcome = await stack.verify_exact(want, within=90)

    assert outcome.rows == 2_700
    assert outcome.dead_letters == 300
    assert sorted({m.kind for m in want.dead.values()}) == sorted(kinds)
