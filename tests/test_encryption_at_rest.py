"""The service as a process on real NATS, PostgreSQL and OpenBao: details encrypted at rest.

Each row's details go to `encrypted_details`, encrypted with its tenant's data key, and
`details` holds `{}`, as the platform's audit service writes them. The platform's side
(creating keys, decrypting) uses the root token, which the service never holds.
"""

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from nats.js import JetStreamContext

from service.dev.embedded import free_port
from service.dev.openbao import EmbeddedOpenBao
from service.encryption import data_key_name
from tests.integration_support import (
    dead_letters,
    drained,
    eventually,
    isolated,
    publish_event,
    session_event,
)
from tests.platform_replica import (
    add_tenant_with_user_and_device,
    connection,
    migrated_platform_database,
    platform_details,
    read_audit_logs,
)
from tests.service_process import ServiceProcess, run_to_exit


def expected_details(event: dict[str, str], start: str, end: str, seconds: int) -> dict[str, Any]:
    """What the platform's audit service would have put in details for this event."""
    return {
        "session_id": event["session_id"],
        "start_time": start,
        "end_time": end,
        "duration_seconds": seconds,
        "source_ip": event["source_ip"],
        "reason": event["reason"],
    }


def old_consumer_details(event: dict[str, Any]) -> dict[str, Any]:
    """The details the consumer this service replaces passed to the platform's log_action."""
    start, end = event.get("start_time", ""), event.get("end_time", "")
    seconds = int((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())
    return {
        "session_id": event.get("session_id"),
        "start_time": start,
        "end_time": end,
        "duration_seconds": seconds,
        "source_ip": event.get("source_ip"),
        "reason": event.get("reason"),
    }


# session_event()'s times, as the old consumer stored them in details: as sent.
START, END, SECONDS = "2026-03-12T16:07:10-05:00", "2026-03-12T16:42:55-05:00", 2145


def decrypt(openbao: EmbeddedOpenBao, tenant_id: str, ciphertext: str) -> bytes:
    """Decrypt as the platform's audit API does (it holds decrypt; the service does not)."""
    answer = openbao.as_root(
        "POST",
        f"transit/decrypt/{data_key_name(uuid.UUID(tenant_id))}",
        {"ciphertext": ciphertext},
    )
    return base64.b64decode(answer["data"]["plaintext"])


@pytest.fixture(scope="module")
def service_token(openbao: EmbeddedOpenBao, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A token file holding only deploy/openbao/session-audit.hcl, as production's."""
    return openbao.service_token_file(tmp_path_factory.mktemp("bao") / "service.token")


def encrypting(openbao_addr: str, token_file: Path, **env: str) -> dict[str, str]:
    """Environment overrides that turn encryption on for a ServiceProcess."""
    return {"OPENBAO_ADDR": openbao_addr, "OPENBAO_TOKEN_FILE": str(token_file), **env}


async def stored(db: asyncpg.Connection, tenant_id: str) -> list[asyncpg.Record]:
    """A tenant's rows as stored, details as text, oldest session first."""
    return await db.fetch(
        "SELECT details::text AS details, encrypted_details, "
        "(details->>'session_id') AS plain_session FROM audit_logs WHERE tenant_id = $1 "
        "ORDER BY created_at, id",
        uuid.UUID(tenant_id),
    )


async def test_each_tenants_details_are_stored_encrypted_with_its_data_key_and_details_empty(
    tmp_path: Path,
    db: asyncpg.Connection,
    js: JetStreamContext,
    openbao: EmbeddedOpenBao,
    service_token: Path,
) -> None:
    tenants = [str(uuid.uuid4()) for _ in range(3)]
    for tenant in tenants:
        openbao.ensure_data_key(uuid.UUID(tenant))
    events = [
        session_event(tenant_id=tenant, source_ip=source)
        for tenant in tenants
        for source in ("203.0.113.7:51514", "[2001:db8::1]:443")
    ]
    async with isolated(js, "encrypted") as names:
        env = encrypting(openbao.url, service_token, **names.env)
        with ServiceProcess(tmp_path / "service.log", **env) as service:
            service.wait_ready()
            assert service.get("/readyz").json()["checks"]["openbao"] is True
            for event in events:
                await publish_event(js, event)
            await eventually(
                lambda: drained(js, names.durable), within=30, what="every event settled"
            )
            assert await dead_letters(js, names.dlq_stream) == []

    by_session = {}
    for tenant in tenants:
        for row in await stored(db, tenant):
            assert row["details"] == "{}"
            assert row["encrypted_details"].startswith("vault:v1:")
            plaintext = decrypt(openbao, tenant, row["encrypted_details"])
            details = json.loads(plaintext)
            # Serialised as the platform's audit service does: json.dumps, default separators.
            assert plaintext == json.dumps(details).encode()
            by_session[details["session_id"]] = (tenant, details)
    assert len(by_session) == len(events)
    for event in events:
        tenant, details = by_session[event["session_id"]]
        assert tenant == event["tenant_id"]
        assert details == expected_details(event, START, END, SECONDS)
    # Another tenant's key does not open a row: each is encrypted with its own.
    first = (await stored(db, tenants[0]))[0]["encrypted_details"]
    with pytest.raises(RuntimeError, match="HTTP 400"):
        decrypt(openbao, tenants[1], first)


async def test_a_tenant_without_a_data_key_waits_without_plaintext_until_the_platform_creates_it(
    tmp_path: Path,
    db: asyncpg.Connection,
    js: JetStreamContext,
    openbao: EmbeddedOpenBao,
    service_token: Path,
) -> None:
    keyed, unkeyed = str(uuid.uuid4()), str(uuid.uuid4())
    openbao.ensure_data_key(uuid.UUID(keyed))
    waiting = session_event(tenant_id=unkeyed)
    async with isolated(js, "nokey") as names:
        env = encrypting(openbao.url, service_token, **names.env)
        with ServiceProcess(tmp_path / "service.log", **env) as service:
            service.wait_ready()
            await publish_event(js, waiting)
            await publish_event(js, session_event(tenant_id=keyed))

            # The other tenant's row is not held up by the one whose key is missing.
            async def keyed_row() -> bool:
                return len(await stored(db, keyed)) == 1

            await eventually(keyed_row, within=20, what="the keyed tenant's row")

            await exported(
                service,
                'session_audit_retries_total{cause="encryption_unavailable"} 2.0',
                what="two retries of the waiting event",
            )
            assert await stored(db, unkeyed) == []
            assert await dead_letters(js, names.dlq_stream) == []
            metrics = service.get("/metrics").text
            assert 'session_audit_encryption_errors_total{kind="key_not_found"}' in metrics
            # Transit answers: the service is ready; the missing key is the platform's to make.
            assert service.get("/readyz").status_code == 200
            assert data_key_name(uuid.UUID(unkeyed)) in service.log()

            openbao.ensure_data_key(uuid.UUID(unkeyed))
            await eventually(
                lambda: drained(js, names.durable), within=45, what="the waiting event written"
            )
    [row] = await stored(db, unkeyed)
    assert row["details"] == "{}"
    assert json.loads(decrypt(openbao, unkeyed, row["encrypted_details"])) == expected_details(
        waiting, START, END, SECONDS
    )


@pytest.fixture
def private_openbao(tmp_path: Path) -> Iterator[EmbeddedOpenBao]:
    """An OpenBao of the test's own on a fixed port, so that it can stop and come back."""
    server = EmbeddedOpenBao(tmp_path / "bao", port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_openbao_outage_holds_events_and_readyz_names_openbao_until_it_returns(
    tmp_path: Path, db: asyncpg.Connection, js: JetStreamContext, private_openbao: EmbeddedOpenBao
) -> None:
    bao = private_openbao
    tenant = str(uuid.uuid4())
    bao.ensure_data_key(uuid.UUID(tenant))
    token = bao.service_token_file(tmp_path / "service.token")
    events = [session_event(tenant_id=tenant) for _ in range(5)]
    async with isolated(js, "baodown") as names:
        env = encrypting(bao.url, token, **names.env)
        with ServiceProcess(tmp_path / "service.log", **env) as service:
            service.wait_ready()
            bao.stop()

            def names_openbao() -> bool:
                answer = service.get("/readyz")
                return answer.status_code == 503 and answer.json()["down"] == ["openbao"]

            await eventually(_async(names_openbao), within=10, what="/readyz to name openbao")
            for event in events:
                await publish_event(js, event)

            await exported(
                service,
                'session_audit_encryption_errors_total{kind="unreachable"}',
                what="a failed encryption",
            )
            assert await stored(db, tenant) == []
            assert await dead_letters(js, names.dlq_stream) == []

            bao.start()  # the same data and port: sealed again, unsealed by start()
            await eventually(
                lambda: drained(js, names.durable), within=60, what="the held events written"
            )
            assert service.get("/readyz").status_code == 200
    rows = await stored(db, tenant)
    assert len(rows) == len(events)
    assert {
        json.loads(decrypt(bao, tenant, r["encrypted_details"]))["session_id"] for r in rows
    } == {e["session_id"] for e in events}


async def test_plaintext_fallback_is_an_opt_in_that_stores_the_details_as_the_platform_would(
    tmp_path: Path,
    db: asyncpg.Connection,
    js: JetStreamContext,
    openbao: EmbeddedOpenBao,
    service_token: Path,
) -> None:
    unkeyed = str(uuid.uuid4())
    event = session_event(tenant_id=unkeyed)
    async with isolated(js, "fallback") as names:
        env = encrypting(openbao.url, service_token, OPENBAO_PLAINTEXT_FALLBACK="true", **names.env)
        with ServiceProcess(tmp_path / "service.log", **env) as service:
            service.wait_ready()
            await publish_event(js, event)
            await eventually(lambda: drained(js, names.durable), within=20, what="the row")
            metrics = service.get("/metrics").text
    [row] = await stored(db, unkeyed)
    assert row["encrypted_details"] is None
    assert json.loads(row["details"]) == expected_details(event, START, END, SECONDS)
    assert "session_audit_plaintext_fallbacks_total 1.0" in metrics
    assert "OPENBAO_PLAINTEXT_FALLBACK" in service.log()


def test_a_token_that_may_create_keys_stops_start_up_with_one_line_naming_the_setting(
    openbao: EmbeddedOpenBao, tmp_path: Path
) -> None:
    root = tmp_path / "root.token"
    root.write_text(openbao.root_token + "\n")
    root.chmod(0o600)

    result = run_to_exit(OPENBAO_ADDR=openbao.url, OPENBAO_TOKEN_FILE=str(root))

    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "OPENBAO_TOKEN_FILE" in line]
    assert len(errors) == 1, result.stderr
    assert "may create Transit keys" in errors[0]
    assert "Traceback" not in result.stderr
    assert openbao.root_token not in result.stderr + result.stdout


def test_a_token_without_the_policy_stops_start_up_naming_the_setting(
    openbao: EmbeddedOpenBao, tmp_path: Path
) -> None:
    # A policy of its own name: the run's other tests keep the service's policy as it is.
    openbao.as_root("PUT", "sys/policies/acl/unrelated", {"policy": 'path "sys/*" {}'})
    created = openbao.as_root(
        "POST", "auth/token/create-orphan", {"policies": ["unrelated"], "no_default_policy": True}
    )
    token = tmp_path / "other.token"
    token.write_text(created["auth"]["client_token"] + "\n")

    result = run_to_exit(OPENBAO_ADDR=openbao.url, OPENBAO_TOKEN_FILE=str(token))

    assert result.returncode != 0
    assert "configuration error: OPENBAO_TOKEN_FILE: " in result.stderr
    assert "permission denied" in result.stderr
    assert "deploy/openbao/session-audit.hcl" in result.stderr
    assert "Traceback" not in result.stderr


async def test_the_platforms_audit_api_reads_our_encrypted_rows_as_its_own(
    tmp_path: Path,
    database_url: str,
    js: JetStreamContext,
    openbao: EmbeddedOpenBao,
    service_token: Path,
) -> None:
    async with migrated_platform_database(database_url) as platform:
        async with connection(platform.owner_url) as conn:
            tenant = await add_tenant_with_user_and_device(conn)
        openbao.ensure_data_key(uuid.UUID(tenant.id))
        common = {"tenant_id": tenant.id, "device_id": tenant.device_id}
        events = [
            session_event(**common, user_id=tenant.user_id),
            session_event(
                **common,
                user_id="",
                start_time="2026-03-12T21:07:10Z",
                end_time="2026-03-12T21:07:11.5Z",
                source_ip="[2001:db8::1]:443",
                reason="",
            ),
            session_event(**common, user_id=tenant.user_id, source_ip="unknown"),
        ]
        async with isolated(js, "platform") as names:
            env = encrypting(
                openbao.url, service_token, DATABASE_URL=platform.writer_url, **names.env
            )
            with ServiceProcess(tmp_path / "service.log", **env) as service:
                service.wait_ready()
                for event in events:
                    await publish_event(js, event)
                await eventually(lambda: drained(js, names.durable), within=20, what="the rows")

        page = await read_audit_logs(platform.owner_url, tenant.id)

    assert page.total == len(events)
    shown = {}
    for item in page.items:
        assert item["details"] == {}
        assert item["encrypted_details"].startswith("vault:v1:")
        assert item["device_name"] == tenant.hostname
        assert item["action"] == "ssh_session_end"
        details = platform_details(openbao, tenant.id, item)
        shown[details["session_id"]] = (details, item)
    for event in events:
        details, item = shown[event["session_id"]]
        assert details == old_consumer_details(event)
        assert item["user_email"] == (tenant.email if event["user_id"] else None)
    assert [shown[e["session_id"]][1]["ip_address"] for e in events] == [
        "203.0.113.7",
        "2001:db8::1",
        None,
    ]


async def exported(service: ServiceProcess, sample: str, *, what: str) -> None:
    """Wait until the service's /metrics holds the sample line (or its start)."""
    await eventually(_async(lambda: sample in service.get("/metrics").text), within=20, what=what)


def _async(check: Any) -> Any:
    """A synchronous check (HTTP to the service) as eventually() awaits it."""

    async def run() -> bool:
        try:
            return bool(check())
        except httpx.TransportError:
            return False

    return run
