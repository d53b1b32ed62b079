"""Publish-to-commit latency at steady offered loads, and the service's memory over that run."""

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from bench.drain import MB, service_env
from bench.probes import row_count, say, wait_until
from bench.servers import Lab, PhaseFailed, plain_dsn
from bench.service_proc import RssSampler, replicas
from bench.workload import publish_at_rate

HIGH_RATE, LOW_RATE = 1000.0, 100.0  # events/s: issue 4's two offered loads


@dataclass(frozen=True)
class LoadResult:
    """Latency of one offered load, in milliseconds."""

    rate: float
    seconds: float
    events: int
    basis: str  # what "committed" means: the commit itself, or the transaction start
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    p99_ms_transaction_start: float  # from ingested_at (now()), always available


@dataclass(frozen=True)
class LatencyResult:
    """Both loads, run back to back on one replica, and its memory meanwhile."""

    loads: list[LoadResult]
    ready_s: float
    rss_mb_start: float
    rss_mb_middle: float
    rss_mb_end: float
    peak_rss_mb: float
    rss_samples_mb: list[tuple[float, float]]


def percentile(sorted_values: list[float], share: float) -> float:
    """Nearest-rank percentile of values sorted ascending."""
    return sorted_values[max(0, math.ceil(share * len(sorted_values)) - 1)]


async def _committed_at(
    conn: asyncpg.Connection, *, commit_timestamps: bool
) -> dict[str, tuple[datetime, datetime]]:
    """idempotency key -> (commit time or ingested_at, ingested_at)."""
    commit = "pg_xact_commit_timestamp(xmin)" if commit_timestamps else "ingested_at"
    rows = await conn.fetch(f"SELECT idempotency_key, {commit} AS c, ingested_at FROM audit_logs")  # noqa: S608
    return {row["idempotency_key"]: (row["c"], row["ingested_at"]) for row in rows}


def _load_result(
    rate: float,
    seconds: float,
    sent: dict[str, float],
    committed: dict[str, tuple[datetime, datetime]],
    *,
    commit_timestamps: bool,
) -> LoadResult:
    missing = [key for key in sent if key not in committed]
    if missing:
        raise PhaseFailed(f"latency {rate:.0f}/s: {len(missing)} sessions have no row")
    ms = sorted(1000 * (committed[k][0].timestamp() - t) for k, t in sent.items())
    start_ms = sorted(1000 * (committed[k][1].timestamp() - t) for k, t in sent.items())
    return LoadResult(
        rate=rate,
        seconds=seconds,
        events=len(sent),
        basis="commit timestamp" if commit_timestamps else "ingested_at (transaction start)",
        p50_ms=round(percentile(ms, 0.50), 1),
        p95_ms=round(percentile(ms, 0.95), 1),
        p99_ms=round(percentile(ms, 0.99), 1),
        max_ms=round(ms[-1], 1),
        p99_ms_transaction_start=round(percentile(start_ms, 0.99), 1),
    )


async def measure_latency(
    lab: Lab, *, loads: list[tuple[float, float]], deadline_s: float, log_dir: Path
) -> LatencyResult:
    """For each (rate, seconds): publish at rate and time every event from publish to its row."""
    names = lab.names("latency")
    database_url = await lab.fresh_database(names.database)
    await lab.fresh_stream()
    lab.dlq_stream_used(names.dlq_stream)
    env = service_env(
        lab, database_url=database_url, durable=names.durable, dlq_stream=names.dlq_stream
    )
    commit_timestamps = lab.servers.commit_timestamps
    conn = await asyncpg.connect(plain_dsn(database_url))
    results: list[LoadResult] = []
    published = 0
    try:
        async with replicas(1, env=env, log_dir=log_dir, phase="latency") as procs:
            ready_s = await procs[0].wait_ready()
            async with RssSampler(procs, interval_s=1.0) as rss:
                for seed, (rate, seconds) in enumerate(loads):
                    say(f"latency: {rate:,.0f} events/s for {seconds:.0f} s")
                    sent = await publish_at_rate(
                        lab.js,
                        rate=rate,
                        seconds=seconds,
                        seed=seed,
                        progress=lambda n: say(f"latency: published {n:,}"),
                    )
                    published += len(sent)

                    async def caught_up(target: int = published) -> tuple[bool, str]:
                        rows = await row_count(conn)
                        return rows >= target, f"{rows:,}/{target:,} rows"

                    await wait_until(
                        caught_up, deadline_s=deadline_s, what="latency", watch=procs[0].check_alive
                    )
                    committed = await _committed_at(conn, commit_timestamps=commit_timestamps)
                    result = _load_result(
                        rate, seconds, sent, committed, commit_timestamps=commit_timestamps
                    )
                    say(
                        f"latency at {rate:,.0f}/s: p50 {result.p50_ms} ms, p95 {result.p95_ms}"
                        f" ms, p99 {result.p99_ms} ms"
                    )
                    results.append(result)
                peak = rss.peak_bytes()[0]
                samples = [(t, each[0] / MB) for t, each in rss.samples]
    finally:
        await conn.close()
        await lab.end_phase(names)  # also after a failure: the next phase needs the DLQ subjects
    if not samples:
        raise PhaseFailed("latency: no memory samples")
    return LatencyResult(
        loads=results,
        ready_s=round(ready_s, 2),
        rss_mb_start=round(samples[0][1], 1),
        rss_mb_middle=round(samples[len(samples) // 2][1], 1),
        rss_mb_end=round(samples[-1][1], 1),
        peak_rss_mb=round(peak / MB, 1),
        rss_samples_mb=[(t, round(mb, 1)) for t, mb in samples],
    )
