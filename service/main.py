"""Wiring: broker, app, start-up checks, HTTP routes; run as `faststream run service.main:app`."""

import asyncio
import logging
import signal
from typing import Any

from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.asgi.response import JSONResponse
from faststream.asgi.types import Scope
from prometheus_client import CONTENT_TYPE_LATEST

from service import __version__, logs, metrics
from service.broker import SessionAuditBroker, nats_security
from service.config import get_settings, redact, without_credentials
from service.db import get_engine
from service.docs import SessionAuditAsyncAPI, asyncapi_routes
from service.encryption.at_rest import get_transit
from service.encryption.lifecycle import start_encryption, stop_encryption
from service.handlers import router, session_ends
from service.repository import head_revision, ping, schema_revision
from service.trail.lifecycle import load_trail_key, start_trail_anchoring, stop_trail_anchoring

settings = get_settings()
logs.configure(settings.log_level, settings.log_format)
logger = logging.getLogger("service")

servers = [server.strip() for server in settings.nats_url.split(",")]
broker = SessionAuditBroker(
    settings,
    servers=servers,
    # The AsyncAPI document names the servers; credentials in NATS_URL must not go with them.
    specification_url=[without_credentials(server) for server in servers],
    # Lets a batch in flight commit and settle before the connection drains on shutdown.
    graceful_timeout=settings.graceful_timeout_s,
    security=nats_security(settings),
    max_reconnect_attempts=-1,
    reconnect_time_wait=2,
    # FastStream logs every message at INFO by default; a batch is one line at DEBUG.
    log_level=logging.DEBUG,
    logger=logging.getLogger("faststream.broker"),
    middlewares=[metrics.faststream_middleware()],
)
broker.include_router(router)


class StartupError(SystemExit):
    """The service cannot run against this database as it is; the message says what to do."""


async def prepare() -> None:
    """Start-up checks, once: the schema, then OpenBao's token (each stops a wrong start)."""
    if _prepared.is_set():  # done before the server started (run); say each fact once
        return
    await check_schema()
    load_trail_key(settings)
    await start_encryption(settings)
    _prepared.set()


async def check_schema() -> None:
    """Stop start-up unless the database schema is at the revision this code needs."""
    engine = get_engine()
    try:
        current = await asyncio.wait_for(schema_revision(engine), timeout=10)
    except Exception as error:
        message = f"cannot reach the database at DATABASE_URL ({redact(settings.database_url)}):"
        raise StartupError(f"{message} {redact(str(error))}") from None
    needed = head_revision()
    if current != needed:
        raise StartupError(
            f"database schema is at revision {current or '(none)'} but this service needs "
            f"{needed}: run `make migrate` (alembic upgrade head) first"
        )
    logger.info("database schema at revision %s", current)


_prepared = asyncio.Event()


async def start_anchoring() -> None:
    """Anchor the trail's seals through the broker's connection once it is up."""
    start_trail_anchoring(lambda: broker.config.connection_state.stream, get_engine(), settings)


async def release() -> None:
    """Close pooled connections (database, OpenBao) after the broker has drained."""
    await stop_trail_anchoring()
    await stop_encryption()
    await get_engine().dispose()


@get(include_in_schema=False)
async def healthz(scope: Scope) -> AsgiResponse:
    """Liveness: the process answers."""
    return JSONResponse({"status": "alive"}, 200)


@get(include_in_schema=False)
async def readyz(scope: Scope) -> AsgiResponse:
    """Readiness: NATS connected, consumer bound, database (and OpenBao, if used) answering."""
    checks = {
        "nats": await broker.ping(timeout=1.0),
        "stream": broker.stream_ready.is_set(),
        "consumer": session_ends.subscription is not None,
        "database": await _database_answers(),
    }
    transit = get_transit()
    if transit is not None:
        checks["openbao"] = await _openbao_answers()
    ready = all(checks.values())
    body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
    if not ready:
        body["down"] = [name for name, ok in checks.items() if not ok]
    return JSONResponse(body, 200 if ready else 503)


@get(include_in_schema=False)
async def prometheus_metrics(scope: Scope) -> AsgiResponse:
    """Prometheus metrics, with the consumer's lag read from JetStream now."""
    pending = ack_pending = None
    if session_ends.subscription is not None:
        try:
            info = await asyncio.wait_for(session_ends.subscription.consumer_info(), 1.0)
        except Exception:  # lag is unknown this scrape; the rest is still worth serving
            logger.debug("consumer info unavailable for /metrics", exc_info=True)
        else:
            pending, ack_pending = info.num_pending, info.num_ack_pending
    body = metrics.render(pending, ack_pending)
    return AsgiResponse(body, 200, {"Content-Type": CONTENT_TYPE_LATEST})


async def _openbao_answers() -> bool:
    transit = get_transit()
    if transit is None:
        return True
    try:
        return await asyncio.wait_for(transit.health(), timeout=2.0)
    except TimeoutError:
        return False


async def _database_answers() -> bool:
    try:
        await asyncio.wait_for(ping(get_engine()), timeout=2.0)
    except Exception:
        return False
    return True


specification = SessionAuditAsyncAPI(
    broker,
    title="session-audit",
    version=__version__,
    description=(
        "Consumes the SSH relay's session-end events from JetStream and writes one "
        "`audit_logs` row per session, as the platform's audit service writes it: the "
        "session's details encrypted at rest with the tenant's OpenBao Transit data key "
        "(`encrypted_details`, `details` = `{}`). Invalid messages are dead-lettered with "
        "a reason."
    ),
    schema_version="3.0.0",
)


class SessionAuditApp(AsgiFastStream):
    """The ASGI app, listening where the settings say unless the command line overrides it."""

    async def run(
        self,
        log_level: int = logging.INFO,
        run_extra_options: dict[str, Any] | None = None,
    ) -> None:
        """Check the schema, then serve HTTP on HTTP_HOST:HTTP_PORT and run the broker."""
        # Checked here too, before the server starts, so that a wrong schema or token ends
        # the process with its one line rather than inside the ASGI lifespan's traceback.
        await prepare()
        options = {
            "host": settings.http_host,
            "port": settings.http_port,
            # Probes hit /readyz every few seconds; those lines would drown the rest.
            "access_log": "false",
            # uvicorn keeps its own handlers unless told not to; ours format every line.
            "log_config": None,
            **(run_extra_options or {}),
        }
        # uvicorn handles SIGTERM and SIGINT (Ctrl-C) with a graceful shutdown, then
        # re-raises the signal to whatever handler was there before; with this one the
        # process exits 0 after that shutdown, not as killed by the signal (143, 130), and
        # a signal before uvicorn starts still ends it.
        signal.signal(signal.SIGTERM, _exit_cleanly)
        signal.signal(signal.SIGINT, _exit_cleanly)
        await super().run(log_level, options)


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


app = SessionAuditApp(
    broker,
    asgi_routes=[
        ("/healthz", healthz),
        ("/readyz", readyz),
        ("/metrics", prometheus_metrics),
        *asyncapi_routes(specification),
    ],
    specification=specification,
    logger=logging.getLogger("faststream.app"),
    on_startup=[prepare],
    after_startup=[start_anchoring],
    after_shutdown=[release],
)
