"""`python -m bench`: one run, every phase on fresh state, one table and one JSON report."""

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import machine, report
from bench.baseline import BaselineResult, measure_baseline
from bench.ceiling import CeilingResult, measure_ceiling
from bench.drain import DrainResult, measure_drain
from bench.encryption import EncryptionResult, measure_encryption
from bench.latency import HIGH_RATE, LOW_RATE, LatencyResult, measure_latency
from bench.probes import say
from bench.servers import Lab, PhaseFailed, Servers, lab, servers
from bench.trail import TrailResult, measure_trail
from bench.workload import DrainSet, Message, drain_set, prefill, valid_set
from service.config import Settings

# encryption right after drain: the same service, on and off, on the machine as it then is.
PHASES = ("ceiling", "baseline", "drain", "encryption", "trail", "replicas", "latency")


@dataclass(frozen=True)
class Options:
    """What to measure, and how much."""

    events: int
    baseline_events: int
    high_rate: float
    high_seconds: float
    low_rate: float
    low_seconds: float
    phases: tuple[str, ...]
    quick: bool
    output: Path
    data_dir: Path | None

    def deadline_s(self, events: int, slowest_rate: float) -> float:
        """A generous deadline for handling events at no less than slowest_rate."""
        return 60.0 + events / slowest_rate


def parse(argv: list[str] | None) -> Options:
    """Options from the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--events",
        type=int,
        help="events in the drain set and in each encryption mix's (default 100000)",
    )
    parser.add_argument("--baseline-events", type=int, help="events for the baseline (5000)")
    parser.add_argument("--quick", action="store_true", help="tiny run for a CI smoke test")
    parser.add_argument("--high-seconds", type=float, help="seconds at 1,000 events/s (20)")
    parser.add_argument("--low-seconds", type=float, help="seconds at 100 events/s (30)")
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("bench-results/latest.json"),
        help="JSON report (default bench-results/latest.json); service logs go beside it",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="keep servers' data and service logs here (default: temp)"
    )
    parser.add_argument(
        "--reset-stream",
        action="store_true",
        help="allow deleting and recreating DEVICE_EVENTS on the NATS server in NATS_URL",
    )
    args = parser.parse_args(argv)
    if os.environ.get("OPENBAO_ADDR"):
        # The replicas inherit this environment: every drain would then encrypt.
        parser.error(
            "OPENBAO_ADDR is set: drain, replicas and latency would run with encryption on; "
            "unset it (the encryption phase starts an OpenBao of its own)"
        )
    if os.environ.get("NATS_URL") and not args.reset_stream:
        parser.error(
            "NATS_URL is set: every phase deletes and recreates its stream DEVICE_EVENTS; "
            "pass --reset-stream if that is what you want"
        )
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    if unknown := set(phases) - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    quick = args.quick
    return Options(
        events=args.events or (2_000 if quick else 100_000),
        baseline_events=args.baseline_events or (300 if quick else 5_000),
        high_rate=HIGH_RATE,
        high_seconds=args.high_seconds or (3.0 if quick else 20.0),
        low_rate=LOW_RATE,
        low_seconds=args.low_seconds or (3.0 if quick else 30.0),
        phases=phases,
        quick=quick,
        output=args.output,
        data_dir=args.data_dir,
    )


@dataclass
class Results:
    """What the phases measured; None for a phase that did not run or failed."""

    ceiling: CeilingResult | None = None
    baseline: BaselineResult | None = None
    drain: DrainResult | None = None
    encryption: EncryptionResult | None = None
    trail: TrailResult | None = None
    replicas: DrainResult | None = None
    latency: LatencyResult | None = None
    failures: dict[str, str] = field(default_factory=dict)


async def _prefill_only(the_lab: Lab, messages: list[Message]) -> None:
    seconds = await prefill(the_lab.js, messages)
    say(f"  {len(messages):,} events in the stream in {seconds:.1f} s")


async def _ceiling(the_lab: Lab, workload: DrainSet, deadline_s: float) -> CeilingResult:
    say("ceiling: bare JetStream pull-and-ack")
    await the_lab.fresh_stream()
    await _prefill_only(the_lab, workload.messages)
    result = await measure_ceiling(
        the_lab.servers.nats_url,
        durable=the_lab.names("ceiling").durable,
        total=workload.total,
        batch=Settings().batch_size,  # what the service fetches at a time
        deadline_s=deadline_s,
    )
    say(f"ceiling: {result.events_per_s:,.0f} events/s")
    return result


async def _baseline(the_lab: Lab, options: Options) -> BaselineResult:
    say(f"baseline: seed-style consumer, {options.baseline_events:,} events")
    names = the_lab.names("baseline")
    database_url = await the_lab.fresh_database(names.database)
    try:
        await the_lab.fresh_stream()
        await _prefill_only(the_lab, valid_set(options.baseline_events).messages)
        result = await measure_baseline(
            the_lab.servers.nats_url,
            database_url=database_url,
            durable=names.durable,
            total=options.baseline_events,
            deadline_s=options.deadline_s(options.baseline_events, 50.0),
        )
    finally:
        await the_lab.drop_database(names.database)
    say(f"baseline: {result.events_per_s:,.0f} events/s")
    return result


async def _drain(
    the_lab: Lab, workload: DrainSet, *, phase: str, count: int, deadline_s: float, log_dir: Path
) -> DrainResult:
    say(f"{phase}: the service, {count} replica(s), {workload.total:,} events")
    result = await measure_drain(
        the_lab, workload, phase=phase, replica_count=count, deadline_s=deadline_s, log_dir=log_dir
    )
    say(f"{phase}: {result.events_per_s:,.0f} events/s, peak RSS {result.peak_rss_mb} MB")
    return result


async def _trail(the_lab: Lab, options: Options) -> TrailResult:
    rows = 2_000 if options.quick else 50_000
    verify_rows = 2_000 if options.quick else 200_000
    say(f"trail: the write path with and without seals, {rows:,} rows each; then verify")
    name = the_lab.names("trail").database
    url = await the_lab.fresh_database(name)
    try:
        result = await measure_trail(url, rows=rows, verify_rows=verify_rows)
    finally:
        await the_lab.drop_database(name)
    say(
        f"trail: sealed {result.sealed_rows_per_s:,.0f} rows/s, bare "
        f"{result.bare_rows_per_s:,.0f} rows/s (cost {result.cost:.1%}); verify "
        f"{result.verify_rows_per_s:,.0f} rows/s"
    )
    return result


async def run_phases(the_lab: Lab, options: Options, log_dir: Path) -> Results:
    """Every requested phase, in order, each on fresh state; a failed phase is noted."""
    workload = drain_set(options.events)
    deadline = options.deadline_s(options.events, 250.0)
    loads = [(options.high_rate, options.high_seconds), (options.low_rate, options.low_seconds)]
    steps: dict[str, Callable[[], Awaitable[object]]] = {
        "ceiling": lambda: _ceiling(the_lab, workload, deadline),
        "baseline": lambda: _baseline(the_lab, options),
        "drain": lambda: _drain(
            the_lab, workload, phase="drain", count=1, deadline_s=deadline, log_dir=log_dir
        ),
        "encryption": lambda: measure_encryption(
            the_lab, events=options.events, deadline_s=deadline, log_dir=log_dir
        ),
        "trail": lambda: _trail(the_lab, options),
        "replicas": lambda: _drain(
            the_lab, workload, phase="replicas", count=2, deadline_s=deadline, log_dir=log_dir
        ),
        "latency": lambda: measure_latency(the_lab, loads=loads, deadline_s=120.0, log_dir=log_dir),
    }
    results = Results()
    for phase in PHASES:
        if phase in options.phases:
            try:
                setattr(results, phase, await steps[phase]())
            except PhaseFailed as failure:
                results.failures[phase] = str(failure)
                say(f"{phase} FAILED: {failure}")
    return results


async def run(found: Servers, options: Options, log_dir: Path) -> dict[str, Any]:
    """Measure and build the report."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    async with lab(found) as the_lab:
        the_machine = await machine.describe(the_lab)
        results = await run_phases(the_lab, options, log_dir)
    ratios, targets = report.targets_and_ratios(
        results.ceiling,
        results.baseline,
        results.drain,
        results.replicas,
        results.latency,
        results.encryption,
        results.trail,
        failed=set(results.failures),
    )
    the_machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "started_at": started,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": report.command_line(),
        "options": report.as_dict(options),
        "machine": the_machine,
        "service": machine.service_context(),
        "phases": {
            name: report.as_dict(getattr(results, name))
            for name in PHASES
            if getattr(results, name) is not None
        },
        "failures": results.failures,
        "ratios": ratios,
        "targets": [report.as_dict(t) for t in targets],
        "notes": report.NOTES,
        "output": str(options.output),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every phase completed with exact totals, else 1."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    options = parse(argv)
    try:
        with servers(options.data_dir, openbao="encryption" in options.phases) as found:
            log_dir = (options.data_dir or options.output.parent) / "logs"
            the_report = asyncio.run(run(found, options, log_dir))
    except PhaseFailed as failure:
        print(f"bench failed: {failure}", file=sys.stderr)  # noqa: T201
        return 1
    report.write(the_report, options.output)
    print(report.table(the_report))  # noqa: T201
    return 1 if the_report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
