"""The local stack for `make run`, tests and benchmarks: servers, the publisher's stream, schema."""

import asyncio
import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import nats
from alembic import command
from alembic.config import Config
from nats.js import api
from nats.js.errors import NotFoundError

from service.dev.embedded import EmbeddedNats, EmbeddedPostgres

logger = logging.getLogger(__name__)
PROJECT = Path(__file__).resolve().parents[2]
DATABASE = "session_audit"

# The publisher's own stream config (CONTRACT.md); created here only for local runs,
# where no publisher has created it. The service itself never creates or changes it.
PUBLISHER_SUBJECTS = [
    "device.status.>",
    "device.metrics.>",
    "device.interfaces.>",
    "device.firmware.>",
    "device.credential_changed.>",
    "config.changed.>",
    "config.snapshot.>",
    "config.push.rollback.>",
    "config.push.alert.>",
    "audit.session.end.>",
]


def publisher_stream_config(name: str) -> api.StreamConfig:
    """DEVICE_EVENTS as the SSH relay creates it: 24 h, 64 MiB, discard old, file, 1 replica."""
    return api.StreamConfig(
        name=name,
        subjects=PUBLISHER_SUBJECTS,
        retention=api.RetentionPolicy.LIMITS,
        max_age=24 * 3600,
        max_bytes=64 * 1024 * 1024,
        discard=api.DiscardPolicy.OLD,
        storage=api.StorageType.FILE,
        num_replicas=1,
    )


async def ensure_publisher_stream(nats_url: str, name: str) -> bool:
    """Create the publisher's stream if absent; True if it was created."""
    nc = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False)
    try:
        js = nc.jetstream()
        try:
            await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(publisher_stream_config(name))
            return True
        return False
    finally:
        await nc.close()


def migrate(database_url: str, revision: str = "head") -> None:
    """Bring the database schema to revision with the project's Alembic migrations."""
    config = Config(toml_file=str(PROJECT / "pyproject.toml"))
    config.attributes["database_url"] = database_url
    command.upgrade(config, revision)


@dataclass(frozen=True)
class Endpoints:
    """Where the servers of a stack answer."""

    nats_url: str
    database_url: str


@contextmanager
def local_stack(
    data_dir: Path,
    *,
    nats_url: str | None = None,
    database_url: str | None = None,
    stream: str = "DEVICE_EVENTS",
) -> Iterator[Endpoints]:
    """Start the servers not given by URL under data_dir, create the stream, migrate."""
    with ExitStack() as stack:
        if nats_url is None:
            server = stack.enter_context(EmbeddedNats(data_dir / "nats"))
            nats_url = server.url
            if asyncio.run(ensure_publisher_stream(nats_url, stream)):
                logger.info("created stream %s with the publisher's config", stream)
        if database_url is None:
            postgres = stack.enter_context(EmbeddedPostgres(data_dir / "postgres"))
            postgres.create_database(DATABASE)
            database_url = postgres.url(DATABASE)
        migrate(database_url)
        yield Endpoints(nats_url=nats_url, database_url=database_url)
