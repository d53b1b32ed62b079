"""The ceiling: a bare JetStream pull-and-ack loop over the drain set, no parsing, no database."""

import time
from dataclasses import dataclass

import nats
from nats.js.api import AckPolicy, ConsumerConfig

from bench.probes import say
from bench.servers import STREAM, PhaseFailed

SUBJECT = "audit.session.end.*"


@dataclass(frozen=True)
class CeilingResult:
    """How fast JetStream alone hands over and takes back the drain set's messages."""

    events: int
    batch: int
    seconds: float
    events_per_s: float
    client_cpu_s: float  # this process's CPU over the same span


async def measure_ceiling(
    nats_url: str, *, durable: str, total: int, batch: int, deadline_s: float
) -> CeilingResult:
    """Fetch batch messages at a time and ack each, until total are acked and flushed."""
    nc = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False)
    try:
        js = nc.jetstream()
        # The same consumer settings as the service's durable, so only the work differs.
        config = ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT, ack_wait=60, max_ack_pending=5000, max_deliver=-1
        )
        sub = await js.pull_subscribe(SUBJECT, durable=durable, stream=STREAM, config=config)
        acked = 0
        first: tuple[float, float, int] | None = None  # (wall, CPU, size) after the first batch
        started = reported = time.monotonic()
        while acked < total:
            if time.monotonic() - started > deadline_s:
                raise PhaseFailed(f"ceiling: {acked}/{total} acked after {deadline_s:.0f} s")
            try:
                msgs = await sub.fetch(batch, timeout=1.0)
            except TimeoutError:  # nats-py raises both its own and asyncio's
                continue
            for msg in msgs:
                await msg.ack()
            acked += len(msgs)
            now = time.monotonic()
            if first is None:
                first = (now, time.process_time(), len(msgs))
            if now - reported >= 3.0:
                say(f"ceiling: {acked:,}/{total:,} acked")
                reported = now
        await nc.flush()  # every ack has reached the server
        ended, cpu = time.monotonic(), time.process_time()
        assert first is not None
        # Like the service's figure: from the first batch done to the last, without the first.
        seconds = ended - first[0]
        info = await js.consumer_info(STREAM, durable)
        if info.num_pending or acked != total:
            raise PhaseFailed(f"ceiling: acked {acked} of {total}, {info.num_pending} left")
        rate = (total - first[2]) / seconds
        return CeilingResult(total, batch, seconds, round(rate, 1), round(cpu - first[1], 2))
    finally:
        await nc.close()
