"""The local stack for `make run`, tests and benchmarks: servers, the publisher's stream, schema."""

import asyncio
import logging
import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from service.dev.embedded import EmbeddedNats, EmbeddedPostgres
from service.dev.openbao import EmbeddedOpenBao
from service.dev.publisher import SAMPLE_TENANTS, ensure_publisher_stream
from service.repository import create_engine, ensure_login_role

logger = logging.getLogger(__name__)
PROJECT = Path(__file__).resolve().parents[2]
DATABASE = "session_audit"


WRITER = "session_audit"


def writer_url(owner_url: str, role: str = WRITER, password: str | None = None) -> str:
    """Create login role `role` in audit_writer if absent; the URL to connect as it."""
    return login_url(owner_url, role=role, password=password, group="writer")


def login_url(owner_url: str, *, role: str, password: str | None, group: str) -> str:
    """Create login role `role` in group's role (GROUP_ROLES) if absent; its URL."""

    async def create() -> None:
        engine = create_engine(owner_url)
        try:
            await ensure_login_role(engine, name=role, password=password, group=group)
        finally:
            await engine.dispose()

    asyncio.run(create())
    url = make_url(owner_url).set(username=role, password=password)
    return url.render_as_string(hide_password=False)


def verifier_url(owner_url: str, secret_file: Path) -> str:
    """A login in audit_verifier for `make verify`, kept in secret_file across runs.

    Its name is new with each new secret file, so that a role left on an external
    server by an earlier .data/ is never one whose password is lost.
    """
    if secret_file.exists():
        role, password = secret_file.read_text().split()
    else:
        role, password = f"session_audit_verifier_{secrets.token_hex(4)}", secrets.token_hex(16)
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        secret_file.touch(mode=0o600)
        secret_file.write_text(f"{role} {password}\n")
    return login_url(owner_url, role=role, password=password, group="verifier")


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
    # A login in audit_verifier on the same database, for `make verify`.
    verifier_url: str
    # Set when the stack started OpenBao: where it listens and the service's token file
    # (encrypt only; the root token, the platform's access, stays in its init.json).
    openbao_addr: str | None = None
    openbao_token_file: Path | None = None


@contextmanager
def local_stack(
    data_dir: Path,
    *,
    nats_url: str | None = None,
    database_url: str | None = None,
    stream: str = "DEVICE_EVENTS",
    openbao: bool = False,
) -> Iterator[Endpoints]:
    """Start the servers not given by URL under data_dir, create the stream, migrate.

    With openbao, also start OpenBao with Transit, give the service a token that may only
    encrypt, and create the data keys of the sample tenants (the platform's job).
    """
    with ExitStack() as stack:
        bao: EmbeddedOpenBao | None = None
        if openbao:
            bao = stack.enter_context(EmbeddedOpenBao(data_dir / "openbao"))
            for tenant in SAMPLE_TENANTS:
                bao.ensure_data_key(UUID(tenant))
        if nats_url is None:
            server = stack.enter_context(EmbeddedNats(data_dir / "nats"))
            nats_url = server.url
            if asyncio.run(ensure_publisher_stream(nats_url, stream)):
                logger.info("created stream %s with the publisher's config", stream)
        if database_url is None:
            postgres = stack.enter_context(EmbeddedPostgres(data_dir / "postgres"))
            postgres.create_database(DATABASE)
            owner_url = postgres.url(DATABASE)
            migrate(owner_url)
            # The service runs as an insert-only login, not as the schema's owner.
            database_url = writer_url(owner_url)
        else:
            owner_url = database_url
            migrate(owner_url)
        verifier = verifier_url(owner_url, data_dir / "trail" / "verifier.login")
        if bao is None:
            yield Endpoints(nats_url=nats_url, database_url=database_url, verifier_url=verifier)
        else:
            yield Endpoints(
                nats_url=nats_url,
                database_url=database_url,
                verifier_url=verifier,
                openbao_addr=bao.url,
                openbao_token_file=bao.service_token_file(bao.workdir / "service.token"),
            )
