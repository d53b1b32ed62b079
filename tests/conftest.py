"""Real servers for the whole run: nats-server and PostgreSQL on free ports in a temp dir.

They start in pytest_configure, before any test module imports the service, because the
service reads its settings once at import. With NATS_URL / DATABASE_URL set, the run uses
those servers instead: a database of its own is created there, and the durable and the
dead-letter stream carry this run's id, so nothing that is already there is touched.
"""

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from nats.js.errors import NotFoundError
from sqlalchemy.engine import URL, make_url

from service.dev.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from service.dev.publisher import ensure_publisher_stream
from service.dev.stack import migrate, writer_url
from service.trail.keys import generate_key_file

RUN_ID = uuid.uuid4().hex[:8]
_servers = ExitStack()
_workdir = Path(tempfile.mkdtemp(prefix="session-audit-tests-"))
_external_nats = False
_owner_url: URL
WRITER_ROLE = f"session_audit_test_writer_{RUN_ID}"
_external_database: tuple[str, str] | None = None  # (admin dsn, database name)


def _plain_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _create_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def pytest_configure(config: pytest.Config) -> None:
    """Start the servers (or adopt the ones in the environment) and migrate a fresh database."""
    global _external_database, _external_nats
    nats_url = os.environ.get("NATS_URL")
    _external_nats = bool(nats_url)
    if not nats_url:
        nats_url = _servers.enter_context(EmbeddedNats(_workdir / "nats")).url
    global _owner_url
    given = os.environ.get("DATABASE_URL")
    name = f"session_audit_test_{RUN_ID}"
    if given:
        admin = _plain_dsn(given)
        asyncio.run(_create_database(admin, name))
        _external_database = (admin, name)
        _owner_url = make_url(given).set(drivername="postgresql+asyncpg", database=name)
    else:
        postgres = _servers.enter_context(EmbeddedPostgres(_workdir / "postgres"))
        postgres.create_database(name)
        _owner_url = make_url(postgres.url(name))
    owner = _owner_url.render_as_string(hide_password=False)
    migrate(owner)
    # The service under test logs in as production's does: an insert-only writer.
    writer = writer_url(owner, role=WRITER_ROLE, password=uuid.uuid4().hex)
    # Every service process of the run signs its seals as production's must.
    signing_key = _workdir / "trail-signing.seed"
    key_id = generate_key_file(signing_key)
    os.environ.update(
        NATS_URL=nats_url,
        DATABASE_URL=writer,
        STREAM="DEVICE_EVENTS",
        DURABLE=f"session-audit-test-{RUN_ID}",
        DLQ_STREAM=f"AUDIT_DLQ_TEST_{RUN_ID}",
        HTTP_PORT=str(free_port()),
        TRAIL_SIGNING_KEY_FILE=str(signing_key),
        TRAIL_TRUSTED_KEYS=key_id,
        TRAIL_ANCHOR_STREAM=f"AUDIT_SEALS_TEST_{RUN_ID}",
    )
    asyncio.run(ensure_publisher_stream(nats_url, "DEVICE_EVENTS"))


async def _forget_run(nats_url: str) -> None:
    nc = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False)
    js = nc.jetstream()
    try:
        for delete in (
            js.delete_consumer("DEVICE_EVENTS", os.environ["DURABLE"]),
            js.delete_stream(os.environ["DLQ_STREAM"]),
            js.delete_stream(os.environ["TRAIL_ANCHOR_STREAM"]),
        ):
            with suppress(NotFoundError):
                await delete
    finally:
        await nc.close()


async def _drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'DROP ROLE IF EXISTS "{WRITER_ROLE}"')
    finally:
        await conn.close()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the servers this run started; clean up what it made on servers it was given."""
    try:
        if _external_nats:
            asyncio.run(_forget_run(os.environ["NATS_URL"]))
        if _external_database is not None:
            asyncio.run(_drop_database(*_external_database))
    finally:
        _servers.close()
        shutil.rmtree(_workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def workdir() -> Path:
    """A temp dir of this run, removed at its end."""
    return _workdir


@pytest.fixture(scope="session")
def nats_url() -> str:
    """URL of the NATS server of this run."""
    return os.environ["NATS_URL"]


@pytest.fixture(scope="session")
def database_url() -> str:
    """URL of this run's migrated database as its owner (who may also create databases)."""
    return _owner_url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def writer_database_url() -> str:
    """URL the service under test uses: the insert-only writer login (DATABASE_URL)."""
    return os.environ["DATABASE_URL"]


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """The owner's connection to this run's database, with audit_logs emptied first."""
    conn = await asyncpg.connect(_plain_dsn(database_url))
    await conn.execute("TRUNCATE audit_logs")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[Any]:
    """A JetStream context on this run's NATS server."""
    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


# Appended with the fixture it serves, so the start of this module stays as it was.
from collections.abc import Iterator  # noqa: E402

from service.dev.openbao import EmbeddedOpenBao  # noqa: E402


@pytest.fixture(scope="session")
def openbao(workdir: Path) -> Iterator[EmbeddedOpenBao]:
    """An OpenBao of this run: initialised, unsealed, Transit at transit; stopped at the end."""
    server = EmbeddedOpenBao(workdir / "openbao")
    server.start()
    try:
        yield server
    finally:
        server.stop()
