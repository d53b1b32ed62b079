"""Every SQL statement of the service; one transaction per batch."""

import json
import re
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from service.events import SessionEndEvent
from service.trail.hashing import RowImage
from service.trail.keys import Signer
from service.trail.seals import Seal, SealedRow, append_seal

ACTION = "ssh_session_end"
RESOURCE_TYPE = "device"
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"

# One statement for the whole batch: the arrays travel in one round trip, and the unique
# idempotency key turns redeliveries and repeated end events into no-ops.
# ip_address is varchar(45), as in the platform's table: inet written there would be text
# like 203.0.113.7/32, so the address goes through inet (PostgreSQL's one spelling of it,
# ::ffff:203.0.113.7 included, which Python 3.11 writes ::ffff:cb00:7107) and host() stores
# it bare. The longest such text is 39 characters (events.py strips IPv6 zones).
# id and ingested_at are chosen in `input`, not by column defaults, and the written rows
# are read back from `input`: RETURNING table columns would need the writer to be granted
# SELECT on them, and it may read only the idempotency key.
_INSERT = sa.text(
    """
    WITH input AS (
        SELECT gen_random_uuid() AS id, now() AS ingested_at, e.session_id, e.tenant_id,
               e.user_id, e.device_id, e.end_time, CAST(e.details AS jsonb) AS details,
               e.encrypted_details, host(e.ip_address) AS ip_address,
               CAST(:action AS text) || ':' || e.session_id AS idempotency_key
        FROM unnest(CAST(:session_ids AS uuid[]), CAST(:tenant_ids AS uuid[]),
                    CAST(:user_ids AS uuid[]), CAST(:device_ids AS uuid[]),
                    CAST(:end_times AS timestamptz[]), CAST(:details AS text[]),
                    CAST(:encrypted AS text[]), CAST(:ips AS inet[]))
             AS e(session_id, tenant_id, user_id, device_id, end_time, details,
                  encrypted_details, ip_address)
    ), written AS (
        INSERT INTO audit_logs (id, tenant_id, user_id, action, resource_type, resource_id,
                                device_id, details, encrypted_details, ip_address, created_at,
                                occurred_at, ingested_at, idempotency_key)
        SELECT id, tenant_id, user_id, :action, :resource_type, device_id::text, device_id,
               details, encrypted_details, ip_address, end_time, end_time, ingested_at,
               idempotency_key
        FROM input
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING idempotency_key
    )
    SELECT i.id, i.session_id, i.ip_address, i.ingested_at
    FROM input AS i JOIN written USING (idempotency_key)
    """
)


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One audit row to write: the event, and its details as they are stored."""

    event: SessionEndEvent
    # The `details` column as JSON text: the details themselves, or {} when encrypted.
    details: str
    # The Transit ciphertext (vault:v1:…) of the details, or None when stored in plaintext.
    encrypted_details: str | None = None
    # `details` as a value, when the caller has it: the trail hashes it, and parsing the
    # text again would cost as much as the hash.
    details_value: Mapping[str, Any] | None = None


_EMPTY: Mapping[str, Any] = {}


def plaintext_row(event: SessionEndEvent) -> SessionRow:
    """The row with its details in plaintext (no encryption configured, or its fallback)."""
    details = event.details()
    return SessionRow(event, json.dumps(details), details_value=details)


def encrypted_row(event: SessionEndEvent, ciphertext: str) -> SessionRow:
    """The row with its details encrypted: `details` holds {}, as the platform writes it."""
    return SessionRow(event, "{}", ciphertext, _EMPTY)


@dataclass(frozen=True, slots=True)
class WrittenRow:
    """What the database chose for a row this batch inserted."""

    id: UUID
    session_id: UUID
    ip_address: str | None
    ingested_at: datetime


class DatabaseUnavailable(Exception):
    """The database could not take the batch now; retrying later may succeed."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(_describe(error))
        orig = getattr(error, "orig", None) or error
        sqlstate = getattr(orig, "sqlstate", None)
        # A bounded label: the SQLSTATE class, or the exception type for network errors.
        self.kind = f"sqlstate_{sqlstate[:2]}" if sqlstate else type(orig).__name__


@dataclass
class InsertResult:
    """What became of a batch: rows written, duplicates skipped, rows the database refused."""

    inserted: int = 0
    duplicates: int = 0
    refused: dict[int, str] = field(default_factory=dict)
    written: list[WrittenRow] = field(default_factory=list, compare=False)
    # The trail's seal over the written rows, committed with them; None when none were.
    seal: Seal | None = field(default=None, compare=False)
    # Time spent sealing inside the transaction (the trail's share of the write).
    seal_seconds: float = field(default=0.0, compare=False)


def tls_context(sslmode: str, root_cert: Path | None) -> ssl.SSLContext | bool:
    """asyncpg's `ssl` argument for a libpq-style sslmode."""
    if sslmode == "disable":
        return False
    context = ssl.create_default_context(cafile=str(root_cert) if root_cert else None)
    if sslmode == "require":  # encrypted, server not verified (libpq's meaning)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif sslmode == "verify-ca":  # the certificate chains to root_cert; any host name
        context.check_hostname = False
    return context


def create_engine(
    url: str, *, sslmode: str = "disable", root_cert: Path | None = None
) -> AsyncEngine:
    """An asyncpg engine whose pool survives database restarts."""
    # pre-ping replaces connections that died with a restarted server before use;
    # the timeouts keep a hung database well inside the consumer's ack wait.
    return create_async_engine(
        url,
        pool_size=4,
        max_overflow=4,
        pool_pre_ping=True,
        connect_args={
            "timeout": 5,
            "command_timeout": 30,
            "ssl": tls_context(sslmode, root_cert),
        },
    )


def _params(rows: Sequence[SessionRow]) -> dict[str, object]:
    return {
        "action": ACTION,
        "resource_type": RESOURCE_TYPE,
        "session_ids": [r.event.session_id for r in rows],
        "tenant_ids": [r.event.tenant_id for r in rows],
        "user_ids": [r.event.user_id for r in rows],
        "device_ids": [r.event.device_id for r in rows],
        "end_times": [r.event.end_time for r in rows],
        "details": [r.details for r in rows],
        "encrypted": [r.encrypted_details for r in rows],
        "ips": [r.event.ip_address for r in rows],
    }


async def write_rows(conn: AsyncConnection, rows: Sequence[SessionRow]) -> list[WrittenRow]:
    """The batch INSERT alone, in conn's transaction: no seal (the trail's bench and tests)."""
    result = await conn.execute(_INSERT, _params(rows))
    return [WrittenRow(*record) for record in result.all()]


# A deadlock or serialization failure says nothing about the rows: try again at once.
_RETRY_AT_ONCE = {"40P01", "40001"}
_CONFLICT_RETRIES = 3


def _sqlstate(error: DBAPIError) -> str:
    return getattr(error.orig, "sqlstate", None) or ""


def _refused_by_data(error: DBAPIError) -> bool:
    # Classes 22 (data exception) and 23 (integrity violation) depend on the row,
    # so retrying cannot help; anything else is the database's state, not the row's.
    return _sqlstate(error)[:2] in {"22", "23"}


async def insert_session_ends(
    engine: AsyncEngine,
    *,
    events: Sequence[SessionEndEvent] = (),
    rows: Sequence[SessionRow] | None = None,
    signer: Signer | None = None,
) -> InsertResult:
    """Write one audit row per new session in one transaction; isolate rows the database refuses.

    `rows` carry their details as stored (encrypted or not); plain `events` are written
    with plaintext details. Positions in `refused` index whichever was given. The rows
    written are sealed in the same transaction (signed by signer; unsigned without one),
    so that no row is ever committed outside the trail.
    """
    batch = list(rows) if rows is not None else [plaintext_row(e) for e in events]
    if not batch:
        return InsertResult()
    # The first event of a session in the batch is the one kept; rows go in key order,
    # so that replicas writing overlapping batches take their locks in the same order
    # and do not deadlock.
    first = {row.event.session_id: row for row in reversed(batch)}
    ordered = [first[key] for key in sorted(first)]
    for attempt in range(_CONFLICT_RETRIES):
        try:
            async with engine.begin() as conn:
                written = await write_rows(conn, ordered)
                began = time.perf_counter()
                seal = await _seal(conn, ordered, written, signer)
                sealing = time.perf_counter() - began
            return InsertResult(
                inserted=len(written),
                duplicates=len(batch) - len(written),
                written=written,
                seal=seal,
                seal_seconds=sealing,
            )
        except DBAPIError as error:
            if _sqlstate(error) in _RETRY_AT_ONCE and attempt + 1 < _CONFLICT_RETRIES:
                continue
            if not _refused_by_data(error):
                raise DatabaseUnavailable(error) from error
            break
        except OSError as error:
            raise DatabaseUnavailable(error) from error
    try:
        async with engine.begin() as conn:
            result = await _insert_one_by_one(conn, batch)
            began = time.perf_counter()
            result.seal = await _seal(conn, batch, result.written, signer)
            result.seal_seconds = time.perf_counter() - began
            return result
    except (DBAPIError, OSError) as error:
        raise DatabaseUnavailable(error) from error


async def _seal(
    conn: AsyncConnection,
    rows: Sequence[SessionRow],
    written: Sequence[WrittenRow],
    signer: Signer | None,
) -> Seal | None:
    """Append the trail's seal over the rows just written (docs/trail.md)."""
    # The first event of a session is the one its row holds (reversed: the first wins).
    by_session = {row.event.session_id: row for row in reversed(rows)}
    return await append_seal(
        conn,
        rows=[_sealed(by_session[w.session_id], w) for w in written],
        signer=signer,
    )


def _sealed(row: SessionRow, written: WrittenRow) -> SealedRow:
    """The row as stored, built from what was inserted and what the database chose.

    Built, not read back: the writer may not SELECT audit_logs. The verifier recomputes
    every hash from the stored row, so a difference here would show as a finding.
    """
    event = row.event
    image = RowImage(
        id=written.id,
        tenant_id=event.tenant_id,
        user_id=event.user_id,
        action=ACTION,
        resource_type=RESOURCE_TYPE,
        resource_id=str(event.device_id),
        device_id=event.device_id,
        details=json.loads(row.details) if row.details_value is None else row.details_value,
        encrypted_details=row.encrypted_details,
        ip_address=written.ip_address,
        created_at=event.end_time,
        occurred_at=event.end_time,
        ingested_at=written.ingested_at,
        idempotency_key=f"{ACTION}:{event.session_id}",
    )
    return SealedRow(image=image, session_id=event.session_id)


async def _insert_one_by_one(conn: AsyncConnection, rows: Sequence[SessionRow]) -> InsertResult:
    result = InsertResult()
    for position, row in enumerate(rows):
        try:
            async with conn.begin_nested():
                written = await write_rows(conn, [row])
        except DBAPIError as error:
            if not _refused_by_data(error):
                raise
            result.refused[position] = _describe(error)
            continue
        result.written += written
        result.inserted += len(written)
        result.duplicates += 1 - len(written)
    return result


def _describe(error: BaseException) -> str:
    orig = getattr(error, "orig", None) or error
    sqlstate = getattr(orig, "sqlstate", None)
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return f"{text} (SQLSTATE {sqlstate})" if sqlstate else text


async def ping(engine: AsyncEngine) -> None:
    """Raise unless the database answers a trivial query."""
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))


def head_revision() -> str | None:
    """The newest migration revision shipped with this code."""
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


async def schema_revision(engine: AsyncEngine) -> str | None:
    """The migration revision the database is at, or None if it was never migrated."""
    async with engine.connect() as conn:
        exists = await conn.scalar(sa.text("SELECT to_regclass('alembic_version') IS NOT NULL"))
        if not exists:
            return None
        revision = await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
        return str(revision) if revision is not None else None


_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
GROUP_ROLES = {"writer": "audit_writer", "reader": "audit_reader", "verifier": "audit_verifier"}


async def ensure_login_role(
    engine: AsyncEngine, *, name: str, password: str | None, group: str
) -> bool:
    """Create login role name as a member of a GROUP_ROLES group; False if it exists."""
    if not _ROLE_NAME.fullmatch(name):
        msg = f"role name {name!r} must be lower-case letters, digits and _"
        raise ValueError(msg)
    async with engine.begin() as conn:
        if await conn.scalar(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": name}):
            return False
        # format() quotes the name and the password server-side; neither is spliced here.
        statement = await conn.scalar(
            sa.text(
                "SELECT format('CREATE ROLE %I LOGIN IN ROLE %I', CAST(:n AS text), "
                "CAST(:g AS text)) || coalesce(format(' PASSWORD %L', CAST(:p AS text)), '')"
            ),
            {"n": name, "g": GROUP_ROLES[group], "p": password},
        )
        await conn.exec_driver_sql(str(statement))
    return True
