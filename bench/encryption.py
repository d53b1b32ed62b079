"""Encryption at rest: Transit's own limit, and the service draining with it on, per tenant mix."""

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.drain import DrainResult, measure_drain
from bench.probes import say
from bench.servers import Lab, PhaseFailed, plain_dsn
from bench.service_proc import tree_cpu_seconds
from bench.transit import encrypt_rate
from bench.workload import DrainSet, drain_set
from service.config import Settings
from service.events import Rejected, parse_session_end

TENANT_MIXES = (1, 50)  # one tenant owning everything, and a platform's worth of them
GOAL = 0.7  # the encrypted drain against what Transit alone can encrypt


@dataclass(frozen=True)
class MixResult:
    """One tenant mix: Transit alone, then the service with encryption on."""

    tenants: int
    transit_items: int
    transit_batch: int  # items per encrypt_details call, one call after another
    transit_items_per_s: float
    # CPU per item while Transit alone was measured: which side sets its limit.
    transit_client_cpu_us_per_item: float  # the bench process, i.e. the service's client
    transit_openbao_cpu_us_per_item: float
    drain: DrainResult  # encryption on
    drain_over_transit: float
    encrypted_rows: int  # rows holding vault:v1: ciphertext and details = '{}'
    tenants_in_rows: int


@dataclass(frozen=True)
class EncryptionResult:
    """Every tenant mix, on one embedded OpenBao."""

    openbao_version: str
    goal: float
    mixes: list[MixResult]


@contextlib.contextmanager
def _inherited(env: dict[str, str]) -> Iterator[None]:
    """env in this process's environment while the block runs, as it was afterwards.

    measure_drain tells the replicas the ingest settings only; they take everything else
    from this process's environment, and so the OpenBao settings too.
    """
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _plaintexts(workload: DrainSet) -> list[tuple[uuid.UUID, bytes]]:
    """What the service encrypts of the set: every valid event's details, duplicates too."""
    limit = Settings().max_payload_bytes
    items = []
    for subject, payload in workload.messages:
        event = parse_session_end(subject, payload, max_bytes=limit)
        if not isinstance(event, Rejected):
            # Serialised as details_at_rest does it, so that both encrypt the same bytes.
            items.append((event.tenant_id, json.dumps(event.details()).encode()))
    return items


async def _check_rows(lab: Lab, database: str, *, expected: int, tenants: int) -> tuple[int, int]:
    """Every row encrypted, of the mix's tenants: (encrypted rows, tenants); then drop it."""
    conn = await asyncpg.connect(plain_dsn(lab.database_url(database)))
    try:
        row = await conn.fetchrow(
            """
            SELECT count(*) AS rows,
                   count(*) FILTER (WHERE encrypted_details LIKE 'vault:v1:%'
                                      AND details = '{}'::jsonb) AS encrypted,
                   count(DISTINCT tenant_id) AS tenants
            FROM audit_logs
            """
        )
    finally:
        await conn.close()
        await lab.drop_database(database)
    assert row is not None
    if not row["rows"] == row["encrypted"] == expected or row["tenants"] != tenants:
        raise PhaseFailed(
            f"expected {expected:,} rows, every one encrypted, of {tenants} tenants; got "
            f"{row['rows']:,} rows, {row['encrypted']:,} encrypted, of {row['tenants']} tenants"
        )
    return int(row["encrypted"]), int(row["tenants"])


async def _transit_limit(
    lab: Lab, token: str, work: list[tuple[uuid.UUID, bytes]], batch: int
) -> tuple[float, float, float]:
    """Items/s, and the CPU µs per item of the client (this process) and of OpenBao."""
    assert lab.servers.openbao is not None
    bao_pid = lab.servers.server_pids["bao"]
    client_before, bao_before = time.process_time(), tree_cpu_seconds(bao_pid)
    limit = await encrypt_rate(lab.servers.openbao.url, token, work, batch)
    client_us = 1e6 * (time.process_time() - client_before) / len(work)
    bao_us = 1e6 * (tree_cpu_seconds(bao_pid) - bao_before) / len(work)
    return limit, client_us, bao_us


async def _mix(
    lab: Lab, tenants: int, *, events: int, token_file: Path, deadline_s: float, log_dir: Path
) -> MixResult:
    """Transit alone, then the service, on a drain set of this many tenants' events."""
    bao = lab.servers.openbao
    assert bao is not None
    phase = f"encryption_{tenants}"
    tenant_ids = [uuid.uuid4() for _ in range(tenants)]
    for tenant_id in tenant_ids:  # the platform's job, done before the clock starts
        await asyncio.to_thread(bao.ensure_data_key, tenant_id)
    workload = drain_set(events, tenants=[str(t) for t in tenant_ids])

    work = _plaintexts(workload)
    batch = Settings().batch_size  # what the service fetches, and so encrypts, at a time
    say(f"{phase}: Transit alone, {len(work):,} items in batches of {batch}")
    # The service's own token: its policy is evaluated on every request, as in the drain.
    token = (await asyncio.to_thread(token_file.read_text)).strip()
    limit, client_us, bao_us = await _transit_limit(lab, token, work, batch)
    say(
        f"{phase}: Transit limit {limit:,.0f} items/s; CPU per item: client {client_us:.0f} µs, "
        f"OpenBao {bao_us:.0f} µs"
    )

    database = lab.keep_database(phase)
    say(f"{phase}: the service with encryption on, {workload.total:,} events")
    with _inherited({"OPENBAO_ADDR": bao.url, "OPENBAO_TOKEN_FILE": str(token_file)}):
        drain = await measure_drain(
            lab, workload, phase=phase, replica_count=1, deadline_s=deadline_s, log_dir=log_dir
        )
    pending, unacked = await lab.unsettled(lab.names_of(phase).durable)
    if pending or unacked:
        raise PhaseFailed(f"{phase}: {pending} events undelivered, {unacked} unacked at the end")
    encrypted, seen = await _check_rows(lab, database, expected=len(workload.keys), tenants=tenants)
    ratio = drain.events_per_s / limit
    say(
        f"{phase}: {drain.events_per_s:,.0f} events/s encrypted, {encrypted:,} rows vault:v1: "
        f"of {seen} tenant(s); {ratio:.2f} of Transit's limit"
    )
    return MixResult(
        tenants=tenants,
        transit_items=len(work),
        transit_batch=batch,
        transit_items_per_s=round(limit, 1),
        transit_client_cpu_us_per_item=round(client_us, 1),
        transit_openbao_cpu_us_per_item=round(bao_us, 1),
        drain=drain,
        drain_over_transit=round(ratio, 3),
        encrypted_rows=encrypted,
        tenants_in_rows=seen,
    )


async def measure_encryption(
    lab: Lab, *, events: int, deadline_s: float, log_dir: Path
) -> EncryptionResult:
    """For each tenant mix: Transit's limit, then the service's drain with encryption on."""
    bao = lab.servers.openbao
    if bao is None:
        raise PhaseFailed("encryption: the run started no OpenBao")
    token_file = await asyncio.to_thread(bao.service_token_file, bao.workdir / "service.token")
    status = await asyncio.to_thread(bao.as_root, "GET", "sys/seal-status")
    mixes = [
        await _mix(
            lab, n, events=events, token_file=token_file, deadline_s=deadline_s, log_dir=log_dir
        )
        for n in TENANT_MIXES
    ]
    return EncryptionResult(openbao_version=str(status.get("version")), goal=GOAL, mixes=mixes)
