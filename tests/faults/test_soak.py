"""A soak: a long stream with duplicates and poison, and faults of every kind at random points."""

import asyncio
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from service.dev.publisher import publisher_stream_config
from tests.faults.support import (
    FaultStack,
    environ_flag,
    fault_stack,
)
from tests.faults.traffic import (
    Publisher,
    expected,
    mixed_stream,
)
from tests.service_process import ServiceProcess

pytestmark = pytest.mark.faults

SEED = environ_flag("FAULTS_SOAK_SEED", 10)
EVENTS = environ_flag("FAULTS_SOAK_EVENTS", 200_000)
RATE = 3_000  # events/s offered: well under what the service drains on 2 cores
FAULT_KINDS = ("postgres_outage", "nats_restart", "service_sigkill", "service_sigterm")


class Soak:
    """The running replica, and the faults that strike it and its servers."""

    def __init__(self, stack: FaultStack, rng: random.Random) -> None:
        self.stack = stack
        self.rng = rng
        self.service: ServiceProcess | None = None
        self.restarts = 0

    async def start_service(self) -> None:
        """Start a replica; the first creates the durable with a 10 s ack wait."""
        # After a SIGKILL the unacked events come back after the ack wait: keep it short.
        self.service = await self.stack.start_service(f"replica-{self.restarts}", ACK_WAIT_S="10")
        self.restarts += 1

    async def postgres_outage(self) -> str:
        """PostgreSQL stopped (fast shutdown or SIGKILL) for a few seconds, then started."""
        kill = self.rng.random() < 0.5
        outage = self.rng.uniform(3, 8)
        await asyncio.to_thread(self.stack.postgres.stop, kill=kill)
        await asyncio.sleep(outage)
        await asyncio.to_thread(self.stack.postgres.start)
        return f"{'SIGKILL' if kill else 'fast shutdown'}, down {outage:.1f} s"

    async def nats_restart(self) -> str:
        """nats-server stopped and started on the same port and store."""
        await asyncio.to_thread(self.stack.nats.restart)
        return "same port and store"

    async def service_sigkill(self) -> str:
        """The replica killed, a new one started."""
        assert self.service is not None
        await self.stack.stop_service(self.service, signal.SIGKILL)
        await self.start_service()
        return "killed; new replica ready"

    async def service_sigterm(self) -> str:
        """The replica terminated, a new one started."""
        assert self.service is not None
        code, seconds = await self.stack.stop_service(self.service, signal.SIGTERM)
        assert code == 0, self.service.log()
        await self.start_service()
        return f"exit {code} after {seconds:.1f} s; new replica ready"

    def fault(self, kind: str) -> Callable[[], Awaitable[str]]:
        """The coroutine function that injects a fault of this kind."""
        faults: dict[str, Callable[[], Awaitable[str]]] = {
            "postgres_outage": self.postgres_outage,
            "nats_restart": self.nats_restart,
            "service_sigkill": self.service_sigkill,
            "service_sigterm": self.service_sigterm,
        }
        return faults[kind]


def fault_schedule(rng: random.Random, span: float) -> list[tuple[float, str]]:
    """Three faults of each kind, in random order, each at a random second of its own
    slice of the first 90 % of the publishing (so that they spread over all of it)."""
    kinds = [kind for kind in FAULT_KINDS for _ in range(3)]
    rng.shuffle(kinds)
    slice_s = 0.85 * span / len(kinds)
    times = [0.05 * span + (n + rng.random()) * slice_s for n in range(len(kinds))]
    return list(zip(times, kinds, strict=True))


@pytest.mark.timeout(900)
async def test_soak_with_random_faults_writes_every_session_once_and_dead_letters_poison_once(
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    messages = mixed_stream(rng, EVENTS, duplicate_share=0.01, poison_share=0.01)
    schedule = fault_schedule(rng, EVENTS / RATE)
    print(f"soak: {len(messages):,} messages at {RATE:,}/s, seed {SEED}; fault schedule:")
    for at, kind in schedule:
        print(f"  planned at {at:5.1f} s: {kind}")

    async with fault_stack(tmp_path) as stack:
        # The relay's 64 MiB cap holds ~46 s of this soak's 3,000 events/s; a batch that a
        # SIGKILL strands comes back only after ACK_WAIT_S (60 s), by when the stream has
        # discarded it (README, runbook). The soak tests the service, so it gets room.
        roomy = publisher_stream_config("DEVICE_EVENTS")
        roomy.max_bytes = 512 * 1024 * 1024
        await stack.js.update_stream(roomy)
        soak = Soak(stack, rng)
        await soak.start_service()
        publisher = Publisher(stack.js)
        started = time.monotonic()
        publishing = asyncio.create_task(publisher.publish(messages, rate=RATE))
        try:
            for at, kind in schedule:
                # A late fault (the one before took long) strikes at once.
                await asyncio.sleep(max(0.0, started + at - time.monotonic()))
                struck = time.monotonic() - started
                what = await soak.fault(kind)()
                print(f"  {struck:5.1f}-{time.monotonic() - started:5.1f} s: {kind} ({what})")
            sequences = await publishing
        finally:
            publishing.cancel()
        published_s = time.monotonic() - started
        want = expected(messages, sequences)
        outcome = await stack.verify_exact(want, within=300)

    print(
        f"soak: published in {published_s:.1f} s ({publisher.retries} publish retries); "
        f"drained {outcome.drain_s:.1f} s later; {outcome.rows:,} rows for "
        f"{len(want.sessions):,} sessions, {outcome.dead_letters:,} dead letters, "
        f"{outcome.deliveries:,} deliveries for {want.published:,} messages, "
        f"{soak.restarts} replicas; {time.monotonic() - began:.1f} s in all"
    )
