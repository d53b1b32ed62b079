"""The run's report: the ratios, the verdict on each target, a table and a JSON file."""

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.baseline import BaselineResult
from bench.ceiling import CeilingResult
from bench.drain import DrainResult
from bench.encryption import GOAL, TENANT_MIXES, EncryptionResult
from bench.latency import HIGH_RATE, LOW_RATE, LatencyResult
from bench.trail import TrailResult

NOTES = [
    "Drain events/s: from the first to the last committed transaction, by the rows' "
    "ingested_at (now(), the transaction's start), counting the events after the first "
    "transaction; the ceiling is timed the same way (first batch acked to last ack flushed).",
    "Latency: publish (wall clock, just before js.publish) to the row's commit timestamp "
    "(track_commit_timestamp, on the embedded server) or, without it, to ingested_at, which "
    "is the transaction's start and so slightly optimistic; one machine, one clock.",
    "Baseline: distinct valid events only; the seed consumer naks poison without delay and "
    "would loop on it forever. It runs in the bench process, the service as its own process.",
    "Encryption: only the encryption phase runs the service with OPENBAO_ADDR (an embedded "
    "OpenBao, Transit, the service's least-privilege token); drain, replicas and latency run "
    "with encryption off. Transit's limit is the service's TransitClient.encrypt_details alone "
    "in the bench process, one batch (BATCH_SIZE items) after another, over the very details "
    "the encrypted drain then writes, with the same token; in both, the mix's tenants take "
    "turns event by event.",
    "All servers, the service and the bench share this machine's CPUs; other work on it "
    "(see load_average) makes the figures noisy.",
]


@dataclass(frozen=True)
class Target:
    """One goal of issue 4, and whether this run met it."""

    name: str
    goal: str
    value: float | None
    met: bool | None  # None: the phases it needs did not run


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def targets_and_ratios(
    ceiling: CeilingResult | None,
    baseline: BaselineResult | None,
    drain: DrainResult | None,
    two: DrainResult | None,
    latency: LatencyResult | None,
    encryption: EncryptionResult | None = None,
    trail: TrailResult | None = None,
    *,
    failed: set[str],
) -> tuple[dict[str, float | None], list[Target]]:
    """The ratios between phases and the verdict on each target (missed if its phase failed)."""

    def check(name: str, goal: str, value: float | None, ok: bool, *needs: str) -> Target:
        if value is None:
            return Target(name, goal, None, False if failed & set(needs) else None)
        return Target(name, goal, value, ok)

    rate = drain.events_per_s if drain else None
    ratios = {
        "service_over_ceiling": _ratio(rate, ceiling.events_per_s if ceiling else None),
        "service_over_baseline": _ratio(rate, baseline.events_per_s if baseline else None),
        "two_replicas_over_one": _ratio(two.events_per_s if two else None, rate),
    }
    on_over_transit: dict[int, float] = {}
    for mix in encryption.mixes if encryption else []:
        on_over_transit[mix.tenants] = mix.drain_over_transit
        ratios[f"encrypted_over_transit_{mix.tenants}_tenants"] = mix.drain_over_transit
        ratios[f"encrypted_over_unencrypted_{mix.tenants}_tenants"] = _ratio(
            mix.drain.events_per_s, rate
        )
    over_ceiling = ratios["service_over_ceiling"] or 0.0
    over_baseline = ratios["service_over_baseline"] or 0.0
    two_over_one = ratios["two_replicas_over_one"] or 0.0
    p99 = {load.rate: load.p99_ms for load in latency.loads} if latency else {}
    peak = max(drain.peak_rss_mb) if drain else None
    targets = [
        check(
            "drain vs ceiling",
            ">= 0.75",
            ratios["service_over_ceiling"],
            over_ceiling >= 0.75,
            "drain",
            "ceiling",
        ),
        check(
            "drain vs baseline",
            ">= 20x",
            ratios["service_over_baseline"],
            over_baseline >= 20,
            "drain",
            "baseline",
        ),
        *(
            check(f"p99 at {r:,.0f}/s", "<= 50 ms", p99.get(r), p99.get(r, 0) <= 50, "latency")
            for r in (HIGH_RATE, LOW_RATE)
        ),
        check("peak RSS (drain)", "<= 200 MB", peak, (peak or 0) <= 200, "drain"),
        check(
            "two replicas vs one",
            ">= 1.0",
            ratios["two_replicas_over_one"],
            two_over_one >= 1.0,
            "drain",
            "replicas",
        ),
        *(
            check(
                f"enc. drain vs Transit, {n} {_tenants(n)}",
                f">= {GOAL}",
                on_over_transit.get(n),
                on_over_transit.get(n, 0.0) >= GOAL,
                "encryption",
            )
            for n in TENANT_MIXES
        ),
    ]
    if trail is not None or "trail" in failed:
        targets += [
            check(
                "trail cost on the write path",
                "<= 10 %",
                None if trail is None else round(trail.cost * 100, 1),
                trail is not None and trail.cost <= 0.10,
                "trail",
            ),
            check(
                "trail verify",
                ">= 50,000 rows/s",
                None if trail is None else trail.verify_rows_per_s,
                trail is not None and trail.verify_rows_per_s >= 50_000,
                "trail",
            ),
        ]
    return ratios, targets


def _tenants(n: int) -> str:
    return "tenant" if n == 1 else "tenants"


def _line(label: str, value: str, note: str = "") -> str:
    return f"  {label:<38} {value:>14}  {note}".rstrip()


def _drain_lines(label: str, d: dict[str, Any]) -> list[str]:
    peaks = "/".join(f"{p:.0f}" for p in d["peak_rss_mb"])
    cpu = "/".join(f"{c:.1f}" for c in d["service_cpu_s"])
    others = ", ".join(f"{name} {s:.1f}" for name, s in d["other_cpu_s"].items())
    return [
        _line(
            label,
            f"{d['events_per_s']:,.0f} ev/s",
            f"{d['events']:,} events in {d['seconds']:.1f} s: {d['rows']:,} rows, "
            f"{d['dead_letters']} DLQ, {d['duplicates']} dups (exact); first row "
            f"{d['first_commit_after_s']:.1f} s after the start",
        ),
        _line(
            "",
            "",
            f"peak RSS {peaks} MB; CPU s in {d['wall_s']:.1f} s: service {cpu}, {others}",
        ),
    ]


def _encryption_lines(enc: dict[str, Any], unencrypted: dict[str, Any] | None) -> list[str]:
    lines = [
        f"encryption ON (OpenBao {enc['openbao_version']} embedded, Transit, the service's token):"
    ]
    for mix in enc["mixes"]:
        n = mix["tenants"]
        lines.append(
            _line(
                f"Transit limit, {n} {_tenants(n)}",
                f"{mix['transit_items_per_s']:,.0f} items/s",
                f"the service's client alone, {mix['transit_items']:,} items in batches of "
                f"{mix['transit_batch']}, one after another; CPU per item: client "
                f"{mix['transit_client_cpu_us_per_item']:.0f} µs, OpenBao "
                f"{mix['transit_openbao_cpu_us_per_item']:.0f} µs",
            )
        )
        lines.extend(_drain_lines(f"drain, 1 replica, enc. ON, {n} {_tenants(n)}", mix["drain"]))
        on = mix["drain"]
        cost = f"service CPU {_us_per_event(on)} µs/event"
        if unencrypted:
            cost = (
                f"{on['events_per_s'] / unencrypted['events_per_s']:.2f} of OFF's ev/s; "
                f"service CPU {_us_per_event(on)} µs/event, OFF {_us_per_event(unencrypted)}"
            )
        verdict = "met" if mix["drain_over_transit"] >= enc["goal"] else "MISSED"
        lines.append(
            _line(
                f"drain ON / Transit, {n} {_tenants(n)}",
                f"{mix['drain_over_transit']:.3f}",
                f"{verdict} (goal >= {enc['goal']}); {cost}",
            )
        )
        lines.append(
            _line(
                "",
                "",
                f"checked: {mix['encrypted_rows']:,} rows vault:v1: with details {{}}, of "
                f"{mix['tenants_in_rows']} {_tenants(mix['tenants_in_rows'])}; consumer empty",
            )
        )
    return lines


def _us_per_event(drain: dict[str, Any]) -> str:
    per_s = drain["events_per_service_cpu_s"]
    return f"{1e6 / per_s:.0f}" if per_s else "-"


def _latency_lines(lat: dict[str, Any]) -> list[str]:
    lines = []
    for load in lat["loads"]:
        lines.append(
            _line(
                f"latency at {load['rate']:,.0f}/s for {load['seconds']:.0f} s",
                f"p99 {load['p99_ms']:.1f} ms",
                f"p50 {load['p50_ms']:.1f}, p95 {load['p95_ms']:.1f}, max {load['max_ms']:.1f}"
                f" ms; to {load['basis']}; p99 to tx start {load['p99_ms_transaction_start']:.1f}",
            )
        )
    lines.append(
        _line(
            "RSS during the latency runs",
            f"{lat['rss_mb_end']:.0f} MB",
            f"start {lat['rss_mb_start']:.0f}, middle {lat['rss_mb_middle']:.0f}, end "
            f"{lat['rss_mb_end']:.0f}, peak {lat['peak_rss_mb']:.0f} MB",
        )
    )
    return lines


def table(report: dict[str, Any]) -> str:
    """The report as a table for a person."""
    phases = report["phases"]
    machine_ = report["machine"]
    lines = [
        f"session-audit bench, {report['started_at']}: {machine_['cpu_count']} CPU "
        f"({machine_['cpu_model']}), load {machine_['load_average_at_start'][0]} at start"
    ]
    if c := phases.get("ceiling"):
        note = (
            f"{c['events']:,} events, batch {c['batch']}, {c['seconds']:.1f} s, "
            f"client CPU {c['client_cpu_s']:.1f} s"
        )
        lines.append(_line("ceiling: pull + ack, no DB", f"{c['events_per_s']:,.0f} ev/s", note))
    if b := phases.get("baseline"):
        note = f"{b['events']:,} events, {b['seconds']:.1f} s"
        lines.append(_line("baseline: seed-style", f"{b['events_per_s']:,.0f} ev/s", note))
    if d := phases.get("drain"):
        lines.extend(_drain_lines("drain, 1 replica, encryption OFF", d))
    if enc := phases.get("encryption"):
        lines.extend(_encryption_lines(enc, phases.get("drain")))
    if t := phases.get("trail"):
        lines.append(
            _line(
                "trail: write path, sealed",
                f"{t['sealed_rows_per_s']:,.0f} rows/s",
                f"CPU {t['sealed_cpu_us_per_row']} µs/row; without seals "
                f"{t['bare_rows_per_s']:,.0f} rows/s, {t['bare_cpu_us_per_row']} µs/row; "
                f"cost {t['cost']:.1%}",
            )
        )
        lines.append(
            _line(
                "trail: verify",
                f"{t['verify_rows_per_s']:,.0f} rows/s",
                f"{t['verify_rows']:,} sealed rows, signatures and links, no anchor",
            )
        )
    if d := phases.get("replicas"):
        lines.extend(_drain_lines("drain, 2 replicas, encryption OFF", d))
    if lat := phases.get("latency"):
        lines.extend(_latency_lines(lat))
    lines.append("targets:")
    for target in report["targets"]:
        verdict = {True: "met", False: "MISSED", None: "not run"}[target["met"]]
        if target["met"] is False and target["value"] is None:
            verdict = "FAILED"
        value = "-" if target["value"] is None else f"{target['value']:,.3g}"
        lines.append(f"  {verdict:<8} {target['name']:<34} {value:>8}  (goal {target['goal']})")
    for phase, why in report["failures"].items():
        lines.append(f"FAILED {phase}: {why.splitlines()[0]}")
    if report["options"]["quick"]:
        lines.append("quick run: a smoke test of the harness; too few events for real figures")
    lines.append(f"report: {report['output']}")
    return "\n".join(lines)


def write(report: dict[str, Any], path: Path) -> None:
    """Write the report as JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def as_dict(result: object | None) -> dict[str, Any] | None:
    """A phase result as plain data."""
    return asdict(result) if result is not None else None  # type: ignore[call-overload]


def command_line() -> str:
    """How this run was started."""
    return " ".join([os.path.basename(sys.executable), "-m", "bench", *sys.argv[1:]])
