"""`make bench` keeps working: a tiny run end to end (figures are measured, never asserted)."""

import json
import os
import subprocess
from pathlib import Path

from service.config import Settings

PROJECT = Path(__file__).resolve().parents[1]
SETTINGS = {name.upper() for name in Settings.model_fields}


def test_quick_benchmark_runs_every_phase_with_exact_totals(tmp_path: Path) -> None:
    output = tmp_path / "quick.json"
    # On servers of its own: the benchmark recreates the stream of whatever it is given.
    env = {k: v for k, v in os.environ.items() if k.upper() not in SETTINGS}
    done = subprocess.run(
        # As the README shows it: `make bench ARGS=--quick`.
        ["make", "bench", f"ARGS=--quick --output {output}"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(output.read_text())
    assert not report["failures"]
    assert set(report["phases"]) == {
        "ceiling",
        "baseline",
        "drain",
        "encryption",
        "trail",
        "replicas",
        "latency",
    }
    assert {target["name"] for target in report["targets"]} >= {
        "drain vs ceiling",
        "drain vs baseline",
        "p99 at 1,000/s",
        "p99 at 100/s",
        "peak RSS (drain)",
        "two replicas vs one",
        "enc. drain vs Transit, 1 tenant",
        "enc. drain vs Transit, 50 tenants",
        "trail cost on the write path",
        "trail verify",
    }
    assert "ceiling" in done.stdout
