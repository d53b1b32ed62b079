"""The trail commands' connections: PostgreSQL as the verifier, NATS for the anchor.

Each failure becomes a CannotVerify whose message names what is missing and what to do.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import nats
from faststream.nats.security import parse_security
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy.engine import make_url

from service.broker import nats_security
from service.config import Settings, redact
from service.repository import tls_context
from service.trail.anchor import AnchorReader
from service.trail.keys import TrustedKeys
from service.trail.verify import CannotVerify, Progress, Report, verify_trail

_CAN_VERIFY = """
    SELECT current_user AS login, to_regclass('audit_seals') IS NOT NULL AS migrated,
           r.rolsuper OR r.rolbypassrls
           OR EXISTS (SELECT FROM pg_roles AS v WHERE v.rolname = 'audit_verifier'
                      AND pg_has_role(current_user, v.oid, 'MEMBER')) AS sees_all
    FROM pg_roles AS r WHERE r.rolname = current_user
"""


async def connect_database(settings: Settings) -> asyncpg.Connection:
    """A connection to DATABASE_URL, or CannotVerify saying why there is none."""
    url = make_url(settings.database_url)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        return await asyncpg.connect(
            dsn,
            ssl=tls_context(settings.database_sslmode, settings.database_ssl_root_cert),
            timeout=10,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        shown = redact(settings.database_url)
        msg = f"cannot connect to the database at DATABASE_URL={shown}: {redact(str(error))}"
        raise CannotVerify(msg) from None


async def open_database(settings: Settings) -> asyncpg.Connection:
    """A connection to DATABASE_URL that may verify: audit_seals exists, every row visible."""
    conn = await connect_database(settings)
    shown = redact(settings.database_url)
    try:
        found = await conn.fetchrow(_CAN_VERIFY)
    except asyncpg.PostgresError as error:
        await conn.close()
        raise CannotVerify(f"cannot check the database at {shown}: {error}") from None
    if found is None:  # no pg_roles row for current_user: cannot happen on a live server
        await conn.close()
        raise CannotVerify(f"cannot tell which login DATABASE_URL is at {shown}")
    if not found["migrated"]:
        await conn.close()
        msg = f"no table audit_seals at {shown}: migrate the database (make migrate) first"
        raise CannotVerify(msg)
    if not found["sees_all"]:
        await conn.close()
        # Row-level security would hide rows from it, and hidden rows would read as deleted.
        msg = (
            f"DATABASE_URL's login {found['login']} is not in audit_verifier: run the verifier "
            "as a login in that role, which reads every tenant's rows and changes nothing"
        )
        raise CannotVerify(msg)
    return conn


@asynccontextmanager
async def open_jetstream(settings: Settings) -> AsyncIterator[JetStreamContext]:
    """JetStream on NATS_URL, authenticated as the service is; CannotVerify if unreachable."""
    servers = [server.strip() for server in settings.nats_url.split(",")]
    said: list[str] = []

    async def remember(error: Exception) -> None:  # instead of nats-py's traceback log
        said.append(redact(str(error)))

    try:
        nc = await nats.connect(
            servers,
            **parse_security(nats_security(settings)),
            connect_timeout=5,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,
            error_cb=remember,
        )
    except (NatsError, OSError, TimeoutError) as error:
        cause = said[-1] if said else redact(str(error)) or type(error).__name__
        msg = (
            f"cannot reach NATS at NATS_URL={redact(settings.nats_url)} for the anchor: "
            f"{cause} (--no-anchor verifies without it)"
        )
        raise CannotVerify(msg) from None
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def open_anchor(js: JetStreamContext, settings: Settings) -> AnchorReader | None:
    """The anchor stream as it is now; None if it does not exist."""
    name = settings.trail_anchor_stream
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        return None
    except (NatsError, TimeoutError) as error:
        msg = f"cannot read the anchor stream {name}: {error} (--no-anchor verifies without it)"
        raise CannotVerify(msg) from None
    return AnchorReader(js, name, info)


async def verify_with_settings(
    settings: Settings,
    *,
    trusted: TrustedKeys,
    allow_unsigned: bool,
    since: int,
    use_anchor: bool,
    progress: Progress | None = None,
) -> Report:
    """Connect as the settings say, then verify_trail (against the anchor unless told not to)."""
    conn = await open_database(settings)
    rows_conn = None
    try:
        # A second connection fetches the next page's rows while this one is hashed.
        rows_conn = await connect_database(settings)
        if not use_anchor:
            return await verify_trail(
                conn,
                trusted=trusted,
                allow_unsigned=allow_unsigned,
                since=since,
                progress=progress,
                rows_conn=rows_conn,
            )
        async with open_jetstream(settings) as js:
            anchor = await open_anchor(js, settings)
            if anchor is None and await conn.fetchval("SELECT EXISTS (SELECT FROM audit_seals)"):
                msg = (
                    f"no anchor stream {settings.trail_anchor_stream} on NATS although seals "
                    "exist: nothing anchored them, or the stream was deleted (--no-anchor "
                    "verifies without it)"
                )
                raise CannotVerify(msg)
            return await verify_trail(
                conn,
                trusted=trusted,
                allow_unsigned=allow_unsigned,
                since=since,
                anchor=anchor,
                progress=progress,
                rows_conn=rows_conn,
            )
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
        # The connection was lost, or a grant is missing: what was found so far proves nothing.
        msg = f"the database failed during the verification: {redact(str(error))}"
        raise CannotVerify(msg) from None
    except (NatsError, TimeoutError) as error:
        raise CannotVerify(f"NATS failed while reading the anchor: {error}") from None
    finally:
        await conn.close()
        if rows_conn is not None:
            await rows_conn.close()
