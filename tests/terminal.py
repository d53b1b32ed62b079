"""Commands run as a person types them: in a terminal of their own, stopped with Ctrl-C."""

import fcntl
import os
import pty
import subprocess
import termios
import threading
import time
from pathlib import Path


def _take_terminal() -> None:
    # Runs in the child after setsid(): the pty becomes its controlling terminal, so the
    # line discipline turns a typed Ctrl-C into SIGINT for the foreground process group.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """One command line in a pseudo-terminal; everything it prints is kept."""

    def __init__(self, command: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.command = command
        self._master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=_take_terminal,
        )
        os.close(slave)
        self._output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                return
            if not chunk:
                return
            self._output += chunk

    @property
    def output(self) -> str:
        """What the command printed so far."""
        return self._output.decode(errors="replace")

    def wait_for_output(self, text: str, timeout: float) -> None:
        """Block until text has been printed; fail with the output if the command ended."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.command} exited {self.proc.returncode}:\n{self.output}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} after {timeout:.0f} s:\n{self.output}")
            time.sleep(0.1)

    def ctrl_c(self, timeout: float = 60) -> int:
        """Type Ctrl-C and wait for the command to end; its exit status."""
        os.write(self._master, b"\x03")
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        """Stop whatever is left (a failed test) as a person would, and release the terminal."""
        if self._master < 0:
            return
        if self.proc.poll() is None:
            os.write(self._master, b"\x03")
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)
        self._reader.join(5)
        os.close(self._master)
        self._master = -1
