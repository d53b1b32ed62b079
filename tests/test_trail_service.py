"""The trail of rows the service wrote as a process, checked by `trail verify` as typed.

Real nats-server and PostgreSQL of the module's own (tests/faults/support.py), two service
replicas, a SIGKILL and a dead-letter replay; then each tampering an owner of the database
could do, made and undone, with the verifier's exit status and findings read from its
output, as an auditor reads them.
"""

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.faults.support import DLQ_STREAM, FaultStack, fault_stack, until
from tests.faults.traffic import STREAM, Publisher, event, expected, mixed_stream, refused

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
async def written(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FaultStack]:
    """A stack whose trail holds the rows of busy, faulty traffic, checked intact once."""
    root = tmp_path_factory.mktemp("trail-service")
    rng = random.Random(11)
    messages = mixed_stream(rng, 4_000, duplicate_share=0.02, poison_share=0.01)
    tenant = str(uuid.uuid4())
    blocked = event(rng, tenant_id=tenant)
    messages.insert(1_000, refused(blocked))
    async with fault_stack(root) as stack:
        async with stack.owner() as conn:
            await conn.execute(
                "ALTER TABLE audit_logs ADD CONSTRAINT trail_test_refused "
                f"CHECK (tenant_id <> '{tenant}'::uuid)"
            )
        first = await stack.start_service("replica-1")
        await stack.start_service("replica-2")
        publishing = asyncio.create_task(Publisher(stack.js).publish(messages))
        await until(lambda: stack.has_rows(800), within=60, what="rows to be written")
        await stack.stop_service(first, signal.SIGKILL)  # mid-drain, its batch unsettled
        await stack.start_service("replica-1-again")
        want = expected(messages, await publishing)
        await stack.verify_exact(want, within=240)

        # The cause fixed, the dead letter replayed: its row joins the trail too.
        async with stack.owner() as conn:
            await conn.execute("ALTER TABLE audit_logs DROP CONSTRAINT trail_test_refused")
        replay = await dlq(stack, "replay", "--reason", "database_refused")
        assert replay.returncode == 0, replay.stdout + replay.stderr

        async def replayed() -> bool:
            return await stack.row_count() == len(want.sessions) + 1

        await until(replayed, within=60, what="the replayed event's row")
        await stack.trail_intact()
        yield stack


async def dlq(stack: FaultStack, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m service dlq ARGS` on the stack, as an operator runs it."""
    env = os.environ | {"NATS_URL": stack.nats.url, "DLQ_STREAM": DLQ_STREAM, "STREAM": STREAM}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", "dlq", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def findings(stack: FaultStack) -> tuple[int, list[dict[str, Any]]]:
    """trail verify --json: its exit status and its findings."""
    result = await stack.trail_verify("--json")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)["findings"]


async def a_row(conn: asyncpg.Connection, offset: int = 0, *, row_id: Any = None) -> asyncpg.Record:
    """One of the service's rows (the offset-th by id, or the one with row_id), with its
    session id."""
    row = await conn.fetchrow(
        "SELECT *, split_part(idempotency_key, ':', 2) AS session FROM audit_logs "
        "WHERE action = 'ssh_session_end' AND ($2::uuid IS NULL OR id = $2) "
        "ORDER BY id OFFSET $1 LIMIT 1",
        offset,
        row_id,
    )
    assert row is not None
    return row


async def intact(stack: FaultStack) -> None:
    """Exit 0 and nothing found."""
    code, found = await findings(stack)
    assert (code, found) == (0, []), found


async def test_busy_faulty_traffic_then_a_replay_leave_every_row_sealed_once(
    written: FaultStack,
) -> None:
    result = await written.trail_verify()
    assert result.returncode == 0, result.stdout + result.stderr
    async with written.owner() as conn:
        rows = await conn.fetchval("SELECT count(*) FROM audit_logs")
        sealed = await conn.fetchval("SELECT sum(cardinality(row_ids)) FROM audit_seals")
        seqs = await conn.fetch("SELECT seq FROM audit_seals ORDER BY seq")
    assert sealed == rows  # every row in exactly one seal; a duplicate sealed nothing
    assert [r["seq"] for r in seqs] == list(range(1, len(seqs) + 1))  # one gapless chain
    assert f"{rows:,} service rows, none unsealed" in result.stdout


async def test_a_changed_row_is_found_naming_its_session_and_is_intact_once_undone(
    written: FaultStack,
) -> None:
    async with written.owner() as conn:
        row = await a_row(conn)
        await conn.execute(
            'UPDATE audit_logs SET details = details || \'{"reason": "forged"}\' WHERE id = $1',
            row["id"],
        )
        try:
            code, found = await findings(written)
        finally:
            await conn.execute(
                "UPDATE audit_logs SET details = $2::jsonb WHERE id = $1", row["id"], row["details"]
            )
    assert code == 1
    assert [(f["kind"], f["session_id"], f["row_id"]) for f in found] == [
        ("changed", row["session"], str(row["id"]))
    ]
    await intact(written)


async def test_a_deleted_row_is_found_naming_its_session_and_is_intact_once_restored(
    written: FaultStack,
) -> None:
    async with written.owner() as conn:
        row = await a_row(conn, 5)
        columns = [name for name in row.keys() if name != "session"]  # noqa: SIM118 (a Record iterates values)
        await conn.execute("DELETE FROM audit_logs WHERE id = $1", row["id"])
        try:
            code, found = await findings(written)
        finally:
            await conn.execute(
                f"INSERT INTO audit_logs ({', '.join(columns)}) "
                f"VALUES ({', '.join(f'${n + 1}' for n in range(len(columns)))})",
                *[row[name] for name in columns],
            )
    assert code == 1
    assert [(f["kind"], f["session_id"]) for f in found] == [("deleted", row["session"])]
    await intact(written)


async def test_a_forged_copy_under_a_new_session_is_found_as_unsealed(
    written: FaultStack,
) -> None:
    forged = str(uuid.uuid4())
    async with written.owner() as conn:
        # A row of the newest seal: a copy of a row written while the first seal was being
        # made keeps an ingested_at from before the trail began, which the verifier counts
        # as pre-trail, not as forged (docs/trail.md).
        later = await conn.fetchval("SELECT row_ids[1] FROM audit_seals ORDER BY seq DESC LIMIT 1")
        row = await a_row(conn, row_id=later)
        new_id = await conn.fetchval(
            "INSERT INTO audit_logs (tenant_id, user_id, action, resource_type, resource_id, "
            "device_id, details, encrypted_details, ip_address, created_at, occurred_at, "
            "ingested_at, idempotency_key) "
            "SELECT tenant_id, user_id, action, resource_type, resource_id, device_id, "
            "jsonb_set(details, '{session_id}', to_jsonb($2::text)), encrypted_details, "
            "ip_address, created_at, occurred_at, ingested_at, 'ssh_session_end:' || $2 "
            "FROM audit_logs WHERE id = $1 RETURNING id",
            row["id"],
            forged,
        )
        try:
            code, found = await findings(written)
        finally:
            await conn.execute("DELETE FROM audit_logs WHERE id = $1", new_id)
    assert code == 1
    assert [(f["kind"], f["session_id"], f["row_id"]) for f in found] == [
        ("unsealed", forged, str(new_id))
    ]
    await intact(written)


async def test_a_changed_seal_fails_its_signature_naming_its_sessions(
    written: FaultStack,
) -> None:
    async with written.owner() as conn:
        seal = await conn.fetchrow("SELECT * FROM audit_seals WHERE seq = 2")
        assert seal is not None
        flipped = bytes([seal["signature"][0] ^ 1]) + bytes(seal["signature"][1:])
        await conn.execute("UPDATE audit_seals SET signature = $1 WHERE seq = 2", flipped)
        try:
            code, found = await findings(written)
        finally:
            await conn.execute(
                "UPDATE audit_seals SET signature = $1 WHERE seq = 2", seal["signature"]
            )
    assert code == 1
    assert {f["kind"] for f in found} == {"bad_signature"}
    assert {f["seq"] for f in found} == {2}
    assert {f["session_id"] for f in found} == {str(s) for s in seal["session_ids"]}
    await intact(written)


async def test_the_newest_seals_deleted_with_their_rows_are_found_through_the_anchor(
    written: FaultStack,
) -> None:
    async with written.owner() as conn:
        last = await conn.fetchval("SELECT max(seq) FROM audit_seals")
        tail = await conn.fetch("SELECT * FROM audit_seals WHERE seq >= $1 ORDER BY seq", last - 1)
        ids = [row_id for seal in tail for row_id in seal["row_ids"]]
        rows = await conn.fetch("SELECT * FROM audit_logs WHERE id = ANY($1)", ids)
        async with conn.transaction():
            await conn.execute("DELETE FROM audit_logs WHERE id = ANY($1)", ids)
            await conn.execute("DELETE FROM audit_seals WHERE seq >= $1", last - 1)
        try:
            code, found = await findings(written)
        finally:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "audit_seals", records=[tuple(s.values()) for s in tail],
                    columns=list(tail[0].keys()),
                )  # fmt: skip
                await conn.copy_records_to_table(
                    "audit_logs", records=[tuple(r.values()) for r in rows],
                    columns=list(rows[0].keys()),
                )  # fmt: skip
    assert code == 1
    kinds = {f["kind"] for f in found}
    assert kinds == {"missing_against_anchor"}, found
    assert {f["seq"] for f in found} == {last - 1, last}
    named = {f["session_id"] for f in found if f["session_id"]}
    assert named == {str(s) for seal in tail for s in seal["session_ids"]}
    await intact(written)


async def test_rows_others_write_are_outside_the_trail(written: FaultStack) -> None:
    async with written.owner() as conn:
        other = await conn.fetchval(
            "INSERT INTO audit_logs (tenant_id, action, details) "
            "VALUES (gen_random_uuid(), 'login', '{}') RETURNING id"
        )
        try:
            await intact(written)
        finally:
            await conn.execute("DELETE FROM audit_logs WHERE id = $1", other)
