"""What an operator reads off a running service: metrics, logs, the docs page's assets."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import asyncpg
import pytest
from nats.js import JetStreamContext
from sqlalchemy.engine import make_url

from tests.service_process import ServiceProcess, wait_for
from tests.session_events import session_end, subject_of, wire

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def test_metrics_count_rows_and_dead_letters_without_personal_labels(
    tmp_path: Path, db: asyncpg.Connection, js: JetStreamContext
) -> None:
    good, bad = session_end(), session_end()
    with ServiceProcess(tmp_path / "service.log", DURABLE=f"metrics-{tmp_path.name}") as service:
        service.wait_ready()
        before = service.get("/metrics").text
        rows_before = _sample(before, "session_audit_rows_inserted_total")
        await js.publish(subject_of(good), wire(good))
        await js.publish(subject_of(bad), b"{not json")

        def counted() -> bool:
            text = service.get("/metrics").text
            return (
                _sample(text, "session_audit_rows_inserted_total") >= rows_before + 1
                and 'session_audit_dead_letters_total{reason="invalid_json"}' in text
            )

        wait_for(counted, timeout=20, what="the row and the dead letter to be counted")
        text = service.get("/metrics").text
        assert service.get("/metrics").headers["content-type"].startswith("text/plain")

    assert (
        await db.fetchval(
            "SELECT count(*) FROM audit_logs WHERE details->>'session_id' = $1", good["session_id"]
        )
        == 1
    )
    assert _sample(text, 'session_audit_dead_letters_total{reason="invalid_json"}') >= 1
    assert "session_audit_consumer_pending " in text
    assert "session_audit_consumer_ack_pending " in text
    assert "session_audit_commit_seconds_count " in text
    assert 'faststream_received_messages_total{app_name="session-audit"' in text
    assert 'handler="audit.session.end.*"' in text
    # No session id, tenant, device or address may become a label value.
    assert UUID.findall(text) == []
    assert "203.0.113.7" not in text


async def test_json_logs_carry_the_dead_letter_fields_and_no_password(
    tmp_path: Path, writer_database_url: str, nats_url: str, js: JetStreamContext
) -> None:
    # The embedded servers trust every login, so passwords in the URLs still connect.
    with_password = (
        make_url(writer_database_url)
        .set(password="hunter2-secret")
        .render_as_string(hide_password=False)
    )
    nats_with_password = nats_url.replace("nats://", "nats://audit:nats-secret@", 1)
    bad = session_end(start_time="2026-03-12T16:07:10")
    log = tmp_path / "service.log"
    with ServiceProcess(
        log,
        DURABLE=f"logs-{tmp_path.name}",
        LOG_FORMAT="json",
        DATABASE_URL=with_password,
        NATS_URL=nats_with_password,
    ) as service:
        service.wait_ready()
        exposed = "".join(
            service.get(path).text
            for path in ("/readyz", "/healthz", "/metrics", "/docs/asyncapi.json", "/docs/asyncapi")
        )
        await js.publish(subject_of(bad), wire(bad))
        wait_for(lambda: bad["session_id"] in service.log(), timeout=20, what="the log line")

    lines = [line for line in log.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    dead = [e for e in entries if e.get("session_id") == bad["session_id"]]
    assert len(dead) == 1
    assert dead[0]["reason"] == "invalid_field"
    assert dead[0]["subject"] == subject_of(bad)
    assert dead[0]["level"] == "WARNING"
    for secret in ("hunter2-secret", "nats-secret"):
        assert secret not in log.read_text()
        assert secret not in exposed


def test_docs_page_loads_its_renderer_from_the_service_not_a_cdn(tmp_path: Path) -> None:
    with ServiceProcess(tmp_path / "service.log", DURABLE=f"docs-{tmp_path.name}") as service:
        service.wait_ready()
        page = service.get("/docs/asyncapi").text
        script = service.get("/docs/asyncapi/static/index.js")
        style = service.get("/docs/asyncapi/static/default.min.css")

    assert re.findall(r"(?:src|href)=\"([^\"]+)\"", page) == [
        "/docs/asyncapi/static/default.min.css",
        "/docs/asyncapi/static/index.js",
    ]
    assert "http://" not in page
    assert "https://" not in page
    assert script.status_code == 200
    assert "AsyncApiStandalone" in script.text
    assert style.status_code == 200
    assert style.headers["content-type"].startswith("text/css")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_docs_page_renders_channel_and_schema_in_a_browser_with_the_network_closed(
    tmp_path: Path,
) -> None:
    assert CHROMIUM is not None
    with ServiceProcess(tmp_path / "service.log", DURABLE=f"browser-{tmp_path.name}") as service:
        service.wait_ready()
        command = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-sync",
            "--disable-component-update", f"--user-data-dir={tmp_path / 'chromium'}",
            # Every host name fails to resolve: only the service itself can answer.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=15000", "--dump-dom", service.base_url + "/docs/asyncapi",
        ]  # fmt: skip
        dom = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout

    # What the renderer drew into its div, not the schema in the script that feeds it.
    rendered = dom.split('<div id="asyncapi">', 1)[1].split("<script", 1)[0]
    assert 'class="aui-root"' in rendered
    assert "audit.session.end.{session_id}" in rendered
    assert "audit.dlq.session.end.{session_id}" in rendered
    assert "An SSH session through the relay has ended." in rendered
    assert all(field in rendered for field in ('"session_id"', '"source_ip"', '"end_time"'))
