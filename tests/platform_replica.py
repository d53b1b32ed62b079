"""The platform's database in miniature: its tables, roles, row-level security and audit paths.

Built from CONTRACT.md and from the platform's own source (staack/the-other-dude, backend/):
alembic/versions/001_initial_schema.py (tenants, users, devices, their forced RLS, app_user's
grants), 002 (poller_user, BYPASSRLS), 007_audit_logs.py (audit_logs, its one policy, grants
and indexes), 018_data_encryption.py (encrypted_details), 021 (the "System (Internal)" tenant);
app/routers/audit_logs.py (the audit API's read path), app/services/audit_service.py
(log_action's INSERT) and app/database.py (SET LOCAL app.current_tenant per request).
Of tenants, users and devices only the columns the audit paths touch are built.
"""

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import and_, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from service.dev.stack import migrate, writer_url

SYSTEM_TENANT = "00000000-0000-0000-0000-000000000000"  # 021: super_admin's audit rows
# audit_logs' columns as the platform's migrations make them (007 and 018).
PLATFORM_COLUMNS = (
    "id", "tenant_id", "user_id", "action", "resource_type", "resource_id", "device_id",
    "details", "ip_address", "created_at", "encrypted_details",
)  # fmt: skip

# Roles belong to the cluster, not to a database: made if absent and left in place (NOLOGIN;
# the tests act as app_user through SET ROLE). The platform's own are login roles.
_ROLES = """
DO $$
BEGIN
    CREATE ROLE app_user NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- made by an earlier replica, or by another run just now
END
$$;
DO $$
BEGIN
    CREATE ROLE poller_user NOLOGIN BYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
GRANT SET ON PARAMETER app.current_tenant TO app_user;
"""

_SCHEMA = """
CREATE TABLE tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        varchar(255) NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE users (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email       varchar(255) NOT NULL UNIQUE,
    tenant_id   uuid REFERENCES tenants(id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE devices (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    hostname    varchar(255) NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT uq_devices_tenant_hostname UNIQUE (tenant_id, hostname)
);

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (id::text = current_setting('app.current_tenant', true)
           OR current_setting('app.current_tenant', true) = 'super_admin')
    WITH CHECK (id::text = current_setting('app.current_tenant', true)
                OR current_setting('app.current_tenant', true) = 'super_admin');
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users
    USING (tenant_id::text = current_setting('app.current_tenant', true)
           OR current_setting('app.current_tenant', true) = 'super_admin')
    WITH CHECK (tenant_id::text = current_setting('app.current_tenant', true)
                OR current_setting('app.current_tenant', true) = 'super_admin');
ALTER TABLE devices ENABLE ROW LEVEL SECURITY;
ALTER TABLE devices FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON devices
    USING (tenant_id::text = current_setting('app.current_tenant', true))
    WITH CHECK (tenant_id::text = current_setting('app.current_tenant', true));
GRANT USAGE ON SCHEMA public TO app_user, poller_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, users, devices TO app_user;
GRANT SELECT ON devices TO poller_user;

CREATE TABLE audit_logs (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id       uuid REFERENCES users(id) ON DELETE SET NULL,
    action        varchar(100) NOT NULL,
    resource_type varchar(50),
    resource_id   varchar(255),
    device_id     uuid REFERENCES devices(id) ON DELETE SET NULL,
    details       jsonb NOT NULL DEFAULT '{}'::jsonb,
    ip_address    varchar(45),
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Enabled, not forced; no missing-ok flag: unset, the setting is an error, not a NULL.
ALTER TABLE audit_logs ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_logs_tenant_isolation ON audit_logs
    USING (tenant_id = current_setting('app.current_tenant')::uuid);
GRANT SELECT, INSERT ON audit_logs TO app_user;
GRANT ALL ON audit_logs TO poller_user;
CREATE INDEX idx_audit_logs_tenant_created ON audit_logs (tenant_id, created_at DESC);
CREATE INDEX idx_audit_logs_tenant_action ON audit_logs (tenant_id, action);

ALTER TABLE audit_logs ADD COLUMN encrypted_details text;
COMMENT ON COLUMN audit_logs.encrypted_details IS 'Transit-encrypted details JSON (vault:v1:...)';

INSERT INTO tenants (id, name) VALUES ('00000000-0000-0000-0000-000000000000',
                                       'System (Internal)');
"""

# The audit API's list and CSV export, as app/routers/audit_logs.py builds them.
_DATA_COLUMNS = text(
    "a.id, u.email AS user_email, a.action, a.resource_type, "
    "a.resource_id, d.hostname AS device_name, a.details, "
    "a.encrypted_details, a.ip_address, a.created_at"
)
_DATA_FROM = text(
    "audit_logs a LEFT JOIN users u ON a.user_id = u.id LEFT JOIN devices d ON a.device_id = d.id"
)
# log_action's INSERT; the platform runs it as the postgres superuser.
_LOG_ACTION = text(
    "INSERT INTO audit_logs "
    "(tenant_id, user_id, action, resource_type, resource_id, "
    "device_id, details, encrypted_details, ip_address) "
    "VALUES (:tenant_id, :user_id, :action, :resource_type, "
    ":resource_id, :device_id, CAST(:details AS jsonb), "
    ":encrypted_details, :ip_address)"
)


def dsn(url: str) -> str:
    """asyncpg's DSN for a SQLAlchemy URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@asynccontextmanager
async def connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection to url for the block."""
    conn = await asyncpg.connect(dsn(url))
    try:
        yield conn
    finally:
        await conn.close()


async def create_platform_database(admin_url: str, name: str) -> str:
    """Create database `name` on admin_url's server and build the platform's schema in it.

    admin_url must be a superuser's (the platform migrates as postgres; BYPASSRLS and
    GRANT SET ON PARAMETER need one). Returns the owner URL of the new database.
    """
    async with connection(admin_url) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
    owner_url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    async with connection(owner_url) as conn:
        await conn.execute(_ROLES)
        async with conn.transaction():
            await conn.execute(_SCHEMA)
    return owner_url


@asynccontextmanager
async def platform_database(admin_url: str) -> AsyncIterator[str]:
    """A new replica of the platform's database for the block; its owner (superuser) URL."""
    name = f"platform_replica_{uuid.uuid4().hex[:12]}"
    try:
        yield await create_platform_database(admin_url, name)
    finally:
        async with connection(admin_url) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class MigratedPlatform:
    """A replica after `alembic upgrade head`, and the service's insert-only login to it."""

    owner_url: str
    writer_url: str


@asynccontextmanager
async def migrated_platform_database(admin_url: str) -> AsyncIterator[MigratedPlatform]:
    """A replica migrated to head with a writer login of its own, both gone after the block."""
    role = f"platform_writer_{uuid.uuid4().hex[:8]}"
    try:
        async with platform_database(admin_url) as owner_url:
            # migrate() and writer_url() run event loops of their own: each in a thread.
            await asyncio.to_thread(migrate, owner_url)
            writer = await asyncio.to_thread(
                writer_url, owner_url, role=role, password=uuid.uuid4().hex
            )
            yield MigratedPlatform(owner_url=owner_url, writer_url=writer)
    finally:
        async with connection(admin_url) as admin:
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')


async def add_tenant(conn: asyncpg.Connection, name: str | None = None) -> str:
    """A new tenant (as the platform's superuser); its id."""
    return str(
        await conn.fetchval(
            "INSERT INTO tenants (name) VALUES ($1) RETURNING id",
            name or f"tenant-{uuid.uuid4().hex[:8]}",
        )
    )


async def add_user(conn: asyncpg.Connection, tenant_id: str, email: str | None = None) -> str:
    """A new user of the tenant; its id."""
    return str(
        await conn.fetchval(
            "INSERT INTO users (email, tenant_id) VALUES ($1, $2) RETURNING id",
            email or f"{uuid.uuid4().hex[:8]}@example.net",
            uuid.UUID(tenant_id),
        )
    )


async def add_device(conn: asyncpg.Connection, tenant_id: str, hostname: str | None = None) -> str:
    """A new device of the tenant; its id."""
    return str(
        await conn.fetchval(
            "INSERT INTO devices (tenant_id, hostname) VALUES ($1, $2) RETURNING id",
            uuid.UUID(tenant_id),
            hostname or f"router-{uuid.uuid4().hex[:8]}",
        )
    )


@dataclass(frozen=True)
class PlatformTenant:
    """A tenant with one user and one device, as the platform has them."""

    id: str
    user_id: str
    email: str
    device_id: str
    hostname: str


async def add_tenant_with_user_and_device(conn: asyncpg.Connection) -> PlatformTenant:
    """A new tenant with a user and a device of its own."""
    tenant = await add_tenant(conn)
    email, hostname = f"{uuid.uuid4().hex[:8]}@example.net", f"router-{uuid.uuid4().hex[:8]}"
    return PlatformTenant(
        id=tenant,
        user_id=await add_user(conn, tenant, email),
        email=email,
        device_id=await add_device(conn, tenant, hostname),
        hostname=hostname,
    )


@asynccontextmanager
async def as_app_user(owner_url: str, tenant_id: str) -> AsyncIterator[AsyncConnection]:
    """A transaction as the API's RLS-bound app_user, the tenant set as the platform sets it."""
    engine = create_async_engine(owner_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("SET LOCAL ROLE app_user"))
            # app/database.py's set_tenant_context: validated as a UUID, then SET LOCAL.
            await conn.execute(text(f"SET LOCAL app.current_tenant = '{uuid.UUID(tenant_id)}'"))
            yield conn
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class AuditPage:
    """What the audit API's list query returns: the rows as mappings and the total count."""

    items: list[dict[str, Any]]
    total: int


async def list_audit_logs(
    conn: AsyncConnection, tenant_id: str, *, page: int = 1, per_page: int = 100
) -> AuditPage:
    """The audit API's list query and its count for a tenant, on conn as it stands."""
    # The API filters on the tenant it was asked for, RLS on the one set; they are the same.
    where = and_(text("a.tenant_id = :tenant_id"))
    params = {"tenant_id": tenant_id}
    total = (
        await conn.execute(
            select(func.count()).select_from(text("audit_logs a")).where(where), params
        )
    ).scalar() or 0
    result = await conn.execute(
        select(_DATA_COLUMNS)
        .select_from(_DATA_FROM)
        .where(where)
        .order_by(text("a.created_at DESC"))
        .limit(per_page)
        .offset((page - 1) * per_page),
        params,
    )
    return AuditPage(items=[dict(row) for row in result.mappings().all()], total=total)


async def read_audit_logs(
    owner_url: str, tenant_id: str, *, page: int = 1, per_page: int = 100
) -> AuditPage:
    """The platform's audit list for a tenant as its API reads it: app_user, tenant set."""
    async with as_app_user(owner_url, tenant_id) as conn:
        return await list_audit_logs(conn, tenant_id, page=page, per_page=per_page)


def platform_details(openbao: Any, tenant_id: str, item: dict[str, Any]) -> dict[str, Any]:
    """The details the audit API returns for a listed row (its _decrypt_audit_details).

    encrypted_details first, decrypted with the tenant's data key; on failure or without
    it, the plaintext details; else {}. openbao is the platform's OpenBao (root token).
    """
    encrypted = item.get("encrypted_details")
    if encrypted:
        key = f"tenant_{tenant_id}_data"
        try:
            answer = openbao.as_root("POST", f"transit/decrypt/{key}", {"ciphertext": encrypted})
            decrypted: dict[str, Any] = json.loads(base64.b64decode(answer["data"]["plaintext"]))
        except RuntimeError:
            pass
        else:
            return decrypted
    plaintext: dict[str, Any] = item.get("details") or {}
    return plaintext


async def log_action(
    conn: AsyncConnection,
    *,
    tenant_id: str,
    user_id: str | None,
    action: str,
    resource_type: str | None = None,
    resource_id: str | None = None,
    device_id: str | None = None,
    details: str = "{}",
    encrypted_details: str | None = None,
    ip_address: str | None = None,
) -> None:
    """The platform's own audit write (log_action's INSERT, without our columns)."""
    await conn.execute(
        _LOG_ACTION,
        {
            "tenant_id": tenant_id,
            "user_id": user_id,
            "action": action,
            "resource_type": resource_type,
            "resource_id": resource_id,
            "device_id": device_id,
            "details": details,
            "encrypted_details": encrypted_details,
            "ip_address": ip_address,
        },
    )


@asynccontextmanager
async def as_superuser(owner_url: str) -> AsyncIterator[AsyncConnection]:
    """A transaction as the platform's postgres superuser (its migrations and log_action)."""
    engine = create_async_engine(owner_url)
    try:
        async with engine.begin() as conn:
            yield conn
    finally:
        await engine.dispose()
