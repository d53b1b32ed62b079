"""Seals on the real PostgreSQL and nats-server: the chain, the anchor, and what the verifier finds.

Rows are written by the service's own INSERT as its writer login and sealed by append_seal
as that login; the verifier reads as a login in audit_verifier. Each tampering is done as
the database's owner, then undone: the trail must say which session it touched, and then
be intact again.
"""

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.dev.embedded import free_port
from service.events import SessionEndEvent
from service.repository import ACTION, create_engine, insert_session_ends
from service.trail.anchor import (
    SUBJECT_PREFIX,
    anchor_pending,
    ensure_anchor_stream,
    start_anchoring,
)
from service.trail.hashing import RowImage, row_hash, seal_hash
from service.trail.keys import Signer
from service.trail.seals import Seal, SealedRow, append_seal
from service.trail.store import NotReadCommitted
from tests.trail_support import (
    TrailDatabase,
    anchor_settings,
    connection,
    empty,
    events,
    insert_as_the_service,
    named,
    new_signer,
    seal,
    stored_rows,
    trail_database,
    verify,
    write_and_seal,
)

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
async def trail_db(database_url: str) -> AsyncIterator[TrailDatabase]:
    """The module's own migrated database and logins."""
    async with trail_database(database_url) as created:
        yield created


@pytest.fixture
async def trail(trail_db: TrailDatabase) -> TrailDatabase:
    """The module's database with no rows and no seals."""
    await empty(trail_db)
    return trail_db


@pytest.fixture
async def anchor_stream(js: JetStreamContext) -> AsyncIterator[str]:
    """A fresh anchor stream name, the stream deleted after the test."""
    name = f"AUDIT_SEALS_TEST_{uuid.uuid4().hex[:8]}"
    yield name
    with suppress(NotFoundError):
        await js.delete_stream(name)


async def anchor(trail: TrailDatabase, js: JetStreamContext, stream: str) -> int:
    """Create the anchor stream if absent and publish what is not anchored; how many."""
    await ensure_anchor_stream(js, anchor_settings(stream))
    engine = create_engine(trail.writer_url)
    try:
        return await anchor_pending(js, engine, stream=stream)
    finally:
        await engine.dispose()


def session_ids(batch: list[SessionEndEvent]) -> set[uuid.UUID]:
    """The sessions of a batch of events."""
    return {event.session_id for event in batch}


# -- the chain ------------------------------------------------------------------------------


async def test_each_batch_appends_one_seal_chained_to_the_one_before(trail: TrailDatabase) -> None:
    signer = new_signer()

    seals = [(await write_and_seal(trail, 3, signer))[0] for _ in range(3)]

    assert [s.seq for s in seals] == [1, 2, 3]
    assert seals[0].prev_hash == bytes(32)
    assert [s.prev_hash for s in seals[1:]] == [s.seal_hash for s in seals[:-1]]
    async with connection(trail.owner_url) as owner:
        stored = await owner.fetch("SELECT seq, seal_hash, key_id FROM audit_seals ORDER BY seq")
    assert [(r["seq"], r["seal_hash"], r["key_id"]) for r in stored] == [
        (s.seq, s.seal_hash, signer.key_id) for s in seals
    ]
    assert (await verify(trail, signer.key_id, anchor=None)).intact


async def test_a_batch_that_wrote_no_rows_gets_no_seal(trail: TrailDatabase) -> None:
    assert await seal(trail, [], new_signer()) is None

    async with connection(trail.owner_url) as owner:
        assert await owner.fetchval("SELECT count(*) FROM audit_seals") == 0


async def test_the_image_the_writer_builds_from_its_insert_hashes_as_the_stored_row(
    trail: TrailDatabase,
) -> None:
    # What the writer will seal in its transaction: the rows it passed to the INSERT and
    # what RETURNING gave back (InsertResult.written: id, ip_address, ingested_at, read
    # from the statement's input, which needs no SELECT grant on audit_logs). Imported
    # here: that API arrives with the writer's at-rest encryption.
    from service.repository import RESOURCE_TYPE, SessionRow, plaintext_row

    plain = [plaintext_row(e) for e in events(2)]
    encrypted = [
        SessionRow(e, "{}", "vault:v1:8SDd3WHDOjf7mq69CyCqYjBXAiQQAVZRkFM13ok481zoCmHnSeDX9vyf7w==")
        for e in events(1, user_id=None, source_ip="[2001:db8::7]:22")
    ]
    batch = {row.event.session_id: row for row in plain + encrypted}
    engine = create_engine(trail.writer_url)
    try:
        result = await insert_session_ends(engine, rows=list(batch.values()))
    finally:
        await engine.dispose()

    built = {}
    for written in result.written:
        event = batch[written.session_id].event
        built[written.id] = RowImage(
            id=written.id,
            tenant_id=event.tenant_id,
            user_id=event.user_id,
            action=ACTION,
            resource_type=RESOURCE_TYPE,
            resource_id=str(event.device_id),
            device_id=event.device_id,
            details=json.loads(batch[written.session_id].details),
            encrypted_details=batch[written.session_id].encrypted_details,
            ip_address=written.ip_address,
            created_at=event.end_time,
            occurred_at=event.end_time,
            ingested_at=written.ingested_at,
            idempotency_key=f"{ACTION}:{event.session_id}",
        )
    stored = {row.image.id: row.image for row in await stored_rows(trail, list(batch))}
    assert len(built) == len(stored) == 3
    assert {i: row_hash(image) for i, image in built.items()} == {
        i: row_hash(image) for i, image in stored.items()
    }


async def test_two_writers_sealing_at_once_keep_one_gapless_chain(trail: TrailDatabase) -> None:
    signer = new_signer()
    batch = events(40)
    await insert_as_the_service(trail, batch)
    rows = await stored_rows(trail, [e.session_id for e in batch])
    engines = [create_engine(trail.writer_url) for _ in range(2)]

    async def sealer(engine: AsyncEngine, part: list[SealedRow], ready: asyncio.Barrier) -> Seal:
        async with engine.begin() as conn:
            await conn.execute(sa.text("SELECT 1"))  # both transactions are open ...
            await ready.wait()  # ... before either appends
            sealed = await append_seal(conn, rows=part, signer=signer)
            # Held past the append: the other writer must wait for this commit, not read
            # the same head and take the same seq.
            await asyncio.sleep(0.02)
        assert sealed is not None
        return sealed

    try:
        seals: list[Seal] = []
        for round_ in range(10):
            ready = asyncio.Barrier(2)
            pair = rows[round_ * 4 : round_ * 4 + 4]
            seals += await asyncio.gather(
                sealer(engines[0], pair[:2], ready), sealer(engines[1], pair[2:], ready)
            )
    finally:
        for engine in engines:
            await engine.dispose()

    assert sorted(s.seq for s in seals) == list(range(1, 21))
    report = await verify(trail, signer.key_id)
    assert report.intact, report.findings
    assert (report.seals, report.rows) == (20, 40)


async def test_append_seal_refuses_a_snapshot_older_than_its_lock(trail: TrailDatabase) -> None:
    batch = events(1)
    await insert_as_the_service(trail, batch)
    rows = await stored_rows(trail, [e.session_id for e in batch])
    engine = create_engine(trail.writer_url)
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                with pytest.raises(NotReadCommitted, match="READ COMMITTED"):
                    await append_seal(conn, rows=rows, signer=None)
    finally:
        await engine.dispose()


# -- anchoring ------------------------------------------------------------------------------


async def test_anchoring_publishes_each_seal_once_in_order_from_several_replicas(
    trail: TrailDatabase, js: JetStreamContext, anchor_stream: str
) -> None:
    for _ in range(5):
        await write_and_seal(trail, 2, None)

    counts = await asyncio.gather(*(anchor(trail, js, anchor_stream) for _ in range(3)))
    again = await anchor(trail, js, anchor_stream)

    assert sum(counts) >= 5
    assert again == 0
    info = await js.stream_info(anchor_stream)
    assert info.state.messages == 5  # the same seal from two replicas is stored once
    subjects = [(await js.get_msg(anchor_stream, n)).subject for n in range(1, 6)]
    assert subjects == [f"{SUBJECT_PREFIX}.{anchor_stream}.{seq}" for seq in range(1, 6)]
    assert info.config.deny_delete
    assert info.config.deny_purge


async def test_background_anchoring_anchors_a_seal_when_notified(
    trail: TrailDatabase, js: JetStreamContext, anchor_stream: str
) -> None:
    engine = create_engine(trail.writer_url)
    anchoring = start_anchoring(lambda: js, engine, anchor_settings(anchor_stream))
    try:
        await write_and_seal(trail, 1, None)
        anchoring.notify()
        for _ in range(100):
            with suppress(NotFoundError):
                if (await js.stream_info(anchor_stream)).state.messages == 1:
                    break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the seal was not anchored within 5 s")
    finally:
        await anchoring.stop()
        await engine.dispose()


# -- what the verifier finds ----------------------------------------------------------------


@dataclass
class Sealed:
    """A trail of three signed, anchored seals of three rows each."""

    db: TrailDatabase
    signer: Signer
    js: JetStreamContext
    stream: str
    batches: list[list[SessionEndEvent]]

    async def verify(self, **options: Any) -> Any:
        """The verifier's report, against the anchor."""
        return await verify(self.db, self.signer.key_id, anchor=(self.js, self.stream), **options)

    async def row_of(self, session_id: uuid.UUID) -> asyncpg.Record:
        """The stored row of a session."""
        async with connection(self.db.owner_url) as owner:
            row = await owner.fetchrow(
                "SELECT * FROM audit_logs WHERE idempotency_key = $1",
                f"ssh_session_end:{session_id}",
            )
        assert row is not None
        return row


@pytest.fixture
async def sealed(trail: TrailDatabase, js: JetStreamContext, anchor_stream: str) -> Sealed:
    signer = new_signer()
    batches = [(await write_and_seal(trail, 3, signer))[1] for _ in range(3)]
    assert await anchor(trail, js, anchor_stream) == 3
    trail_ = Sealed(trail, signer, js, anchor_stream, batches)
    report = await trail_.verify()
    assert report.intact, report.findings
    return trail_


async def test_a_changed_row_is_found_and_named_by_its_session(sealed: Sealed) -> None:
    session = sealed.batches[1][0].session_id
    row = await sealed.row_of(session)
    async with connection(sealed.db.owner_url) as owner:
        await owner.execute(
            'UPDATE audit_logs SET details = details || \'{"reason": "normal", "x": 1}\' '
            "WHERE id = $1",
            row["id"],
        )
        report = await sealed.verify()
        await owner.execute(
            "UPDATE audit_logs SET details = $2::jsonb WHERE id = $1", row["id"], row["details"]
        )

    assert named(report) == {("changed", 2, session)}
    assert [f.row_id for f in report.findings] == [row["id"]]
    assert (await sealed.verify()).intact


async def test_a_deleted_row_is_found_and_named_by_its_session(sealed: Sealed) -> None:
    session = sealed.batches[0][2].session_id
    row = await sealed.row_of(session)
    async with connection(sealed.db.owner_url) as owner:
        await owner.execute(
            "CREATE TEMP TABLE kept AS SELECT * FROM audit_logs WHERE id = $1", row["id"]
        )
        await owner.execute("DELETE FROM audit_logs WHERE id = $1", row["id"])
        report = await sealed.verify()
        await owner.execute("INSERT INTO audit_logs SELECT * FROM kept")

    assert named(report) == {("deleted", 1, session)}
    assert (await sealed.verify()).intact


async def test_a_forged_copy_of_a_row_under_a_new_session_is_found_unsealed(sealed: Sealed) -> None:
    real = await sealed.row_of(sealed.batches[2][1].session_id)
    forged_session, forged_id = uuid.uuid4(), uuid.uuid4()
    async with connection(sealed.db.owner_url) as owner:
        await owner.execute(
            "INSERT INTO audit_logs (id, tenant_id, user_id, action, resource_type, resource_id, "
            "device_id, details, encrypted_details, ip_address, created_at, occurred_at, "
            "ingested_at, idempotency_key) "
            "SELECT $2, tenant_id, user_id, action, resource_type, resource_id, device_id, "
            "jsonb_set(details, '{session_id}', to_jsonb($3::text)), encrypted_details, "
            "ip_address, created_at, occurred_at, ingested_at, 'ssh_session_end:' || $3 "
            "FROM audit_logs WHERE id = $1",
            real["id"],
            forged_id,
            str(forged_session),
        )
        report = await sealed.verify()
        await owner.execute("DELETE FROM audit_logs WHERE id = $1", forged_id)

    assert named(report) == {("unsealed", None, forged_session)}
    assert [f.row_id for f in report.findings] == [forged_id]
    assert (await sealed.verify()).intact


async def test_a_changed_seal_fails_its_signature_its_link_and_the_anchor(sealed: Sealed) -> None:
    async with connection(sealed.db.owner_url) as owner:
        await owner.execute(
            "UPDATE audit_seals SET sealed_at = sealed_at - interval '1 hour' WHERE seq = 2"
        )
        report = await sealed.verify()
        await owner.execute(
            "UPDATE audit_seals SET sealed_at = sealed_at + interval '1 hour' WHERE seq = 2"
        )

    second, third = session_ids(sealed.batches[1]), session_ids(sealed.batches[2])
    assert named(report) == (
        {("bad_signature", 2, s) for s in second}
        | {("anchor_mismatch", 2, s) for s in second}
        | {("broken_link", 3, s) for s in third}
    )
    assert (await sealed.verify()).intact


async def test_a_seal_rewritten_without_the_key_to_hide_a_deleted_row_is_caught(
    sealed: Sealed,
) -> None:
    # The row goes, and so does its entry in seal 1, whose hash is computed afresh: only
    # the signature (and the link into seal 2, and the anchor) can tell.
    victim = sealed.batches[0][0].session_id
    row = await sealed.row_of(victim)
    async with connection(sealed.db.owner_url) as owner:
        before = await owner.fetchrow("SELECT * FROM audit_seals WHERE seq = 1")
        assert before is not None
        await owner.execute(
            "CREATE TEMP TABLE kept AS SELECT * FROM audit_logs WHERE id = $1", row["id"]
        )
        await owner.execute("DELETE FROM audit_logs WHERE id = $1", row["id"])
        keep = [i for i, r in enumerate(before["row_ids"]) if r != row["id"]]
        entries = [
            (before["row_ids"][i], before["session_ids"][i], before["row_hashes"][i]) for i in keep
        ]
        rehashed = seal_hash(
            seq=1, prev_hash=before["prev_hash"], sealed_at=before["sealed_at"],
            key_id=before["key_id"], entries=entries,
        )  # fmt: skip
        await owner.execute(
            "UPDATE audit_seals SET row_ids = $1, session_ids = $2, row_hashes = $3, "
            "seal_hash = $4 WHERE seq = 1",
            [e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries], rehashed,
        )  # fmt: skip
        report = await sealed.verify()
        await owner.execute(
            "UPDATE audit_seals SET row_ids = $1, session_ids = $2, row_hashes = $3, "
            "seal_hash = $4 WHERE seq = 1",
            before["row_ids"], before["session_ids"], before["row_hashes"], before["seal_hash"],
        )  # fmt: skip
        await owner.execute("INSERT INTO audit_logs SELECT * FROM kept")

    first = session_ids(sealed.batches[0]) - {victim}
    assert {("bad_signature", 1, s) for s in first} <= named(report)
    assert {("broken_link", 2, s) for s in session_ids(sealed.batches[1])} <= named(report)
    assert {("anchor_mismatch", 1, s) for s in first} <= named(report)
    assert victim not in {f.session_id for f in report.findings if f.kind == "bad_signature"}
    assert (await sealed.verify()).intact


async def test_the_newest_seals_deleted_with_their_rows_show_only_against_the_anchor(
    sealed: Sealed,
) -> None:
    async with connection(sealed.db.owner_url) as owner:
        await owner.execute(
            "CREATE TEMP TABLE seals_kept AS SELECT * FROM audit_seals WHERE seq >= 2"
        )
        await owner.execute(
            "CREATE TEMP TABLE rows_kept AS SELECT * FROM audit_logs "
            "WHERE id IN (SELECT unnest(row_ids) FROM seals_kept)"
        )
        await owner.execute("DELETE FROM audit_logs WHERE id IN (SELECT id FROM rows_kept)")
        await owner.execute("DELETE FROM audit_seals WHERE seq >= 2")
        without_anchor = await verify(sealed.db, sealed.signer.key_id, anchor=None)
        report = await sealed.verify()
        await owner.execute("INSERT INTO audit_seals SELECT * FROM seals_kept")
        await owner.execute("INSERT INTO audit_logs SELECT * FROM rows_kept")

    assert without_anchor.intact  # a chain cut short is intact as far as it goes
    assert named(report) == {
        ("missing_against_anchor", seq, s)
        for seq, batch in ((2, sealed.batches[1]), (3, sealed.batches[2]))
        for s in session_ids(batch)
    }
    assert all(f.row_id is not None for f in report.findings)
    assert (await sealed.verify()).intact


async def test_rows_written_by_others_are_never_flagged(sealed: Sealed) -> None:
    async with connection(sealed.db.owner_url) as owner:
        await owner.execute(
            "INSERT INTO audit_logs (tenant_id, action, resource_type, idempotency_key) VALUES "
            "(gen_random_uuid(), 'login', 'user', NULL), "
            "(gen_random_uuid(), 'ssh_session_end', 'device', NULL), "
            "(gen_random_uuid(), 'config_push', 'device', 'config_push:1')"
        )

    report = await sealed.verify()

    assert report.intact, report.findings
    assert report.service_rows == 9


async def test_rows_from_before_the_trail_began_are_counted_not_flagged(
    trail: TrailDatabase,
) -> None:
    # Written before any seal existed: migration 0004 met them there.
    await insert_as_the_service(trail, events(2))
    signer = new_signer()
    await write_and_seal(trail, 1, signer)

    report = await verify(trail, signer.key_id)

    assert report.intact, report.findings
    assert (report.service_rows, report.pre_trail_rows) == (3, 2)


async def test_since_checks_only_the_seals_from_there_on(sealed: Sealed) -> None:
    session = sealed.batches[0][0].session_id
    row = await sealed.row_of(session)
    async with connection(sealed.db.owner_url) as owner:
        await owner.execute(
            "UPDATE audit_logs SET ip_address = '198.51.100.1' WHERE id = $1", row["id"]
        )
        from_two = await sealed.verify(since=2)
        from_one = await sealed.verify(since=1)
        await owner.execute(
            "UPDATE audit_logs SET ip_address = $2 WHERE id = $1", row["id"], row["ip_address"]
        )

    assert from_two.intact
    assert (from_two.first_seq, from_two.seals) == (2, 2)
    assert named(from_one) == {("changed", 1, session)}


async def test_unsigned_seals_are_findings_unless_allowed(trail: TrailDatabase) -> None:
    _, batch = await write_and_seal(trail, 2, None)

    strict = await verify(trail, new_signer().key_id)
    allowed = await verify(trail, allow_unsigned=True)

    assert named(strict) == {("unsigned", 1, s) for s in session_ids(batch)}
    assert allowed.intact


async def test_after_a_key_rotation_both_keys_are_needed_to_verify(trail: TrailDatabase) -> None:
    old, new = new_signer(), new_signer()
    _, old_batch = await write_and_seal(trail, 2, old)
    await write_and_seal(trail, 2, new)

    both = await verify(trail, old.key_id, new.key_id)
    new_only = await verify(trail, new.key_id)

    assert both.intact
    assert both.keys == {old.key_id: 1, new.key_id: 1}
    assert named(new_only) == {("bad_signature", 1, s) for s in session_ids(old_batch)}


# -- the command ----------------------------------------------------------------------------


async def run_verify(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m service trail verify ARGS` with these settings, as an operator runs it."""
    settings = {k: v for k, v in os.environ.items() if not k.startswith("TRAIL_")}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", "trail", "verify", *args],
        cwd=PROJECT,
        env=settings | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def command_env(trail: Sealed, **changes: str) -> dict[str, str]:
    """The verifier's settings for the sealed trail."""
    return {
        "DATABASE_URL": trail.db.verifier_url,
        "NATS_URL": os.environ["NATS_URL"],
        "TRAIL_TRUSTED_KEYS": trail.signer.key_id,
        "TRAIL_ANCHOR_STREAM": trail.stream,
    } | changes


async def test_verify_command_exits_0_when_intact_and_1_naming_the_session_when_not(
    sealed: Sealed,
) -> None:
    intact = await run_verify(command_env(sealed))
    session = sealed.batches[2][2].session_id
    row = await sealed.row_of(session)
    async with connection(sealed.db.owner_url) as owner:
        await owner.execute(
            "CREATE TEMP TABLE kept AS SELECT * FROM audit_logs WHERE id = $1", row["id"]
        )
        await owner.execute("DELETE FROM audit_logs WHERE id = $1", row["id"])
        found = await run_verify(command_env(sealed))
        found_json = await run_verify(command_env(sealed), "--json")
        await owner.execute("INSERT INTO audit_logs SELECT * FROM kept")
    intact_json = await run_verify(command_env(sealed), "--json")

    assert intact.returncode == 0, intact.stderr
    assert intact.stdout.startswith("intact: seals 1..3 (3 seals, 9 rows)")
    assert found.returncode == 1, found.stderr
    first, summary = found.stdout.splitlines()
    assert first.split()[:3] == ["deleted", "seal", "3"]
    assert f"session {session}" in first
    assert summary.startswith("NOT INTACT: 1 finding (deleted 1)")
    document = json.loads(found_json.stdout)
    assert (found_json.returncode, document["intact"]) == (1, False)
    assert document["findings"] == [
        {
            "kind": "deleted",
            "seq": 3,
            "row_id": str(row["id"]),
            "session_id": str(session),
            "detail": "the row is gone",
        }
    ]
    assert json.loads(intact_json.stdout)["summary"]["anchor"]["through"] == 3


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("no database", "cannot connect to the database"),
        ("not migrated", "no table audit_seals"),
        ("writer login", "is not in audit_verifier"),
        ("no trusted key", "no trusted key"),
        ("NATS unreachable", "cannot reach NATS"),
        ("no anchor stream", "no anchor stream"),
    ],
)
async def test_verify_command_exits_2_with_one_line_when_it_cannot_run(
    sealed: Sealed, database_url: str, change: str, reason: str
) -> None:
    port = free_port()
    env = command_env(sealed)
    if change == "no database":
        env["DATABASE_URL"] = f"postgresql+asyncpg://nobody@127.0.0.1:{port}/none"
    elif change == "not migrated":
        env["DATABASE_URL"] = (
            make_url(database_url).set(database="postgres").render_as_string(hide_password=False)
        )
    elif change == "writer login":
        env["DATABASE_URL"] = sealed.db.writer_url
    elif change == "no trusted key":
        env["TRAIL_TRUSTED_KEYS"] = ""
    elif change == "NATS unreachable":
        env["NATS_URL"] = f"nats://127.0.0.1:{port}"
    else:
        env["TRAIL_ANCHOR_STREAM"] = "NO_SUCH_ANCHOR"

    done = await run_verify(env)

    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert reason in done.stderr
    if change == "NATS unreachable":
        no_anchor = await run_verify(env, "--no-anchor")
        assert no_anchor.returncode == 0, no_anchor.stderr
        assert "anchor not checked" in no_anchor.stdout


async def test_a_batch_written_row_by_row_seals_the_first_event_of_each_session(
    trail: TrailDatabase,
) -> None:
    # A row the database refuses sends the batch down the one-by-one path; the session
    # with two end events in it keeps (and must be sealed with) the first.
    signer = new_signer()
    refused_tenant = uuid.uuid4()
    first = events(1, reason="idle_timeout")[0]
    second = SessionEndEvent.model_validate(
        json.loads(first.model_dump_json()) | {"reason": "normal"}
    )
    batch = [first, *events(2), second, *events(1, tenant_id=str(refused_tenant))]
    async with connection(trail.owner_url) as owner:
        await owner.execute(
            "ALTER TABLE audit_logs ADD CONSTRAINT trail_refused "
            f"CHECK (tenant_id <> '{refused_tenant}'::uuid)"
        )
    engine = create_engine(trail.writer_url)
    try:
        result = await insert_session_ends(engine, events=batch, signer=signer)
    finally:
        await engine.dispose()
        async with connection(trail.owner_url) as owner:
            await owner.execute("ALTER TABLE audit_logs DROP CONSTRAINT trail_refused")

    assert (result.inserted, result.duplicates, list(result.refused)) == (3, 1, [4])
    report = await verify(trail, signer.key_id)
    assert report.intact, report.findings
    assert report.rows == 3
