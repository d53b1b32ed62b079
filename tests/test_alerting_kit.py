"""The alert rules and the Grafana dashboard in deploy/ query what the service really exports."""

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from nats.js import JetStreamContext
from prometheus_client.parser import text_string_to_metric_families

from tests.integration_support import isolated
from tests.service_process import ServiceProcess, wait_for
from tests.session_events import session_end, subject_of, wire

PROJECT = Path(__file__).resolve().parents[1]
PROMETHEUS = PROJECT / "deploy" / "prometheus"
DASHBOARD = PROJECT / "deploy" / "grafana" / "session-audit.json"
RUNBOOK_URL = "https://github.com/staack/session-audit/blob/main/README.md#runbook"
PROMTOOL = shutil.which("promtool")

# What a time-series name becomes in PromQL, by the type /metrics declares for its family.
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
MATCHERS = re.compile(r"\{[^{}]*\}")
LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
METRIC_NAME = re.compile(r"(?<![\w:])session_audit_[a-z_]+(?![\w:])")


def metric_names(expr: str) -> set[str]:
    """The session_audit_* series names a PromQL expression selects."""
    # Label values, label matchers and grouping lists may hold any text; only what is
    # left can name a series.
    bare = LABEL_LISTS.sub("", MATCHERS.sub("", QUOTED.sub('""', expr)))
    return set(METRIC_NAME.findall(bare))


def exported_names(exposition: str) -> set[str]:
    """Every series name /metrics declares, samples or not, e.g. `x_total`, `y_bucket`."""
    return {
        family.name + suffix
        for family in text_string_to_metric_families(exposition)
        for suffix in SERIES_SUFFIXES.get(family.type, ())
    }


def _samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def _alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _dashboard_targets() -> list[dict[str, Any]]:
    return [target for panel in _dashboard()["panels"] for target in panel.get("targets", [])]


def test_metric_names_are_read_from_selectors_not_from_labels_functions_or_strings() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(session_audit_commit_seconds_bucket"
        '{job=~"session_audit_job", le!="session_audit_nope"}[5m])))'
        " / on (session_audit_label) group_left up"
        " + max_over_time(session_audit_consumer_pending[1m]) and absent(up)"
    )
    assert metric_names(expr) == {
        "session_audit_commit_seconds_bucket",
        "session_audit_consumer_pending",
    }


async def test_every_metric_in_the_alerts_and_the_dashboard_is_exported_by_the_service(
    tmp_path: Path, js: JetStreamContext
) -> None:
    good = session_end()
    # Its own dead-letter stream: dead-letter streams share their subjects, so one left
    # behind would stop every later test's service from creating its own.
    async with isolated(js, "alerting") as names:
        with ServiceProcess(tmp_path / "service.log", **names.env) as service:
            service.wait_ready()
            # A labelled counter has no sample until its first increment; these make some.
            await js.publish(subject_of(good), wire(good))
            await js.publish(subject_of(session_end()), b"{not json")

            def counted() -> bool:
                samples = _samples(service.get("/metrics").text)
                return samples.get(("session_audit_rows_inserted_total", ()), 0) >= 1 and (
                    ("session_audit_dead_letters_total", (("reason", "invalid_json"),)) in samples
                )

            wait_for(counted, timeout=20, what="the row and the dead letter to be counted")
            exported = exported_names(service.get("/metrics").text)

    rule_exprs = [rule["expr"] for rule in _alert_rules()]
    panel_exprs = [target["expr"] for target in _dashboard_targets()]
    # Every expression but those on `up` names a metric: an empty set here would mean the
    # parser, not the files, went wrong.
    assert all(metric_names(expr) for expr in rule_exprs if "up{" not in expr)
    assert all(metric_names(expr) for expr in panel_exprs)
    used = {name for expr in rule_exprs + panel_exprs for name in metric_names(expr)}
    assert used - exported == set()


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian's prometheus; .ci/run has it)")
def test_alert_rules_are_valid_and_their_promtool_unit_tests_pass() -> None:
    assert PROMTOOL is not None
    for command in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts.test.yaml"]):
        result = subprocess.run(
            [PROMTOOL, *command],
            cwd=PROMETHEUS,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, (
            f"promtool {' '.join(command)}:\n{result.stdout}{result.stderr}"
        )


def test_every_alert_has_a_severity_and_points_at_the_readme_runbook() -> None:
    rules = _alert_rules()
    assert {rule["alert"] for rule in rules} >= {
        "SessionAuditDown",
        "SessionAuditAbsent",
        "SessionAuditLagGrowing",
        "SessionAuditLagHigh",
        "SessionAuditDeadLetters",
        "SessionAuditDatabaseUnavailable",
        "SessionAuditEncryptionUnavailable",
        "SessionAuditNoCommitWhilePending",
        "SessionAuditCommittedEventsOld",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"], rule["alert"]
        assert annotations["description"], rule["alert"]
        assert annotations["runbook_url"] == RUNBOOK_URL, rule["alert"]
    # GitHub makes the #runbook anchor from this heading.
    assert re.search(r"^#+ Runbook$", (PROJECT / "README.md").read_text(), re.M)


def test_dashboard_is_importable_with_a_prometheus_datasource_variable() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == "session-audit"
    assert {(i["name"], i["type"], i["pluginId"]) for i in dashboard["__inputs"]} == {
        ("DS_PROMETHEUS", "datasource", "prometheus")
    }
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"

    panels = dashboard["panels"]
    uses_variable = {"type": "prometheus", "uid": "${datasource}"}
    assert all(panel["datasource"] == uses_variable for panel in panels)
    assert all(target["datasource"] == uses_variable for target in _dashboard_targets())
    assert all(target["expr"] and target["refId"] for target in _dashboard_targets())
    assert len({panel["id"] for panel in panels}) == len(panels)

    exprs = {panel["title"]: " ".join(t["expr"] for t in panel["targets"]) for panel in panels}
    assert set(exprs) >= {
        "Throughput",
        "Lag",
        "Dead letters by reason",
        "Retries by cause",
        "Commit time",
        "Batch size",
        "Newest committed event age",
    }
    assert "session_audit_rows_inserted_total" in exprs["Throughput"]
    assert "session_audit_duplicates_skipped_total" in exprs["Throughput"]
    assert "session_audit_consumer_pending" in exprs["Lag"]
    assert "session_audit_consumer_ack_pending" in exprs["Lag"]
    assert "by (reason)" in exprs["Dead letters by reason"]
    assert "by (cause)" in exprs["Retries by cause"]
    for title, metric in (
        ("Commit time", "session_audit_commit_seconds_bucket"),
        ("Batch size", "session_audit_batch_size_bucket"),
    ):
        for quantile in ("0.5", "0.95", "0.99"):
            assert f"histogram_quantile({quantile}, " in exprs[title]
        assert metric in exprs[title]
    assert "session_audit_newest_committed_event_age_seconds" in exprs["Newest committed event age"]
