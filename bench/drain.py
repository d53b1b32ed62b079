"""The service draining a pre-filled stream: events/s, exact totals, memory; 1 or 2 replicas."""

import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.probes import commit_span, exactly_one_row_each, row_count, say, wait_until
from bench.servers import Lab, PhaseFailed, plain_dsn
from bench.service_proc import RssSampler, replicas, tree_cpu_seconds
from bench.workload import DrainSet, prefill

MB = 1_000_000
# A drain that stops moving fails long before its deadline, saying where it stopped.
STALL_S = 60.0


@dataclass(frozen=True)
class DrainResult:
    """One drain of the drain set by the service."""

    replicas: int
    events: int
    rows: int
    duplicates: int
    dead_letters: int
    prefill_s: float
    seconds: float  # first to last committed transaction
    events_per_s: float
    service_cpu_s: list[float]  # per replica, from resume to the last row
    events_per_service_cpu_s: float  # steadier than events/s on a busy machine
    other_cpu_s: dict[str, float]  # same span: embedded servers, this bench process
    wall_s: float  # that span, as this process saw it (polling adds up to a second)
    first_commit_after_s: float  # from resuming the durable to the first committed row
    peak_rss_mb: list[float]  # per replica
    rss_samples_mb: list[tuple[float, list[float]]]


def service_env(lab: Lab, *, database_url: str, durable: str, dlq_stream: str) -> dict[str, str]:
    """What the service is told; anything else comes from the caller's environment."""
    return {
        "NATS_URL": lab.servers.nats_url,
        "DATABASE_URL": database_url,
        "STREAM": "DEVICE_EVENTS",
        "DURABLE": durable,
        "DLQ_STREAM": dlq_stream,
        "LOG_LEVEL": "WARNING",
    }


def _other_cpu(lab: Lab) -> dict[str, float]:
    cpu = {name: tree_cpu_seconds(pid) for name, pid in lab.servers.server_pids.items()}
    return cpu | {"bench": time.process_time()}


async def _fill(lab: Lab, workload: DrainSet, phase: str) -> float:
    """Publish the drain set; the seconds it took."""
    say(f"{phase}: publishing {workload.total:,} events")
    prefill_s = await prefill(
        lab.js, workload.messages, progress=lambda n: say(f"{phase}: published {n:,}")
    )
    in_stream = await lab.stream_messages()
    if in_stream != workload.total:
        raise PhaseFailed(
            f"{phase}: the stream holds {in_stream} of {workload.total} events; its limits "
            "(64 MiB, discard old) dropped some: use fewer --events"
        )
    say(f"{phase}: {workload.total:,} events in the stream in {prefill_s:.1f} s")
    return prefill_s


async def measure_drain(
    lab: Lab,
    workload: DrainSet,
    *,
    phase: str,
    replica_count: int,
    deadline_s: float,
    log_dir: Path,
) -> DrainResult:
    """Start the replicas on an empty stream, pause their durable, fill, resume, wait."""
    names = lab.names(phase)
    database_url = await lab.fresh_database(names.database)
    await lab.fresh_stream()
    lab.dlq_stream_used(names.dlq_stream)
    env = service_env(
        lab, database_url=database_url, durable=names.durable, dlq_stream=names.dlq_stream
    )
    conn = await asyncpg.connect(plain_dsn(database_url))
    expected = len(workload.keys)
    try:
        async with replicas(replica_count, env=env, log_dir=log_dir, phase=phase) as procs:
            # Ready means the durable exists, created by the service with its own config.
            # Paused, it lets the stream fill and every replica start draining at once.
            for proc in procs:
                await proc.wait_ready()
            await lab.pause_durable(names.durable)
            prefill_s = await _fill(lab, workload, phase)
            last = (time.monotonic(), 0)
            moved = (time.monotonic(), -1)  # when rows + dead letters last changed, and to what

            def alive() -> None:
                for proc in procs:
                    proc.check_alive()

            async def done() -> tuple[bool, str]:
                nonlocal last, moved
                rows = await row_count(conn)
                dlq = await lab.dlq_messages(names.dlq_stream)
                now = time.monotonic()
                if rows + dlq != moved[1]:
                    moved = (now, rows + dlq)
                elif now - moved[0] > STALL_S:
                    raise PhaseFailed(
                        f"{phase}: nothing committed for {STALL_S:.0f} s at {rows:,} rows, "
                        f"{dlq} dead letters; consumer: {await lab.consumer_state(names.durable)}"
                    )
                rate = (rows - last[1]) / (now - last[0]) if now > last[0] else 0.0
                last = (now, rows)
                status = f"{rows:,}/{expected:,} rows, {dlq}/{workload.poison} dead letters"
                return rows >= expected and dlq >= workload.poison, f"{status}, {rate:,.0f} rows/s"

            async with RssSampler(procs) as rss:
                cpu_before = [proc.cpu_seconds() for proc in procs]
                others_before = _other_cpu(lab)
                wall, resumed_at = time.monotonic(), time.time()
                await lab.resume_durable(names.durable)
                await wait_until(done, deadline_s=deadline_s, what=phase, every_s=1.0, watch=alive)
                wall = time.monotonic() - wall
                cpu = [p.cpu_seconds() - b for p, b in zip(procs, cpu_before, strict=True)]
                others = {k: v - others_before[k] for k, v in _other_cpu(lab).items()}
                peaks = rss.peak_bytes()
                samples = [(t, [b / MB for b in each]) for t, each in rss.samples]
        span = await commit_span(conn)
        totals = await exactly_one_row_each(conn, workload.keys)
        dlq = await lab.dlq_messages(names.dlq_stream)
    finally:
        await conn.close()
        await lab.end_phase(names)  # also after a failure: the next phase needs the DLQ subjects
    if dlq != workload.poison:
        raise PhaseFailed(f"{phase}: {dlq} dead letters, expected {workload.poison}")
    say(
        f"{phase}: exact: {totals['rows']:,} rows = distinct valid sessions, "
        f"{dlq} dead letters = poison, {workload.duplicates} duplicates skipped"
    )
    return DrainResult(
        replicas=replica_count,
        events=workload.total,
        rows=totals["rows"],
        duplicates=workload.duplicates,
        dead_letters=dlq,
        prefill_s=round(prefill_s, 2),
        seconds=round(span.seconds, 3),
        events_per_s=round(span.events_per_s(workload.total), 1),
        service_cpu_s=[round(c, 2) for c in cpu],
        events_per_service_cpu_s=round(workload.total / sum(cpu), 1) if sum(cpu) else 0.0,
        other_cpu_s={name: round(seconds, 2) for name, seconds in others.items()},
        wall_s=round(wall, 2),
        first_commit_after_s=round(span.first.timestamp() - resumed_at, 2),
        peak_rss_mb=[round(p / MB, 1) for p in peaks],
        rss_samples_mb=[(t, [round(m, 1) for m in each]) for t, each in samples],
    )
