"""Servers configured for one control each, and the service run against them."""

import asyncio
import glob
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import nats
from nats.aio.client import Client

# pgserver's helpers, through embedded.py, which silences pgserver's import-time warning.
from service.dev.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    ensure_prefix_permissions,
    ensure_user_exists,
)
from service.dev.publisher import publisher_stream_config
from tests.integration_support import eventually, readyz
from tests.service_process import ServiceProcess
from tests.session_events import session_end, subject_of, wire

STREAM = "DEVICE_EVENTS"


class ConfiguredNats(EmbeddedNats):
    """An EmbeddedNats that also reads a configuration file (`-c`): auth, TLS, permissions.

    The command line still sets the address, port, JetStream store and monitor port, and
    nats-server lets flags override the file, so a production config runs here unchanged.
    """

    def __init__(self, store_dir: Path, config: str | Path) -> None:
        super().__init__(store_dir)
        self.config = config

    @property
    def config_file(self) -> Path:
        """The file given to `-c`."""
        if isinstance(self.config, Path):
            return self.config.resolve()  # the server runs in its store dir
        return self.workdir / "server.conf"

    def _prepare(self) -> None:
        super()._prepare()
        if isinstance(self.config, str):
            self.config_file.write_text(self.config)

    def _command(self) -> list[str]:
        return [*super()._command(), "-c", str(self.config_file)]


@asynccontextmanager
async def nats_server(store_dir: Path, config: str | Path) -> AsyncIterator[ConfiguredNats]:
    """A started ConfiguredNats, stopped afterwards."""
    server = ConfiguredNats(store_dir, config)
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def connect(url: str, **options: Any) -> Client:
    """A test-side NATS connection that fails at once instead of retrying."""
    return await nats.connect(url, connect_timeout=5, allow_reconnect=False, **options)


async def create_publisher_stream(url: str, **options: Any) -> None:
    """Create DEVICE_EVENTS as the relay does, connecting with options."""
    nc = await connect(url, **options)
    try:
        await nc.jetstream().add_stream(publisher_stream_config(STREAM))
    finally:
        await nc.close()


async def row_count(db: asyncpg.Connection, session_id: str) -> int:
    """How many audit rows the session has."""
    key = f"ssh_session_end:{session_id}"
    count: int = await db.fetchval(
        "SELECT count(*) FROM audit_logs WHERE idempotency_key = $1", key
    )
    return count


async def publish_and_expect_row(
    url: str, db: asyncpg.Connection, *, within: float = 20, **options: Any
) -> None:
    """Publish one event as the relay (connecting with options); wait for its one row."""
    event = session_end()
    nc = await connect(url, **options)
    try:
        await nc.jetstream().publish(subject_of(event), wire(event), stream=STREAM)
    finally:
        await nc.close()

    async def written() -> bool:
        return await row_count(db, event["session_id"]) == 1

    await eventually(written, within=within, what="the event's audit row")


@asynccontextmanager
async def ready_service(log_file: Path, **env: str) -> AsyncIterator[ServiceProcess]:
    """The service with these settings, once /readyz says 200; stopped afterwards."""
    with ServiceProcess(log_file, **env) as service:
        await asyncio.to_thread(service.wait_ready, 40)
        yield service


_REFUSALS = re.compile(r"\[ERR\].*(authentication error|TLS handshake error)")


def refusals(server: EmbeddedNats) -> int:
    """How many connections the server has refused so far, by its own log."""
    return len(_REFUSALS.findall(server.log_file.read_text(errors="replace")))


async def assert_never_connects(log_file: Path, server: EmbeddedNats, **env: str) -> str:
    """Run the service with these settings: the server refuses it, and it stays unready.

    Returns the service's log, so that the caller can check what it says.
    """
    before = refusals(server)
    with ServiceProcess(log_file, **env) as service:

        async def refused_and_unready() -> bool:
            answer = await readyz(service)
            return (
                refusals(server) > before
                and answer is not None
                and answer[0] == 503
                and "nats" in answer[1]["down"]
            )

        await eventually(refused_and_unready, within=30, what="NATS to refuse the service")
        assert service.proc is not None
        assert service.proc.poll() is None  # it keeps retrying rather than exiting
        return service.log()


# --- PostgreSQL with TLS -----------------------------------------------------------------


def postgres_with_ssl() -> Path | None:
    """bin dir of a PostgreSQL built with OpenSSL (pgserver's wheel is not), or None."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    # Debian's postgresql packages, newest first (the python-svc machines have one).
    for binary in sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), reverse=True):
        linked = subprocess.run([ldd, binary], capture_output=True, text=True, check=False)
        if "libssl" in linked.stdout:
            return Path(binary).parent
    return None


class TlsPostgres(EmbeddedPostgres):
    """An EmbeddedPostgres on another PostgreSQL build, with ssl=on and a pg_hba.conf of ours."""

    def __init__(self, data_dir: Path, *, bin_dir: Path, cert: Path, key: Path, hba: str) -> None:
        super().__init__(data_dir)
        self.bin_dir, self.cert, self.key, self.hba = bin_dir, cert, key, hba

    def _tool(self, name: str, *args: str) -> list[str]:
        return [str(self.bin_dir / name), "-h", "127.0.0.1", "-p", str(self.port), *args]

    def _command(self) -> list[str]:
        return [
            *super()._command(), "-c", "ssl=on", "-c", "ssl_cert_file=server.crt",
            "-c", "ssl_key_file=server.key", "-c", "hba_file=pg_hba_test.conf",
        ]  # fmt: skip

    def _prepare(self) -> None:
        if not (self.workdir / "PG_VERSION").exists():
            self._initdb()
        # PostgreSQL refuses a key that others may read; it must belong to the server's user.
        shutil.copy(self.cert, self.workdir / "server.crt")
        shutil.copy(self.key, self.workdir / "server.key")
        (self.workdir / "pg_hba_test.conf").write_text(self.hba)
        (self.workdir / "server.key").chmod(0o600)
        self._own(self.workdir)

    def _initdb(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._own(self.workdir)
        initdb = [str(self.bin_dir / "initdb"), "-D", str(self.workdir), "-U", "postgres",
                  "--auth=trust", "--encoding=UTF8", "--no-locale"]  # fmt: skip
        done = subprocess.run(initdb, capture_output=True, text=True, user=self.user, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed for {self.workdir}:\n{done.stdout}{done.stderr}")

    def _own(self, directory: Path) -> None:
        if self.user is None:
            return
        entry = ensure_user_exists(self.user)
        assert entry is not None
        ensure_prefix_permissions(directory)  # temp dirs are 0700: let the server's user in
        for path in [directory, *directory.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
