"""The servers a run measures on, embedded or given by URL, and fresh state for each phase."""

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from service.dev.embedded import EmbeddedNats, EmbeddedPostgres
from service.dev.openbao import EmbeddedOpenBao
from service.dev.publisher import ensure_publisher_stream
from service.dev.stack import migrate

STREAM = "DEVICE_EVENTS"


class PhaseFailed(Exception):
    """A phase did not complete, or completed with wrong totals; the message says which."""


def plain_dsn(url: str) -> str:
    """The asyncpg DSN of a SQLAlchemy postgresql+asyncpg URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _with_database(url: str, name: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://" + re.sub(r"/[^/?]*(\?|$)", f"/{name}\\1", rest, count=1)


@dataclass(frozen=True)
class Servers:
    """Where NATS and PostgreSQL answer, and whether this run started them."""

    nats_url: str
    database_url: str  # SQLAlchemy URL of a database the run may CREATE DATABASE from
    embedded_nats: bool
    embedded_postgres: bool
    commit_timestamps: bool  # track_commit_timestamp is on: true commit times are readable
    server_pids: dict[str, int]  # of the embedded servers, to account their CPU time
    openbao: EmbeddedOpenBao | None = None  # always embedded; started for the encryption phase


async def _enable_commit_timestamps(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
    finally:
        await conn.close()


async def _setting(dsn: str, name: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SELECT current_setting($1)", name))
    finally:
        await conn.close()


@contextmanager
def servers(data_dir: Path | None, *, openbao: bool = False) -> Iterator[Servers]:
    """Use NATS_URL / DATABASE_URL when set, else start embedded servers under data_dir.

    With openbao, also an embedded OpenBao with Transit, whatever OPENBAO_ADDR says.
    """
    workdir = data_dir or Path(tempfile.mkdtemp(prefix="session-audit-bench-"))
    with ExitStack() as stack:
        if data_dir is None:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        given_nats = os.environ.get("NATS_URL") or None
        given_database = os.environ.get("DATABASE_URL") or None
        pids: dict[str, int] = {}
        nats_url = given_nats
        if nats_url is None:
            nats_url = stack.enter_context(EmbeddedNats(workdir / "nats")).url
            pids["nats-server"] = int((workdir / "nats" / "nats-server.pid").read_text())
        database_url = given_database
        if database_url is None:
            postgres = stack.enter_context(EmbeddedPostgres(workdir / "postgres"))
            # Our own server: let it record commit times, so latency can end at the commit
            # rather than at the transaction start that now() (ingested_at) reports.
            asyncio.run(_enable_commit_timestamps(postgres.url(driver="postgresql")))
            postgres.restart()
            database_url = postgres.url()
            pids["postgres"] = int((workdir / "postgres" / "postmaster.pid").read_text().split()[0])
        on = asyncio.run(_setting(plain_dsn(database_url), "track_commit_timestamp")) == "on"
        bao = None
        if openbao:
            bao = stack.enter_context(EmbeddedOpenBao(workdir / "openbao"))
            pids["bao"] = int((workdir / "openbao" / "bao.pid").read_text())
        yield Servers(
            nats_url=nats_url,
            database_url=database_url,
            embedded_nats=given_nats is None,
            embedded_postgres=given_database is None,
            commit_timestamps=on,
            server_pids=pids,
            openbao=bao,
        )


@dataclass(frozen=True)
class PhaseNames:
    """A phase's own database, durable and dead-letter stream."""

    database: str
    durable: str
    dlq_stream: str


@dataclass
class Lab:
    """One connection to NATS and the means to give each phase fresh state."""

    servers: Servers
    nc: Client
    js: JetStreamContext
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    _databases: list[str] = field(default_factory=list)
    _dlq_streams: list[str] = field(default_factory=list)
    _durables: list[str] = field(default_factory=list)
    _kept: set[str] = field(default_factory=set)

    def names(self, phase: str) -> PhaseNames:
        """Names no earlier phase or run used."""
        names = self.names_of(phase)
        self._durables.append(names.durable)
        return names

    def names_of(self, phase: str) -> PhaseNames:
        """The names names(phase) gives, for whoever checks the phase from outside."""
        tag = f"{phase}_{self.run_id}"
        return PhaseNames(
            database=f"bench_{tag}".lower(),
            durable=f"bench-{tag}".replace("_", "-"),
            dlq_stream=f"BENCH_DLQ_{tag}".upper(),
        )

    def keep_database(self, phase: str) -> str:
        """Have end_phase leave the phase's database, to check its rows afterwards.

        The checker drops it with drop_database; clean_up does, should the phase fail.
        """
        name = self.names_of(phase).database
        self._kept.add(name)
        return name

    def database_url(self, name: str) -> str:
        """SQLAlchemy URL of a database on the run's server."""
        return _with_database(self.servers.database_url, name)

    async def fresh_database(self, name: str) -> str:
        """Create and migrate an empty database; returns its SQLAlchemy URL."""
        conn = await asyncpg.connect(plain_dsn(self.servers.database_url))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self._databases.append(name)
        url = self.database_url(name)
        # Alembic's async env.py runs its own event loop: give it a thread without one.
        await asyncio.to_thread(migrate, url)
        return url

    async def drop_database(self, name: str) -> None:
        """Drop a phase's database, so that its autovacuum cannot disturb the next phase."""
        conn = await asyncpg.connect(plain_dsn(self.servers.database_url))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        with contextlib.suppress(ValueError):
            self._databases.remove(name)
        self._kept.discard(name)

    async def fresh_stream(self) -> None:
        """DEVICE_EVENTS deleted and created again empty, as the relay creates it."""
        with contextlib.suppress(NotFoundError):
            await self.js.delete_stream(STREAM)
        await ensure_publisher_stream(self.servers.nats_url, STREAM)

    def dlq_stream_used(self, name: str) -> None:
        """Remember a dead-letter stream the service will create, to delete it at the end."""
        self._dlq_streams.append(name)

    async def end_phase(self, names: PhaseNames) -> None:
        """Drop the phase's database and delete its dead-letter stream.

        Every dead-letter stream takes audit.dlq.session.end.>: the next phase's could not
        be created beside this one.
        """
        if names.database not in self._kept:
            await self.drop_database(names.database)
        with contextlib.suppress(NotFoundError):
            await self.js.delete_stream(names.dlq_stream)

    async def pause_durable(self, durable: str) -> None:
        """Stop deliveries to a durable of DEVICE_EVENTS for now (up to an hour)."""
        until = datetime.now(UTC) + timedelta(hours=1)
        await self.js.pause_consumer(STREAM, durable, until.isoformat().replace("+00:00", "Z"))

    async def resume_durable(self, durable: str) -> None:
        """Let a paused durable deliver again."""
        await self.js.resume_consumer(STREAM, durable)

    async def consumer_state(self, durable: str) -> str:
        """What JetStream says of a durable: delivered, pending, acks and pull requests."""
        info = await self.js.consumer_info(STREAM, durable)
        return (
            f"delivered {info.delivered.stream_seq}, pending {info.num_pending}, "
            f"ack pending {info.num_ack_pending}, waiting pulls {info.num_waiting}"
        )

    async def unsettled(self, durable: str) -> tuple[int, int]:
        """(not yet delivered, delivered but not acked) of a durable: (0, 0) once drained."""
        info = await self.js.consumer_info(STREAM, durable)
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)

    async def dlq_messages(self, name: str) -> int:
        """Messages in a dead-letter stream; 0 until the service has created it."""
        try:
            info = await self.js.stream_info(name)
        except NotFoundError:
            return 0
        return int(info.state.messages)

    async def stream_messages(self) -> int:
        """Messages now in DEVICE_EVENTS."""
        return int((await self.js.stream_info(STREAM)).state.messages)

    async def clean_up(self) -> None:
        """Remove what the run made: its databases, its dead-letter streams, its events."""
        for name in list(self._databases):
            await self.drop_database(name)
        for name in self._dlq_streams:
            with contextlib.suppress(NotFoundError):
                await self.js.delete_stream(name)
        for durable in self._durables:
            with contextlib.suppress(NotFoundError):
                await self.js.delete_consumer(STREAM, durable)
        with contextlib.suppress(NotFoundError):
            await self.js.purge_stream(STREAM)


@asynccontextmanager
async def lab(found: Servers) -> AsyncIterator[Lab]:
    """A Lab on the run's servers, cleaned up at the end."""
    nc = await nats.connect(found.nats_url, connect_timeout=5, max_reconnect_attempts=3)
    the_lab = Lab(servers=found, nc=nc, js=nc.jetstream(timeout=30))
    try:
        yield the_lab
    finally:
        try:
            await the_lab.clean_up()
        finally:
            await nc.close()
