"""TLS to PostgreSQL through DATABASE_SSLMODE and DATABASE_SSL_ROOT_CERT, against ssl=on."""

import asyncio
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from nats.js import JetStreamContext
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from service.dev.stack import migrate, writer_url
from service.repository import create_engine
from tests.integration_support import eventually, isolated, publish_event, session_event
from tests.security.material import Authority
from tests.security.servers import TlsPostgres, postgres_with_ssl, ready_service
from tests.service_process import run_to_exit

BIN_DIR = postgres_with_ssl()
pytestmark = pytest.mark.skipif(
    BIN_DIR is None,
    reason="needs a PostgreSQL built with OpenSSL (pgserver's is not): Debian's postgresql",
)
# TLS or nothing for every login but the owner, who migrates and checks the rows.
HBA = """
hostssl   all all      127.0.0.1/32 trust
hostnossl all postgres 127.0.0.1/32 trust
hostnossl all all      127.0.0.1/32 reject
"""
WRITER = "session_audit_tls_writer"


@dataclass(frozen=True)
class TlsDatabase:
    """A migrated database on a TLS-only PostgreSQL, and the CAs to verify it with."""

    owner_url: str
    writer_url: str
    ca: Authority
    impostor: Authority


@pytest.fixture(scope="module")
def tls_database(workdir: Path) -> Iterator[TlsDatabase]:
    """PostgreSQL with ssl=on and a certificate for 127.0.0.1, signed by a CA of the test."""
    assert BIN_DIR is not None
    directory = workdir / f"tls-postgres-{uuid.uuid4().hex[:8]}"
    ca = Authority.create(directory / "pki", "pg-ca")
    impostor = Authority.create(directory / "pki", "other-ca")
    pair = ca.issue(directory / "pki", "postgres", server=True)
    with TlsPostgres(
        directory / "data", bin_dir=BIN_DIR, cert=pair.cert, key=pair.key, hba=HBA
    ) as server:
        server.create_database("session_audit")
        owner = server.url("session_audit")
        migrate(owner)
        writer = writer_url(owner, role=WRITER, password=uuid.uuid4().hex)
        yield TlsDatabase(owner, writer, ca, impostor)


async def encrypted(url: str, *, sslmode: str, root_cert: Path | None) -> bool:
    """Connect as the service's engine does; whether pg_stat_ssl says the session is TLS."""
    engine = create_engine(url, sslmode=sslmode, root_cert=root_cert)
    try:
        async with engine.connect() as conn:
            query = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            return bool(await conn.scalar(sa.text(query)))
    finally:
        await engine.dispose()


async def test_verify_full_with_the_right_ca_connects_over_tls(tls_database: TlsDatabase) -> None:
    url, ca = tls_database.writer_url, tls_database.ca.pem
    assert await encrypted(url, sslmode="verify-full", root_cert=ca) is True
    assert await encrypted(url, sslmode="verify-ca", root_cert=ca) is True


async def test_verify_full_refuses_a_server_its_ca_did_not_sign(
    tls_database: TlsDatabase,
) -> None:
    wrong = tls_database.impostor.pem
    with pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):
        await encrypted(tls_database.writer_url, sslmode="verify-full", root_cert=wrong)


async def test_without_tls_the_writer_is_turned_away(tls_database: TlsDatabase) -> None:
    # The server side of the control: this pg_hba.conf admits the writer over TLS only.
    with pytest.raises(DBAPIError, match=r"pg_hba\.conf rejects .* no encryption"):
        await encrypted(tls_database.writer_url, sslmode="disable", root_cert=None)


async def test_service_writes_over_verified_tls_and_refuses_to_start_with_a_wrong_ca(
    tmp_path: Path, tls_database: TlsDatabase, js: JetStreamContext
) -> None:
    env = {"DATABASE_URL": tls_database.writer_url, "DATABASE_SSLMODE": "verify-full"}
    event = session_event()
    owner = await asyncpg.connect(
        make_url(tls_database.owner_url).set(drivername="postgresql").render_as_string(False)
    )
    try:
        async with (
            isolated(js, "pgtls") as names,
            ready_service(
                tmp_path / "service.log",
                **env,
                **names.env,
                DATABASE_SSL_ROOT_CERT=str(tls_database.ca.pem),
            ),
        ):
            await publish_event(js, event)

            async def written() -> bool:
                key = f"ssh_session_end:{event['session_id']}"
                query = "SELECT count(*) FROM audit_logs WHERE idempotency_key = $1"
                return bool(await owner.fetchval(query, key) == 1)

            await eventually(written, within=20, what="the row in the TLS database")
            sessions = await owner.fetch(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                "WHERE a.usename = $1",
                WRITER,
            )
            assert sessions
            assert all(row["ssl"] for row in sessions)
    finally:
        await owner.close()

    wrong = {"DATABASE_SSL_ROOT_CERT": str(tls_database.impostor.pem)}
    done = await asyncio.to_thread(run_to_exit, **env, **wrong)
    assert done.returncode != 0
    assert "cannot reach the database" in done.stdout + done.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in done.stdout + done.stderr
