"""`make run`: the service on embedded NATS and PostgreSQL unless NATS_URL/DATABASE_URL are set."""

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from service.config import Settings, redact
from service.dev.stack import PROJECT, Endpoints, local_stack
from service.trail.keys import TrailKeyError, generate_key_file, load_signer

ENDPOINTS_FILE = "endpoints.env"


def main(argv: list[str] | None = None) -> int:
    """Start what is missing, migrate, then run `faststream run service.main:app` until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m service.dev.run",
        description=(
            "Run session-audit locally. Without NATS_URL, starts nats-server with JetStream "
            "and creates the publisher's stream; without DATABASE_URL, starts PostgreSQL; "
            "without OPENBAO_ADDR, starts OpenBao with Transit, a token for the service and "
            "the sample tenants' data keys. Each keeps its data under --data-dir. Then "
            "migrates and runs the service. Ctrl-C stops the service gracefully, then the "
            "servers it started."
        ),
    )
    parser.add_argument("--data-dir", type=Path, default=PROJECT / ".data", help="default: ./.data")
    args = parser.parse_args(argv)

    settings = Settings()
    given = settings.model_fields_set
    with _terminal_foreground():
        try:
            return _run(args.data_dir, settings, given)
        except TrailKeyError as error:
            print(f"configuration error: TRAIL_SIGNING_KEY_FILE: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # Ctrl-C while the stack was still starting
            print("interrupted; stopped what had started", file=sys.stderr)
            return 0


def _run(data_dir: Path, settings: Settings, given: set[str]) -> int:
    with local_stack(
        data_dir,
        nats_url=settings.nats_url if "nats_url" in given else None,
        database_url=settings.database_url if "database_url" in given else None,
        stream=settings.stream,
        openbao="openbao_addr" not in given,
    ) as endpoints:
        trail = _trail_settings(data_dir, settings, given)
        env_file = _publish_endpoints(data_dir, endpoints, trail)
        try:
            base = f"http://{settings.http_host}:{settings.http_port}"
            openbao = endpoints.openbao_addr or settings.openbao_addr or "not set: plaintext"
            print(
                f"NATS      {redact(endpoints.nats_url)}\n"
                f"Postgres  {redact(endpoints.database_url)}\n"
                f"OpenBao   {openbao}\n"
                f"Trail     seals signed by {trail['TRAIL_TRUSTED_KEYS']} "
                f"({trail['TRAIL_SIGNING_KEY_FILE']})\n"
                f"Ready     {base}/readyz\n"
                f"Docs      {base}/docs/asyncapi\n"
                f"Beside it make publish-sample, make dlq ARGS=list, make verify"
                f"  (endpoints in {env_file})\n",
                flush=True,
            )
            env = os.environ | _service_env(endpoints) | trail
            service = subprocess.Popen(
                [sys.executable, "-m", "faststream", "run", "service.main:app"],
                env=env,
                cwd=PROJECT,
            )
            # Ctrl-C reaches the service too (same process group); wait for its graceful
            # shutdown before the embedded servers stop under it.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, lambda *_: service.terminate())
            code = service.wait()
            # A service stopped by a signal it could not handle gracefully reports -N.
            return code if code >= 0 else 128 - code
        finally:
            # The servers stop with this process: a stale file would send the tools beside
            # the stack to ports nobody listens on.
            env_file.unlink(missing_ok=True)


def _service_env(endpoints: Endpoints) -> dict[str, str]:
    env = {"NATS_URL": endpoints.nats_url, "DATABASE_URL": endpoints.database_url}
    if endpoints.openbao_addr is not None and endpoints.openbao_token_file is not None:
        env |= {
            "OPENBAO_ADDR": endpoints.openbao_addr,
            "OPENBAO_TOKEN_FILE": str(endpoints.openbao_token_file),
        }
    return env


def _trail_settings(data_dir: Path, settings: Settings, given: set[str]) -> dict[str, str]:
    """The signing key (a development key under data_dir unless one is set) and its id."""
    if "trail_signing_key_file" in given and settings.trail_signing_key_file is not None:
        key_file = settings.trail_signing_key_file
        key_id = load_signer(key_file).key_id
    else:
        key_file = data_dir / "trail" / "signing.seed"
        if key_file.exists():
            key_id = load_signer(key_file).key_id
        else:
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_id = generate_key_file(key_file)
    trusted = settings.trail_trusted_keys if "trail_trusted_keys" in given else ""
    return {
        "TRAIL_SIGNING_KEY_FILE": str(key_file),
        "TRAIL_TRUSTED_KEYS": ",".join(filter(None, [key_id, trusted])),
    }


def _publish_endpoints(data_dir: Path, endpoints: Endpoints, trail: dict[str, str]) -> Path:
    """Write the stack's endpoints for `make publish-sample`, `make dlq`, `make verify`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env_file = data_dir / ENDPOINTS_FILE
    env_file.touch(mode=0o600)
    lines = [f"{name}={value}" for name, value in _service_env(endpoints).items()]
    lines += [f"{name}={value}" for name, value in trail.items()]
    # `make verify` reads as this login, not as the writer.
    lines.append(f"VERIFIER_DATABASE_URL={endpoints.verifier_url}")
    env_file.write_text("\n".join(lines) + "\n")
    return env_file


@contextlib.contextmanager
def _terminal_foreground() -> Iterator[None]:
    """Take the terminal's foreground for this process group while the stack runs.

    A terminal's Ctrl-C signals its whole foreground process group, `make` included, and
    GNU make then kills itself with SIGINT ("Error 130", exit status 130) even though the
    service shut down cleanly. In a process group of our own that holds the foreground,
    Ctrl-C reaches only the stack, and `make run` exits with the service's status.
    """
    try:
        tty = os.open("/dev/tty", os.O_RDWR)
    except OSError:  # no controlling terminal (CI, a supervisor): nothing to take
        yield
        return
    try:
        previous = os.tcgetpgrp(tty)
        if previous != os.getpgrp():  # running in the background: leave the terminal alone
            yield
            return
        # Changing the foreground from a group that will be background must not stop us.
        old_ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        os.setpgid(0, 0)
        os.tcsetpgrp(tty, os.getpgrp())
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.tcsetpgrp(tty, previous)
            signal.signal(signal.SIGTTOU, old_ttou)
    finally:
        os.close(tty)


if __name__ == "__main__":
    sys.exit(main())
