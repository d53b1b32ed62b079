"""Migration 0002's roles on the run's PostgreSQL: an insert-only writer, tenant-bound readers."""

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from service.events import SessionEndEvent
from service.repository import create_engine, ensure_login_role, insert_session_ends
from tests.session_events import session_end

TENANT_A, TENANT_B = str(uuid.uuid4()), str(uuid.uuid4())


def dsn(url: str) -> str:
    """asyncpg's DSN for a SQLAlchemy URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def write_as_the_service(writer_url: str, tenants: list[str]) -> None:
    """One row per tenant in the list, through the service's own insert as the writer login."""
    engine = create_engine(writer_url)
    try:
        events = [SessionEndEvent.model_validate(session_end(tenant_id=t)) for t in tenants]
        result = await insert_session_ends(engine, events=events)
        assert (result.inserted, result.refused) == (len(tenants), {})
        # The unique key finds the duplicate with nothing but SELECT (idempotency_key).
        again = await insert_session_ends(engine, events=events)
        assert (again.inserted, again.duplicates) == (0, len(tenants))
    finally:
        await engine.dispose()


@pytest.fixture
async def writer(writer_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection as the service's writer login."""
    conn = await asyncpg.connect(dsn(writer_database_url))
    try:
        yield conn
    finally:
        await conn.close()


async def test_writer_login_inserts_through_the_service_and_skips_duplicates(
    db: asyncpg.Connection, writer_database_url: str
) -> None:
    await write_as_the_service(writer_database_url, [TENANT_A, TENANT_B])
    assert await db.fetchval("SELECT count(*) FROM audit_logs") == 2


@pytest.mark.parametrize(
    ("statement", "refusal"),
    [
        ("UPDATE audit_logs SET action = 'tampered'", "permission denied"),
        ("UPDATE audit_logs SET idempotency_key = idempotency_key", "permission denied"),
        ("DELETE FROM audit_logs", "permission denied"),
        ("TRUNCATE audit_logs", "permission denied"),
        ("SELECT details FROM audit_logs", "permission denied"),
        ("SELECT tenant_id, ip_address FROM audit_logs", "permission denied"),
        ("SELECT * FROM audit_logs", "permission denied"),
        ("INSERT INTO audit_logs (tenant_id, action, resource_type, idempotency_key) "
         "VALUES (gen_random_uuid(), 'x', 'y', 'k') "
         "ON CONFLICT (idempotency_key) DO UPDATE SET action = 'tampered'", "permission denied"),
        ("ALTER TABLE audit_logs NO FORCE ROW LEVEL SECURITY", "must be owner"),
        ("DROP TABLE audit_logs", "must be owner"),
        ("ALTER TABLE audit_logs DISABLE TRIGGER ALL", "must be owner"),
    ],
    ids=["update", "update-key", "delete", "truncate", "select-details", "select-columns",
         "select-all", "upsert", "no-force-rls", "drop", "disable-triggers"],
)  # fmt: skip
async def test_writer_login_cannot_change_remove_or_read_audit_rows(
    db: asyncpg.Connection,
    writer_database_url: str,
    writer: asyncpg.Connection,
    statement: str,
    refusal: str,
) -> None:
    await write_as_the_service(writer_database_url, [TENANT_A])

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=refusal):
        await writer.execute(statement)

    rows = await db.fetch("SELECT action FROM audit_logs")
    assert [row["action"] for row in rows] == ["ssh_session_end"]


@pytest.fixture
async def reader_login(database_url: str) -> AsyncIterator[str]:
    """A login in audit_reader, created as operators do, dropped afterwards; its URL."""
    name, password = f"audit_reader_test_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    owner = create_engine(database_url)
    try:
        assert await ensure_login_role(owner, name=name, password=password, group="reader")
        yield (
            make_url(database_url)
            .set(username=name, password=password)
            .render_as_string(hide_password=False)
        )
    finally:
        async with owner.begin() as conn:
            await conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{name}"')
        await owner.dispose()


@pytest.mark.parametrize(
    ("tenant", "expected"),
    [("A", ["A", "A"]), ("B", ["B"]), (None, []), ("", []), ("other", [])],
    ids=["tenant-A", "tenant-B", "unset", "empty", "unknown-tenant"],
)
async def test_reader_sees_only_the_rows_of_the_tenant_it_names(
    db: asyncpg.Connection,
    writer_database_url: str,
    reader_login: str,
    tenant: str | None,
    expected: list[str],
) -> None:
    await write_as_the_service(writer_database_url, [TENANT_A, TENANT_A, TENANT_B])
    names = {TENANT_A: "A", TENANT_B: "B"}
    setting = {"A": TENANT_A, "B": TENANT_B, "other": str(uuid.uuid4()), "": ""}

    reader = await asyncpg.connect(dsn(reader_login))
    try:
        if tenant is not None:
            await reader.execute(
                "SELECT set_config('app.current_tenant', $1, false)", setting[tenant]
            )
        rows = await reader.fetch("SELECT tenant_id::text FROM audit_logs")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await reader.execute("DELETE FROM audit_logs")
    finally:
        await reader.close()

    assert sorted(names[row["tenant_id"]] for row in rows) == expected
    assert await db.fetchval("SELECT count(*) FROM audit_logs") == 3  # all there for the owner


async def test_row_level_security_is_enabled_and_forced_on_audit_logs(
    db: asyncpg.Connection,
) -> None:
    flags = await db.fetchrow(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
        "WHERE oid = 'audit_logs'::regclass"
    )
    assert (flags["relrowsecurity"], flags["relforcerowsecurity"]) == (True, True)
    roles = await db.fetch(
        "SELECT rolname, rolbypassrls, rolsuper FROM pg_roles "
        "WHERE rolname IN ('audit_writer', 'audit_reader')"
    )
    assert sorted((r["rolname"], r["rolbypassrls"], r["rolsuper"]) for r in roles) == [
        ("audit_reader", False, False),
        ("audit_writer", False, False),
    ]
