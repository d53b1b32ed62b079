"""Migration 0004's privileges on the real PostgreSQL: the writer appends seals and changes
nothing; audit_verifier reads every tenant's rows and the seals, and changes nothing."""

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.trail_support import (
    TrailDatabase,
    connection,
    dsn,
    empty,
    new_signer,
    trail_database,
    write_and_seal,
)

TENANT_A, TENANT_B = str(uuid.uuid4()), str(uuid.uuid4())


@pytest.fixture(scope="module")
async def trail_db(database_url: str) -> AsyncIterator[TrailDatabase]:
    """The module's own migrated database and logins."""
    async with trail_database(database_url) as created:
        yield created


@pytest.fixture
async def trail(trail_db: TrailDatabase) -> TrailDatabase:
    """Two tenants' sessions, written and sealed as the service does (seals 1 and 2)."""
    await empty(trail_db)
    signer = new_signer()
    await write_and_seal(trail_db, 2, signer, tenant_id=TENANT_A)
    await write_and_seal(trail_db, 1, signer, tenant_id=TENANT_B)
    return trail_db


async def counts(db: TrailDatabase) -> tuple[int, int]:
    """(rows, seals) as the owner sees them."""
    async with connection(db.owner_url) as owner:
        row = await owner.fetchrow(
            "SELECT (SELECT count(*) FROM audit_logs), (SELECT count(*) FROM audit_seals)"
        )
    assert row is not None
    return row[0], row[1]


CHANGES = [
    ("UPDATE audit_seals SET key_id = NULL, signature = NULL", "permission denied"),
    ("DELETE FROM audit_seals WHERE seq = 2", "permission denied"),
    ("TRUNCATE audit_seals", "permission denied"),
    ("UPDATE audit_logs SET action = 'tampered'", "permission denied"),
    ("DELETE FROM audit_logs", "permission denied"),
    ("TRUNCATE audit_logs", "permission denied"),
    ("ALTER TABLE audit_seals DISABLE TRIGGER ALL", "must be owner"),
    ("DROP TABLE audit_seals", "must be owner"),
]
CHANGE_IDS = ["update-seal", "delete-seal", "truncate-seals", "update-row", "delete-rows",
              "truncate-rows", "disable-triggers", "drop-seals"]  # fmt: skip


@pytest.mark.parametrize(("statement", "refusal"), CHANGES, ids=CHANGE_IDS)
async def test_writer_appends_seals_but_cannot_change_or_remove_seals_or_rows(
    trail: TrailDatabase, statement: str, refusal: str
) -> None:
    async with connection(trail.writer_url) as writer:
        head = await writer.fetchrow(
            "SELECT seq, seal_hash FROM audit_seals ORDER BY seq DESC LIMIT 1"
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=refusal):
            await writer.execute(statement)

    assert head is not None
    assert head["seq"] == 2
    assert await counts(trail) == (3, 2)


@pytest.mark.parametrize(
    "statement",
    [
        *(statement for statement, _ in CHANGES),
        "INSERT INTO audit_logs (tenant_id, action) VALUES (gen_random_uuid(), 'forged')",
        "INSERT INTO audit_seals SELECT seq + 1, sealed_at, seal_hash, sha256(seal_hash), NULL, "
        "NULL, row_ids, session_ids, row_hashes FROM audit_seals WHERE seq = 2",
        "SELECT version_num FROM alembic_version",
    ],
)
async def test_verifier_can_neither_add_change_remove_nor_read_anything_else(
    trail: TrailDatabase, statement: str
) -> None:
    async with connection(trail.verifier_url) as verifier:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await verifier.execute(statement)

    assert await counts(trail) == (3, 2)


@pytest.mark.parametrize("tenant", [None, "", TENANT_A, str(uuid.uuid4())])
async def test_verifier_reads_every_tenants_rows_and_every_seal(
    trail: TrailDatabase, tenant: str | None
) -> None:
    async with connection(trail.verifier_url) as verifier:
        if tenant is not None:  # whatever tenant it names, it sees them all
            await verifier.execute("SELECT set_config('app.current_tenant', $1, false)", tenant)
        tenants = await verifier.fetch("SELECT tenant_id::text FROM audit_logs")
        seals = await verifier.fetchval("SELECT count(*) FROM audit_seals")

    assert sorted(row["tenant_id"] for row in tenants) == sorted([TENANT_A, TENANT_A, TENANT_B])
    assert seals == 2


async def test_verifier_and_writer_are_granted_exactly_their_privileges(
    trail: TrailDatabase,
) -> None:
    async with connection(trail.owner_url) as owner:
        grants = await owner.fetch(
            "SELECT grantee, table_name, privilege_type FROM information_schema.table_privileges "
            "WHERE grantee IN ('audit_writer', 'audit_verifier', 'audit_reader') "
            "AND table_name IN ('audit_logs', 'audit_seals')"
        )
        roles = await owner.fetch(
            "SELECT rolname, rolcanlogin, rolsuper, rolbypassrls FROM pg_roles "
            "WHERE rolname = 'audit_verifier'"
        )

    assert sorted(tuple(g) for g in grants) == [
        ("audit_reader", "audit_logs", "SELECT"),
        ("audit_verifier", "audit_logs", "SELECT"),
        ("audit_verifier", "audit_seals", "SELECT"),
        ("audit_writer", "audit_logs", "INSERT"),
        ("audit_writer", "audit_seals", "INSERT"),
        ("audit_writer", "audit_seals", "SELECT"),
    ]
    assert [tuple(r) for r in roles] == [("audit_verifier", False, False, False)]


@pytest.fixture
async def reader_url(trail: TrailDatabase) -> AsyncIterator[str]:
    """A login in audit_reader on the trail's database, dropped afterwards."""
    name, password = f"trail_reader_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    async with connection(trail.owner_url) as owner:
        await owner.execute(
            f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}' IN ROLE audit_reader"
        )
    try:
        yield (
            make_url(trail.owner_url)
            .set(username=name, password=password)
            .render_as_string(hide_password=False)
        )
    finally:
        async with connection(trail.owner_url) as owner:
            await owner.execute(f'DROP ROLE IF EXISTS "{name}"')


async def test_tenant_reader_cannot_read_the_seals_which_name_every_tenants_sessions(
    reader_url: str,
) -> None:
    reader = await asyncpg.connect(dsn(reader_url))
    try:
        await reader.execute("SELECT set_config('app.current_tenant', $1, false)", TENANT_A)
        assert await reader.fetchval("SELECT count(*) FROM audit_logs") == 2
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await reader.fetch("SELECT session_ids FROM audit_seals")
    finally:
        await reader.close()
