"""`make run`: the service on embedded NATS and PostgreSQL unless NATS_URL/DATABASE_URL are set."""

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from service.config import Settings, redact
from service.dev.stack import PROJECT, local_stack


def main(argv: list[str] | None = None) -> int:
    """Start what is missing, migrate, then run `faststream run service.main:app` until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m service.dev.run",
        description=(
            "Run session-audit locally. Without NATS_URL, starts nats-server with JetStream "
            "and creates the publisher's stream; without DATABASE_URL, starts PostgreSQL; "
            "both keep their data under --data-dir. Then migrates and runs the service."
        ),
    )
    parser.add_argument("--data-dir", type=Path, default=PROJECT / ".data", help="default: ./.data")
    args = parser.parse_args(argv)

    settings = Settings()
    given = settings.model_fields_set
    with local_stack(
        args.data_dir,
        nats_url=settings.nats_url if "nats_url" in given else None,
        database_url=settings.database_url if "database_url" in given else None,
        stream=settings.stream,
    ) as endpoints:
        env_file = args.data_dir / "endpoints.env"
        env_file.write_text(
            f"NATS_URL={endpoints.nats_url}\nDATABASE_URL={endpoints.database_url}\n"
        )
        base = f"http://{settings.http_host}:{settings.http_port}"
        print(
            f"NATS      {redact(endpoints.nats_url)}\n"
            f"Postgres  {redact(endpoints.database_url)}\n"
            f"Ready     {base}/readyz\n"
            f"Docs      {base}/docs/asyncapi\n"
            f"Samples   make publish-sample   (endpoints saved in {env_file})\n",
            flush=True,
        )
        env = os.environ | {"NATS_URL": endpoints.nats_url, "DATABASE_URL": endpoints.database_url}
        service = subprocess.Popen(
            [sys.executable, "-m", "faststream", "run", "service.main:app"], env=env, cwd=PROJECT
        )
        # Ctrl-C reaches the service too (same process group); wait for its graceful
        # shutdown before the embedded servers stop under it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *_: service.terminate())
        return service.wait()


if __name__ == "__main__":
    sys.exit(main())
