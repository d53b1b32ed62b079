"""The service as production runs it: `python -m faststream run service.main:app`, per replica."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]

from bench.servers import PhaseFailed
from service.dev.embedded import free_port
from service.trail.keys import generate_key_file

PROJECT = Path(__file__).resolve().parents[1]


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "<no log>"


def _status_kib(pid: int, field_name: str) -> int:
    """A VmRSS / VmHWM figure of /proc/<pid>/status, in KiB (0 once the process is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process, its live descendants and the children it has reaped."""
    try:
        root = psutil.Process(pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        times = root.cpu_times()
        return float(total + times.children_user + times.children_system)
    except psutil.Error:
        return 0.0


def _signing_key(directory: Path) -> Path:
    """The bench's trail signing key in directory, made on first use."""
    path = directory / "trail-signing.seed"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        generate_key_file(path)
    return path


class ServiceProcess:
    """One replica with its own HTTP port and log file."""

    def __init__(self, log_file: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.env = os.environ | env | {"HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(self.port)}
        if "TRAIL_SIGNING_KEY_FILE" not in self.env:
            # Seals are signed as in production: the signature is part of the write path.
            self.env["TRAIL_SIGNING_KEY_FILE"] = str(_signing_key(log_file.parent))
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process; returns at once."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "faststream", "run", "service.main:app"],
                cwd=PROJECT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        """Process id of the replica."""
        assert self.proc is not None
        return self.proc.pid

    def _pids(self) -> list[int]:
        # `faststream run` serves in its own process; children are counted should it fork.
        try:
            return [self.pid, *(c.pid for c in psutil.Process(self.pid).children(recursive=True))]
        except psutil.Error:
            return [self.pid]

    def rss_bytes(self) -> int:
        """Resident memory now (VmRSS of the process and any children)."""
        return 1024 * sum(_status_kib(pid, "VmRSS") for pid in self._pids())

    def peak_rss_bytes(self) -> int:
        """Highest resident memory since start (VmHWM, kept by the kernel)."""
        return 1024 * sum(_status_kib(pid, "VmHWM") for pid in self._pids())

    def cpu_seconds(self) -> float:
        """User + system CPU time the replica has used so far."""
        return tree_cpu_seconds(self.pid)

    def check_alive(self) -> None:
        """Raise PhaseFailed with the log's tail if the process has exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise PhaseFailed(
                f"service exited with code {self.proc.returncode}; {self.log_file}:\n"
                + _tail(self.log_file)
            )

    async def wait_ready(self, timeout_s: float = 60.0) -> float:
        """Wait for /readyz 200; returns the seconds it took."""
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as client:
            while time.monotonic() - started < timeout_s:
                self.check_alive()
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/readyz", timeout=2)).status_code == 200:
                        return time.monotonic() - started
                await asyncio.sleep(0.1)
        raise PhaseFailed(f"service not ready after {timeout_s:.0f} s:\n{_tail(self.log_file)}")

    async def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait for the graceful shutdown (SIGKILL after timeout_s); the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return await asyncio.to_thread(self.proc.wait)


@asynccontextmanager
async def replicas(
    count: int, *, env: dict[str, str], log_dir: Path, phase: str
) -> AsyncIterator[list[ServiceProcess]]:
    """count replicas started together with the same environment, stopped at the end."""
    procs = [ServiceProcess(log_dir / f"{phase}-{n}.log", env) for n in range(count)]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        await asyncio.gather(*(proc.stop() for proc in procs))


@dataclass
class RssSampler:
    """Resident memory of each replica, sampled every interval_s while running."""

    procs: list[ServiceProcess]
    interval_s: float = 0.5
    samples: list[tuple[float, list[int]]] = field(default_factory=list)  # (s in, bytes each)
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        started = time.monotonic()
        while True:
            each = [proc.rss_bytes() for proc in self.procs]
            self.samples.append((round(time.monotonic() - started, 2), each))
            await asyncio.sleep(self.interval_s)

    async def __aenter__(self) -> "RssSampler":
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def peak_bytes(self) -> list[int]:
        """Per replica, the higher of its samples and the kernel's high-water mark (VmHWM).

        Read it while the replicas still run: the mark goes with the process.
        """
        return [
            max([proc.peak_rss_bytes(), *(each[n] for _, each in self.samples)])
            for n, proc in enumerate(self.procs)
        ]
