"""Our migrations and writes on a replica of the platform's database, and on an empty one.

The replica (tests/platform_replica.py) is built from the platform's own migrations; each
test makes its own tenants in one shared, migrated replica, or a database of its own when
it migrates.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.dev.stack import PROJECT, migrate
from service.events import SessionEndEvent
from service.repository import create_engine, ensure_login_role, head_revision, insert_session_ends
from tests.platform_replica import (
    PLATFORM_COLUMNS,
    MigratedPlatform,
    PlatformTenant,
    add_tenant_with_user_and_device,
    as_app_user,
    as_superuser,
    connection,
    list_audit_logs,
    log_action,
    migrated_platform_database,
    platform_database,
    read_audit_logs,
)
from tests.session_events import session_end


@pytest.fixture(scope="module")
async def platform(database_url: str) -> AsyncIterator[MigratedPlatform]:
    """One replica of the platform's database, migrated to head, for this module."""
    async with migrated_platform_database(database_url) as migrated:
        yield migrated


@pytest.fixture
async def tenant(platform: MigratedPlatform) -> PlatformTenant:
    """A fresh tenant of the replica with a user and a device."""
    async with connection(platform.owner_url) as conn:
        return await add_tenant_with_user_and_device(conn)


@pytest.fixture
async def writer(platform: MigratedPlatform) -> AsyncIterator[AsyncEngine]:
    """The service's engine, logged in as its insert-only writer on the replica."""
    engine = create_engine(platform.writer_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def empty_database(database_url: str) -> AsyncIterator[str]:
    """A new, empty database on the run's server (no platform tables); its owner URL."""
    name = f"session_audit_empty_{uuid.uuid4().hex[:12]}"
    async with connection(database_url) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        async with connection(database_url) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def session_of(tenant: PlatformTenant, **fields: Any) -> SessionEndEvent:
    """A session-end event of the tenant's user on the tenant's device."""
    raw = session_end(tenant_id=tenant.id, user_id=tenant.user_id, device_id=tenant.device_id)
    return SessionEndEvent.model_validate(raw | fields)


def downgrade(url: str, revision: str) -> None:
    """Take the database back to revision with the project's Alembic migrations."""
    config = Config(toml_file=str(PROJECT / "pyproject.toml"))
    config.attributes["database_url"] = url
    command.downgrade(config, revision)


async def column_types(conn: asyncpg.Connection) -> dict[str, tuple[Any, ...]]:
    """Type, length, nullability and default of each of the platform's audit_logs columns."""
    rows = await conn.fetch(
        """
        SELECT column_name, data_type, udt_name, character_maximum_length, is_nullable,
               column_default
        FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'audit_logs'
          AND column_name = ANY($1::text[])
        """,
        list(PLATFORM_COLUMNS),
    )
    return {row["column_name"]: tuple(row)[1:] for row in rows}


async def platform_shape(conn: asyncpg.Connection) -> dict[str, Any]:
    """What the platform made of audit_logs: columns, constraints, its policy, indexes, grants."""
    return {
        "columns": await column_types(conn),
        "comment": await conn.fetchval(
            "SELECT col_description('audit_logs'::regclass, attnum) FROM pg_attribute "
            "WHERE attrelid = 'audit_logs'::regclass AND attname = 'encrypted_details'"
        ),
        "constraints": await conn.fetch(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'audit_logs'::regclass ORDER BY conname"
        ),
        "policy": await conn.fetch(
            "SELECT polname, polcmd, polroles::regrole[]::text[], pg_get_expr(polqual, polrelid) "
            "FROM pg_policy WHERE polrelid = 'audit_logs'::regclass "
            "AND polname = 'audit_logs_tenant_isolation'"
        ),
        "rls": await conn.fetchval(
            "SELECT relrowsecurity FROM pg_class WHERE oid = 'audit_logs'::regclass"
        ),
        "indexes": await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit_logs' "
            "AND indexname LIKE 'idx\\_%' ORDER BY indexname"
        ),
        "grants": await conn.fetch(
            "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
            "WHERE table_name = 'audit_logs' AND grantee IN ('app_user', 'poller_user') "
            "ORDER BY 1, 2"
        ),
    }


async def test_migrations_leave_the_platform_table_as_it_was_and_can_run_again(
    database_url: str,
) -> None:
    async with platform_database(database_url) as owner_url:
        async with connection(owner_url) as conn:
            before = await platform_shape(conn)

        await asyncio.to_thread(migrate, owner_url)
        await asyncio.to_thread(migrate, owner_url)
        async with connection(owner_url) as conn:
            assert await conn.fetchval("SELECT version_num FROM alembic_version") == head_revision()
            assert await platform_shape(conn) == before

        # 0003 is a no-op both ways on the platform's table: its columns were already so.
        await asyncio.to_thread(downgrade, owner_url, "0002")
        async with connection(owner_url) as conn:
            assert await platform_shape(conn) == before
        await asyncio.to_thread(migrate, owner_url)
        async with connection(owner_url) as conn:
            assert await platform_shape(conn) == before
    assert before["columns"]["ip_address"][:3] == ("character varying", "varchar", 45)


async def test_writer_writes_session_rows_for_the_platforms_tenants_users_and_devices(
    platform: MigratedPlatform, writer: AsyncEngine, tenant: PlatformTenant
) -> None:
    events = [session_of(tenant), session_of(tenant, user_id="")]

    result = await insert_session_ends(writer, events=events)

    assert (result.inserted, result.duplicates, result.refused) == (2, 0, {})
    again = await insert_session_ends(writer, events=events)
    assert (again.inserted, again.duplicates) == (0, 2)
    async with connection(platform.owner_url) as conn:
        rows = await conn.fetch(
            "SELECT user_id::text, device_id::text, resource_type, resource_id, ip_address "
            "FROM audit_logs WHERE tenant_id = $1 ORDER BY user_id NULLS LAST",
            uuid.UUID(tenant.id),
        )
    assert [tuple(row) for row in rows] == [
        (tenant.user_id, tenant.device_id, "device", tenant.device_id, "203.0.113.7"),
        (None, tenant.device_id, "device", tenant.device_id, "203.0.113.7"),
    ]


async def test_writer_needs_no_app_current_tenant_although_the_platform_policy_reads_it(
    platform: MigratedPlatform, tenant: PlatformTenant
) -> None:
    # The platform's policy calls current_setting('app.current_tenant') without missing_ok,
    # for every role; 0002's writer policies are the constant true, and PostgreSQL folds
    # "platform policy OR true" to true, so the setting is never read for the writer.
    async with connection(platform.writer_url) as conn:
        assert await conn.fetchval("SELECT current_setting('app.current_tenant', true)") is None
        with pytest.raises(asyncpg.UndefinedObjectError, match=r"app\.current_tenant"):
            await conn.fetchval("SELECT current_setting('app.current_tenant')")
    engine = create_engine(platform.writer_url)
    try:
        result = await insert_session_ends(engine, events=[session_of(tenant)])
    finally:
        await engine.dispose()
    assert (result.inserted, result.refused) == (1, {})


@pytest.mark.parametrize(
    ("unknown", "constraint"),
    [
        ("device_id", "audit_logs_device_id_fkey"),
        ("user_id", "audit_logs_user_id_fkey"),
        ("tenant_id", "audit_logs_tenant_id_fkey"),
    ],
    ids=["device", "user", "tenant"],
)
async def test_event_naming_what_the_platform_does_not_know_is_refused_by_its_foreign_key(
    platform: MigratedPlatform,
    writer: AsyncEngine,
    tenant: PlatformTenant,
    unknown: str,
    constraint: str,
) -> None:
    events = [session_of(tenant), session_of(tenant, **{unknown: str(uuid.uuid4())})]
    events.append(session_of(tenant))

    result = await insert_session_ends(writer, events=events)

    # The handler dead-letters refused rows as database_refused, with this detail.
    assert (result.inserted, result.duplicates, list(result.refused)) == (2, 0, [1])
    assert constraint in result.refused[1]
    assert "SQLSTATE 23503" in result.refused[1]
    async with connection(platform.owner_url) as conn:
        written = await conn.fetch(
            "SELECT idempotency_key FROM audit_logs WHERE device_id = $1",
            uuid.UUID(tenant.device_id),
        )
    assert {row["idempotency_key"] for row in written} == {
        f"ssh_session_end:{events[0].session_id}",
        f"ssh_session_end:{events[2].session_id}",
    }


async def test_platform_superuser_still_writes_its_own_audit_rows(
    platform: MigratedPlatform, tenant: PlatformTenant
) -> None:
    async with as_superuser(platform.owner_url) as conn:
        await log_action(
            conn,
            tenant_id=tenant.id,
            user_id=tenant.user_id,
            action="login",
            encrypted_details="vault:v1:c2VhbGVk",
            ip_address="198.51.100.9",
        )

    async with connection(platform.owner_url) as conn:
        row = await conn.fetchrow(
            "SELECT resource_type, details::text, encrypted_details, ip_address, "
            "idempotency_key, occurred_at, ingested_at IS NOT NULL AS ingested "
            "FROM audit_logs WHERE tenant_id = $1",
            uuid.UUID(tenant.id),
        )
    assert row is not None
    assert dict(row) == {
        "resource_type": None,
        "details": "{}",
        "encrypted_details": "vault:v1:c2VhbGVk",
        "ip_address": "198.51.100.9",
        "idempotency_key": None,
        "occurred_at": None,
        "ingested": True,
    }


async def test_app_user_with_its_tenant_set_still_writes_and_only_for_that_tenant(
    platform: MigratedPlatform, tenant: PlatformTenant
) -> None:
    async with as_app_user(platform.owner_url, tenant.id) as conn:
        await log_action(conn, tenant_id=tenant.id, user_id=tenant.user_id, action="logout")
    with pytest.raises(DBAPIError, match="row-level security policy"):
        async with as_app_user(platform.owner_url, tenant.id) as conn:
            await log_action(conn, tenant_id=str(uuid.uuid4()), user_id=None, action="logout")

    page = await read_audit_logs(platform.owner_url, tenant.id)
    assert [(item["action"], item["user_email"]) for item in page.items] == [
        ("logout", tenant.email)
    ]


async def test_platform_read_path_lists_our_rows_newest_first_with_email_and_hostname(
    platform: MigratedPlatform, writer: AsyncEngine, tenant: PlatformTenant
) -> None:
    async with connection(platform.owner_url) as conn:
        other = await add_tenant_with_user_and_device(conn)
    hours = ["10", "12", "11"]
    ours = [
        session_of(tenant, start_time=f"2026-03-12T{h}:00:00Z", end_time=f"2026-03-12T{h}:30:00Z")
        for h in hours
    ]
    await insert_session_ends(writer, events=[*ours, session_of(other)])

    page = await read_audit_logs(platform.owner_url, tenant.id)

    assert page.total == 3
    assert [item["details"]["session_id"] for item in page.items] == [
        str(ours[1].session_id),
        str(ours[2].session_id),
        str(ours[0].session_id),
    ]
    for item in page.items:
        assert (item["user_email"], item["device_name"]) == (tenant.email, tenant.hostname)
        assert (item["action"], item["resource_type"]) == ("ssh_session_end", "device")
        assert item["resource_id"] == tenant.device_id
        assert item["encrypted_details"] is None
        assert item["ip_address"] == "203.0.113.7"
    # Asking for the other tenant while set to this one: row-level security answers nothing.
    async with as_app_user(platform.owner_url, tenant.id) as conn:
        assert (await list_audit_logs(conn, other.id)).items == []
    assert (await read_audit_logs(platform.owner_url, other.id)).total == 1


# Every address form the contract allows in source_ip, and what the column should hold.
ADDRESS_FORMS = [
    ("203.0.113.7", "203.0.113.7"),
    ("203.0.113.7:51514", "203.0.113.7"),
    ("2001:db8::1", "2001:db8::1"),
    ("[2001:db8::1]:443", "2001:db8::1"),
    ("2001:DB8:0:0:0:0:0:A", "2001:db8::a"),
    (" 198.51.100.23 ", "198.51.100.23"),  # the last X-Forwarded-For entry, spaces kept
    ("1111:2222:3333:4444:5555:6666:7777:8888", "1111:2222:3333:4444:5555:6666:7777:8888"),
    ("[1111:2222:3333:4444:5555:6666:7777:8888]:65535", "1111:2222:3333:4444:5555:6666:7777:8888"),
    ("0000:0000:0000:0000:0000:ffff:255.255.255.255", "::ffff:255.255.255.255"),
    ("::ffff:203.0.113.7", "::ffff:203.0.113.7"),
    ("[::ffff:203.0.113.7]:22", "::ffff:203.0.113.7"),
    ("fe80::1%eth0", "fe80::1"),
    ("[fe80::1%eth0]:22", "fe80::1"),
    ("fe80::1%" + "z" * 64, "fe80::1"),
    ("unknown", None),
    ("", None),
]


async def test_ip_address_holds_the_bare_address_for_every_contract_address_form(
    platform: MigratedPlatform, writer: AsyncEngine, tenant: PlatformTenant
) -> None:
    events = [session_of(tenant, source_ip=source) for source, _ in ADDRESS_FORMS]

    result = await insert_session_ends(writer, events=events)

    assert (result.inserted, result.refused) == (len(events), {})
    page = await read_audit_logs(platform.owner_url, tenant.id)
    stored = {item["details"]["session_id"]: item["ip_address"] for item in page.items}
    held = [stored[str(event.session_id)] for event in events]
    assert held == [expected for _, expected in ADDRESS_FORMS]
    assert all(len(address) <= 45 for address in held if address is not None)


@pytest.mark.parametrize(
    ("setting", "refusal"),
    [
        (None, asyncpg.UndefinedObjectError),  # unrecognized configuration parameter
        ("", asyncpg.InvalidTextRepresentationError),  # invalid input syntax for type uuid
    ],
    ids=["unset", "empty"],
)
async def test_reader_naming_no_tenant_is_refused_on_the_platform_table(
    platform: MigratedPlatform,
    writer: AsyncEngine,
    tenant: PlatformTenant,
    setting: str | None,
    refusal: type[Exception],
) -> None:
    # On an empty database 0002's reader policy shows such a reader no rows; on the
    # platform's table its policy is OR'ed in and fails the query instead: closed either way.
    await insert_session_ends(writer, events=[session_of(tenant)])
    name = f"platform_reader_{uuid.uuid4().hex[:8]}"
    owner = create_engine(platform.owner_url)
    try:
        await ensure_login_role(owner, name=name, password=None, group="reader")
        url = make_url(platform.owner_url).set(username=name, password=None)
        async with connection(url.render_as_string(hide_password=False)) as reader:
            await reader.execute("SELECT set_config('app.current_tenant', $1, false)", tenant.id)
            assert await reader.fetchval("SELECT count(*) FROM audit_logs") == 1
        async with connection(url.render_as_string(hide_password=False)) as reader:
            if setting is not None:
                await reader.execute("SELECT set_config('app.current_tenant', $1, false)", setting)
            with pytest.raises(refusal):
                await reader.fetch("SELECT tenant_id FROM audit_logs")
    finally:
        async with owner.begin() as conn:
            await conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{name}"')
        await owner.dispose()


async def test_empty_database_after_upgrade_has_the_platforms_audit_columns(
    platform: MigratedPlatform, empty_database: str
) -> None:
    await asyncio.to_thread(migrate, empty_database)

    async with connection(empty_database) as conn:
        ours = await column_types(conn)
    async with connection(platform.owner_url) as conn:
        theirs = await column_types(conn)
    assert ours == theirs
    assert set(ours) == set(PLATFORM_COLUMNS)


async def test_empty_database_after_upgrade_serves_the_platform_read_path(
    empty_database: str, writer_database_url: str
) -> None:
    await asyncio.to_thread(migrate, empty_database)
    # users and devices are the platform's tables; stand-ins with the joined columns.
    async with connection(empty_database) as conn:
        await conn.execute(
            "CREATE TABLE users (id uuid PRIMARY KEY, email varchar(255));"
            "CREATE TABLE devices (id uuid PRIMARY KEY, hostname varchar(255))"
        )
        tenant = PlatformTenant(
            id=str(uuid.uuid4()),
            user_id=str(uuid.uuid4()),
            email="ops@example.net",
            device_id=str(uuid.uuid4()),
            hostname="core-1",
        )
        await conn.execute(
            "INSERT INTO users VALUES ($1, $2)", uuid.UUID(tenant.user_id), tenant.email
        )
        await conn.execute(
            "INSERT INTO devices VALUES ($1, $2)", uuid.UUID(tenant.device_id), tenant.hostname
        )
    # The run's writer login is a member of audit_writer, which 0002 granted here too.
    writer_url = make_url(writer_database_url).set(database=make_url(empty_database).database)
    engine = create_engine(writer_url.render_as_string(hide_password=False))
    try:
        events = [session_of(tenant, source_ip="[2001:db8::7]:22")]
        assert (await insert_session_ends(engine, events=events)).inserted == 1
    finally:
        await engine.dispose()

    async with as_superuser(empty_database) as conn:
        page = await list_audit_logs(conn, tenant.id)

    assert page.total == 1
    [item] = page.items
    assert (item["user_email"], item["device_name"]) == (tenant.email, tenant.hostname)
    assert (item["ip_address"], item["encrypted_details"]) == ("2001:db8::7", None)


async def test_0003_turns_the_inet_addresses_of_an_existing_table_into_bare_text_and_back(
    empty_database: str,
) -> None:
    addresses = ["203.0.113.7", "2001:db8::1", "::ffff:203.0.113.7", None]
    await asyncio.to_thread(migrate, empty_database, "0002")
    async with connection(empty_database) as conn:
        for address in addresses:
            await conn.execute(
                "INSERT INTO audit_logs (tenant_id, action, resource_type, resource_id, "
                "ip_address) VALUES (gen_random_uuid(), 'ssh_session_end', 'device', 'd', "
                "$1::inet)",
                address,
            )

    await asyncio.to_thread(migrate, empty_database)

    async with connection(empty_database) as conn:
        stored = await conn.fetch("SELECT ip_address FROM audit_logs")
        assert {row["ip_address"] for row in stored} == set(addresses)
        types = await column_types(conn)
    assert types["ip_address"][:3] == ("character varying", "varchar", 45)
    assert types["encrypted_details"][:2] == ("text", "text")
    assert (types["resource_type"][3], types["resource_id"][3]) == ("YES", "YES")

    await asyncio.to_thread(downgrade, empty_database, "0002")

    async with connection(empty_database) as conn:
        back = await conn.fetch("SELECT host(ip_address) AS ip_address FROM audit_logs")
        assert {row["ip_address"] for row in back} == set(addresses)
        types = await column_types(conn)
    assert types["ip_address"][:2] == ("inet", "inet")
    assert "encrypted_details" not in types
    assert (types["resource_type"][3], types["resource_id"][3]) == ("NO", "NO")


async def test_0003_downgrade_refuses_to_drop_encrypted_details(empty_database: str) -> None:
    await asyncio.to_thread(migrate, empty_database, "0003")
    async with connection(empty_database) as conn:
        await conn.execute(
            "INSERT INTO audit_logs (tenant_id, action, encrypted_details) "
            "VALUES (gen_random_uuid(), 'login', 'vault:v1:c2VhbGVk')"
        )

    with pytest.raises(DBAPIError, match="encrypted_details"):
        await asyncio.to_thread(downgrade, empty_database, "0002")

    async with connection(empty_database) as conn:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == "0003"
        assert await conn.fetchval("SELECT encrypted_details FROM audit_logs") is not None
