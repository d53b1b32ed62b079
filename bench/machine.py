"""What a run was measured on: the machine, the servers' versions, the service's settings."""

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import asyncpg

from bench.servers import Lab, plain_dsn
from bench.service_proc import PROJECT
from service.config import Settings


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def describe(lab: Lab) -> dict[str, Any]:
    """What the figures were measured on."""
    conn = await asyncpg.connect(plain_dsn(lab.servers.database_url))
    try:
        postgres = str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()
    nats_version = lab.nc.connected_server_version
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "nats_server": f"{nats_version.major}.{nats_version.minor}.{nats_version.patch}",
        "postgresql": postgres,
        "faststream": importlib.metadata.version("faststream"),
        "nats_py": importlib.metadata.version("nats-py"),
        "nats": "embedded" if lab.servers.embedded_nats else "NATS_URL",
        "postgres_server": "embedded" if lab.servers.embedded_postgres else "DATABASE_URL",
    }


def service_context() -> dict[str, Any]:
    """The service settings the replicas ran with, and the state of the code measured."""
    settings = Settings()
    git = ["git", "-C", str(PROJECT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    changed = subprocess.run(
        [*git, "status", "--porcelain", "--", "service", "migrations"],
        capture_output=True,
        text=True,
    )
    return {
        "batch_size": settings.batch_size,
        "batch_wait_ms": settings.batch_wait_ms,
        "max_ack_pending": settings.max_ack_pending,
        "ack_wait_s": settings.ack_wait_s,
        "git_commit": commit.stdout.strip() or None,
        "uncommitted_changes_in_service": bool(changed.stdout.strip()),
    }
