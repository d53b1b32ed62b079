"""Every SQL statement of the service; one transaction per batch."""

import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from service.events import SessionEndEvent

ACTION = "ssh_session_end"
RESOURCE_TYPE = "device"
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"

# One statement for the whole batch: the arrays travel in one round trip, the row and
# its details are built by PostgreSQL (on its own core, not the consumer's), and the
# unique idempotency key turns redeliveries and repeated end events into no-ops.
# ip_address is varchar(45), as in the platform's table: inet written there would be text
# like 203.0.113.7/32, so the address goes through inet (PostgreSQL's one spelling of it,
# ::ffff:203.0.113.7 included, which Python 3.11 writes ::ffff:cb00:7107) and host() stores
# it bare. The longest such text is 39 characters (events.py strips IPv6 zones).
_INSERT = sa.text(
    """
    WITH written AS (
        INSERT INTO audit_logs (tenant_id, user_id, action, resource_type, resource_id,
                                device_id, details, ip_address, created_at, occurred_at,
                                idempotency_key)
        SELECT e.tenant_id, e.user_id, CAST(:action AS text), :resource_type, e.device_id::text,
               e.device_id,
               jsonb_build_object(
                   'session_id', e.session_id,
                   'start_time', replace(to_char(e.start_time AT TIME ZONE 'UTC',
                                                 :time_format), '.000000Z', 'Z'),
                   'end_time', replace(to_char(e.end_time AT TIME ZONE 'UTC',
                                               :time_format), '.000000Z', 'Z'),
                   'duration_seconds',
                       floor(extract(epoch FROM e.end_time - e.start_time))::bigint,
                   'source_ip', e.source_ip,
                   'reason', e.reason),
               host(e.ip_address), e.end_time, e.end_time, :action || ':' || e.session_id
        FROM unnest(CAST(:session_ids AS uuid[]), CAST(:tenant_ids AS uuid[]),
                    CAST(:user_ids AS uuid[]), CAST(:device_ids AS uuid[]),
                    CAST(:start_times AS timestamptz[]), CAST(:end_times AS timestamptz[]),
                    CAST(:source_ips AS text[]), CAST(:ips AS inet[]),
                    CAST(:reasons AS text[]))
             AS e(session_id, tenant_id, user_id, device_id, start_time, end_time,
                  source_ip, ip_address, reason)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING 1
    )
    SELECT count(*) FROM written
    """
)
# RFC 3339 in UTC; a zero fraction is dropped in the statement (the relay sends whole
# seconds), so details read like the relay's own times.
_TIME_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'


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


def _params(events: Sequence[SessionEndEvent]) -> dict[str, object]:
    return {
        "action": ACTION,
        "resource_type": RESOURCE_TYPE,
        "time_format": _TIME_FORMAT,
        "session_ids": [e.session_id for e in events],
        "tenant_ids": [e.tenant_id for e in events],
        "user_ids": [e.user_id for e in events],
        "device_ids": [e.device_id for e in events],
        "start_times": [e.start_time for e in events],
        "end_times": [e.end_time for e in events],
        "source_ips": [e.source_ip for e in events],
        "ips": [e.ip_address for e in events],
        "reasons": [e.reason for e in events],
    }


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
    engine: AsyncEngine, *, events: Sequence[SessionEndEvent]
) -> InsertResult:
    """Write one audit row per new session in one transaction; isolate rows the database refuses."""
    if not events:
        return InsertResult()
    # The first event of a session in the batch is the one kept; rows go in key order,
    # so that replicas writing overlapping batches take their locks in the same order
    # and do not deadlock.
    first = {event.session_id: event for event in reversed(events)}
    ordered = [first[key] for key in sorted(first)]
    for attempt in range(_CONFLICT_RETRIES):
        try:
            async with engine.begin() as conn:
                written = (await conn.execute(_INSERT, _params(ordered))).scalar_one()
            return InsertResult(inserted=written, duplicates=len(events) - written)
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
            return await _insert_one_by_one(conn, events)
    except (DBAPIError, OSError) as error:
        raise DatabaseUnavailable(error) from error


async def _insert_one_by_one(
    conn: AsyncConnection, events: Sequence[SessionEndEvent]
) -> InsertResult:
    result = InsertResult()
    for position, event in enumerate(events):
        try:
            async with conn.begin_nested():
                written = (await conn.execute(_INSERT, _params([event]))).scalar_one()
        except DBAPIError as error:
            if not _refused_by_data(error):
                raise
            result.refused[position] = _describe(error)
            continue
        result.inserted += written
        result.duplicates += 1 - written
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
GROUP_ROLES = {"writer": "audit_writer", "reader": "audit_reader"}


async def ensure_login_role(
    engine: AsyncEngine, *, name: str, password: str | None, group: str
) -> bool:
    """Create login role name as a member of audit_writer or audit_reader; False if it exists."""
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
