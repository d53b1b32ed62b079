"""The service as production runs it: `faststream run service.main:app` in a child process."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from service.dev.embedded import free_port

PROJECT = Path(__file__).resolve().parents[1]


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll condition until it holds; fail with what was awaited after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def run_to_exit(**env: str) -> subprocess.CompletedProcess[str]:
    """Run the service with these settings and wait for it to stop on its own (60 s at most)."""
    return subprocess.run(
        [sys.executable, "-m", "faststream", "run", "service.main:app"],
        cwd=PROJECT,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class ServiceProcess:
    """One replica of the service with its own HTTP port and log file."""

    def __init__(self, log_file: Path, **env: str) -> None:
        self.port = free_port()
        self.env = os.environ | env | {"HTTP_PORT": str(self.port)}
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """Where its HTTP endpoints answer."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServiceProcess":
        """Start the process; returns at once (use wait_ready)."""
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "faststream", "run", "service.main:app"],
                cwd=PROJECT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def get(self, path: str) -> httpx.Response:
        """GET a path of its HTTP endpoints."""
        return httpx.get(self.base_url + path, timeout=5)

    def ready(self) -> bool:
        """Whether /readyz answers 200."""
        try:
            return self.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 30) -> "ServiceProcess":
        """Block until /readyz is 200; fail with the log if the process died."""

        def ready_or_dead() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited early:\n{self.log()}")
            return self.ready()

        wait_for(ready_or_dead, timeout=timeout, what="the service to become ready")
        return self

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_file.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send sig and wait for the exit; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def __enter__(self) -> "ServiceProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
