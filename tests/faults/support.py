"""What every fault scenario needs: its own servers and service processes, and exact sums.

Each scenario starts a nats-server and a PostgreSQL of its own (so a server can be
stopped, killed or restarted without touching any other test), creates DEVICE_EVENTS
as the relay does, migrates a database and runs the service as the insert-only writer
login, as production does. The oracle is the set of messages the scenario published:
every valid session must end as exactly one row, every invalid message as exactly one
dead letter, and the durable must be drained; and `trail verify`, run as an auditor
would, must find the trail intact: every row sealed once, the chain whole, the anchor
matching, whatever the scenario did to the servers and the service.
"""

import asyncio
import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from service.dev.embedded import EmbeddedNats, EmbeddedPostgres
from service.dev.publisher import ensure_publisher_stream
from service.dev.stack import migrate, verifier_url, writer_url
from tests.faults.traffic import (
    STREAM,
    SUBJECT_PREFIX,
    Expected,
    dead_letter_problems,
)
from tests.integration_support import dead_letters
from tests.service_process import ServiceProcess

DATABASE = "audit"
WRITER = "session_audit_fault_writer"
DURABLE = "session-audit-faults"
DLQ_STREAM = "AUDIT_DLQ_FAULTS"


@dataclass(frozen=True)
class Unsettled:
    """Messages a stopped service left delivered and unsettled on the durable."""

    pending: int  # num_ack_pending right after the stop
    handed_back: list[int]  # stream sequences deliverable again at once (nak'ed)

    @property
    def waiting(self) -> int:
        """How many wait for ACK_WAIT_S to run out before anyone gets them again."""
        return self.pending - len(self.handed_back)


@dataclass(frozen=True)
class Outcome:
    """What the service made of a scenario's messages, once the durable was drained."""

    rows: int
    dead_letters: int
    deliveries: int  # deliveries by the durable, redeliveries included
    drain_s: float


async def until(
    condition: Callable[[], Awaitable[bool]],
    *,
    within: float,
    what: str,
    status: Callable[[], Awaitable[str]] | None = None,
    every: float = 0.1,
) -> float:
    """Await condition until it holds; seconds waited. An exception counts as 'not yet'
    (a server may be down on purpose); on timeout, fail with what and the status."""
    started = time.monotonic()
    last_error: BaseException | None = None
    while True:
        try:
            if await condition():
                return time.monotonic() - started
        except Exception as error:  # a server restarting: try again
            last_error = error
        if time.monotonic() - started > within:
            seen = ""
            if status is not None:
                with contextlib.suppress(Exception):
                    seen = f" ({await status()})"
            if last_error is not None:
                seen += f"; last error: {last_error!r}"
            raise AssertionError(f"timed out after {within:.0f} s waiting for {what}{seen}")
        await asyncio.sleep(every)


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@dataclass
class FaultStack:
    """One scenario's servers, service processes and clients."""

    root: Path
    nats: EmbeddedNats
    postgres: EmbeddedPostgres
    owner_url: str = ""  # set-up and assertions run as the database's owner
    writer_url: str = ""  # the service runs as the insert-only writer, like production
    verifier_url: str = ""  # `trail verify` runs as a login in audit_verifier
    nc: Client | None = None
    services: list[ServiceProcess] = field(default_factory=list)

    @property
    def js(self) -> JetStreamContext:
        """The scenario's JetStream client (reconnects across server restarts)."""
        assert self.nc is not None
        return self.nc.jetstream()

    def service_env(self, **overrides: str) -> dict[str, str]:
        """Environment of a service process on this stack's servers."""
        return {
            "NATS_URL": self.nats.url,
            "DATABASE_URL": self.writer_url,
            "STREAM": STREAM,
            "DURABLE": DURABLE,
            "DLQ_STREAM": DLQ_STREAM,
            "LOG_LEVEL": "INFO",
        } | overrides

    def new_service(self, name: str, **env: str) -> ServiceProcess:
        """A service process on this stack (not started); stopped when the stack closes."""
        log = self.root / "logs" / f"{len(self.services):02d}-{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        service = ServiceProcess(log, **self.service_env(**env))
        self.services.append(service)
        # Should pytest itself die, no replica may outlive it.
        atexit.register(_kill, service)
        return service

    async def start_service(
        self, name: str, *, wait_ready: bool = True, **env: str
    ) -> ServiceProcess:
        """Start a service process, by default until /readyz says 200."""
        service = self.new_service(name, **env).start()
        if wait_ready:
            await asyncio.to_thread(service.wait_ready, 90)
        return service

    async def stop_service(
        self, service: ServiceProcess, sig: int = signal.SIGTERM, *, give_up_s: float = 60
    ) -> tuple[int, float]:
        """Send sig and wait for the exit: (exit code, seconds it took)."""
        started = time.monotonic()
        code = await asyncio.to_thread(service.stop, sig, give_up_s)
        return code, time.monotonic() - started

    async def consumer(self) -> ConsumerInfo:
        """The durable's state on the server."""
        info: ConsumerInfo = await self.js.consumer_info(STREAM, DURABLE)
        return info

    async def drained(self) -> bool:
        """Whether every message was delivered and settled (acked or terminated)."""
        info = await self.consumer()
        return info.num_pending == 0 and info.num_ack_pending == 0

    async def unsettled_after_stop(self, *, within: float = 5) -> "Unsettled":
        """What the durable holds as delivered and unsettled, and how much of it JetStream
        hands out again at once; everything taken is nak'ed straight back.

        JetStream counts a nak'ed message as ack-pending until it is delivered again, so
        after a stop num_ack_pending alone cannot tell "handed back" from "waiting for
        ACK_WAIT_S": pulling as a stand-in consumer can, as only the first kind comes now.
        """
        info = await self.consumer()
        assert info.delivered is not None
        if not info.num_ack_pending:
            return Unsettled(0, [])
        sub = await self.js.pull_subscribe(f"{SUBJECT_PREFIX}.*", durable=DURABLE, stream=STREAM)
        taken: list[Msg] = []
        try:
            deadline = time.monotonic() + within
            while len(taken) < info.num_ack_pending and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    taken += await sub.fetch(info.num_ack_pending - len(taken), timeout=0.5)
            for msg in taken:
                await msg.nak()
            assert self.nc is not None
            await self.nc.flush()
        finally:
            await sub.unsubscribe()
        last = info.delivered.stream_seq
        again = [
            m.metadata.sequence.stream
            for m in taken
            if m.metadata.sequence.stream <= last and m.metadata.num_delivered >= 2
        ]
        return Unsettled(info.num_ack_pending, sorted(again))

    @asynccontextmanager
    async def owner(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection as the database's owner (a superuser: row-level security aside)."""
        conn = await asyncpg.connect(_dsn(self.owner_url), timeout=5)
        try:
            yield conn
        finally:
            await conn.close()

    async def row_count(self) -> int:
        """Rows in audit_logs."""
        async with self.owner() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM audit_logs"))

    async def has_rows(self, at_least: int) -> bool:
        """Whether audit_logs holds at least this many rows."""
        return await self.row_count() >= at_least

    async def rows_per_session(self) -> dict[str, int]:
        """How many rows each session has, over the whole table."""
        async with self.owner() as conn:
            records = await conn.fetch(
                "SELECT details->>'session_id' AS session_id, count(*) AS n "
                "FROM audit_logs GROUP BY 1"
            )
        return {r["session_id"]: r["n"] for r in records}

    async def status(self) -> str:
        """One line for a timeout message: the durable, the rows and the dead letters."""
        parts = []
        with contextlib.suppress(Exception):
            info = await self.consumer()
            parts.append(f"pending {info.num_pending}, ack pending {info.num_ack_pending}")
        with contextlib.suppress(Exception):
            parts.append(f"{await self.row_count()} rows")
        with contextlib.suppress(Exception):
            parts.append(f"{(await self.js.stream_info(DLQ_STREAM)).state.messages} dead letters")
        return ", ".join(parts) + "\n" + self.log_tails()

    def log_tails(self, lines: int = 15) -> str:
        """The last lines of every service log, for a failure message."""
        tails = []
        for service in self.services:
            text = service.log_file.read_text(errors="replace") if service.log_file.exists() else ""
            tail = "\n".join(text.splitlines()[-lines:])
            tails.append(f"--- {service.log_file.name}\n{tail}")
        return "\n".join(tails)

    async def verify_exact(self, want: Expected, *, within: float = 180) -> Outcome:
        """Wait until the durable is drained, then check every row and dead letter exactly."""
        drain_s = await until(
            self.drained, within=within, what="the durable to drain", status=self.status
        )
        per_session = await self.rows_per_session()
        rows = await self.row_count()
        letters = await dead_letters(self.js, DLQ_STREAM)
        info = await self.consumer()
        problems = session_problems(per_session, want.sessions)
        if rows != len(want.sessions):
            problems.append(f"{rows} rows in audit_logs for {len(want.sessions)} sessions")
        problems += dead_letter_problems(
            [dict(letter.headers or {}) for letter in letters], want.dead
        )
        assert not problems, "\n".join(problems)
        assert info.delivered is not None
        await self.trail_intact()
        return Outcome(rows, len(letters), info.delivered.consumer_seq, drain_s)

    async def trail_verify(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m service trail verify ARGS` on this stack, as the auditor runs it.

        The trusted key comes from the run's environment (TRAIL_TRUSTED_KEYS), as the
        signing key of every service process does.
        """
        env = os.environ | {"NATS_URL": self.nats.url, "DATABASE_URL": self.verifier_url}
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "service", "trail", "verify", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    async def trail_intact(self) -> None:
        """trail verify exits 0 once the newest seals are anchored (a few seconds at most)."""
        result = await self.trail_verify()
        for _ in range(20):
            if result.returncode == 0 and "not yet anchored" not in result.stdout:
                break
            await asyncio.sleep(0.5)
            result = await self.trail_verify()
        assert result.returncode == 0, result.stdout + result.stderr

    async def close(self) -> None:
        """Stop every service process, then the servers; for the end of a scenario."""
        atexit.unregister(_kill)  # every registration; they are all stopped below
        for service in self.services:
            if service.proc is not None and service.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(service.stop, signal.SIGTERM, 30)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 5)
        await asyncio.gather(
            asyncio.to_thread(self.nats.stop), asyncio.to_thread(self.postgres.stop)
        )


def _kill(service: ServiceProcess) -> None:
    if service.proc is not None and service.proc.poll() is None:
        service.proc.kill()


def session_problems(per_session: dict[str, int], sessions: frozenset[str]) -> list[str]:
    """What differs from exactly one row per expected session, and none for any other."""
    missing = sorted(sessions - per_session.keys())
    doubled = sorted(s for s, n in per_session.items() if s in sessions and n != 1)
    stray = sorted(per_session.keys() - sessions)
    problems = []
    if missing:
        problems.append(f"{len(missing)} sessions have no row, e.g. {missing[:3]}")
    if doubled:
        problems.append(f"{len(doubled)} sessions have more than one row, e.g. {doubled[:3]}")
    if stray:
        problems.append(f"{len(stray)} rows of sessions never published valid, e.g. {stray[:3]}")
    return problems


async def metric(service: ServiceProcess, name: str) -> float:
    """The value of an unlabelled metric in the service's /metrics."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(service.base_url + "/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics of {service.base_url}")


async def _ignore(*_: object) -> None:
    # nats-py logs every reconnect attempt through these; a restart is the point here.
    return None


@asynccontextmanager
async def fault_stack(root: Path, *, create_stream: bool = True) -> AsyncIterator[FaultStack]:
    """Start nats-server and PostgreSQL of one scenario under root, migrated; stop all after."""
    stack = FaultStack(root, EmbeddedNats(root / "nats"), EmbeddedPostgres(root / "postgres"))
    try:
        await asyncio.gather(
            asyncio.to_thread(stack.nats.start), asyncio.to_thread(stack.postgres.start)
        )
        await asyncio.to_thread(stack.postgres.create_database, DATABASE)
        stack.owner_url = stack.postgres.url(DATABASE)
        await asyncio.to_thread(migrate, stack.owner_url)
        stack.writer_url = await asyncio.to_thread(
            writer_url, stack.owner_url, role=WRITER, password=None
        )
        stack.verifier_url = await asyncio.to_thread(
            verifier_url, stack.owner_url, root / "verifier.login"
        )
        if create_stream:
            await ensure_publisher_stream(stack.nats.url, STREAM)
        stack.nc = await nats.connect(
            stack.nats.url,
            connect_timeout=5,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            pending_size=64 * 1024 * 1024,
            error_cb=_ignore,
            disconnected_cb=_ignore,
            reconnected_cb=_ignore,
        )
        yield stack
    finally:
        await stack.close()


def environ_flag(name: str, default: int) -> int:
    """An integer knob of the suite from the environment (e.g. FAULTS_SOAK_EVENTS)."""
    return int(os.environ.get(name) or default)
