"""TLS to NATS through settings: the server verified by a CA, and mutual TLS with a client cert."""

import ssl
from pathlib import Path

import asyncpg

from tests.security.material import Authority, KeyPair
from tests.security.servers import (
    assert_never_connects,
    create_publisher_stream,
    nats_server,
    publish_and_expect_row,
    ready_service,
)


def tls_block(server: KeyPair, *, client_ca: Path | None = None) -> str:
    """nats-server's tls block; with client_ca, every client must show a cert it signed."""
    lines = [f'cert_file: "{server.cert}"', f'key_file: "{server.key}"', "timeout: 2"]
    if client_ca is not None:
        lines += [f'ca_file: "{client_ca}"', "verify: true"]
    return "tls {\n  " + "\n  ".join(lines) + "\n}\n"


def client_context(ca: Authority, client: KeyPair | None = None) -> ssl.SSLContext:
    """The test's own (relay-side) TLS context."""
    context = ssl.create_default_context(cafile=str(ca.pem))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


async def test_service_verifies_the_server_by_its_ca_and_refuses_one_it_cannot_verify(
    tmp_path: Path, db: asyncpg.Connection
) -> None:
    ca, impostor = Authority.create(tmp_path, "nats-ca"), Authority.create(tmp_path, "other-ca")
    server_pair = ca.issue(tmp_path, "nats-server", server=True)
    async with nats_server(tmp_path / "nats", tls_block(server_pair)) as server:
        tls = {"tls": client_context(ca)}
        await create_publisher_stream(server.url, **tls)
        env = {"NATS_URL": server.url}

        async with ready_service(tmp_path / "service.log", **env, NATS_TLS_CA_FILE=str(ca.pem)):
            await publish_and_expect_row(server.url, db, **tls)

        # A CA that did not sign the server's certificate: verification fails, no connection.
        await assert_never_connects(
            tmp_path / "other-ca.log", server, **env, NATS_TLS_CA_FILE=str(impostor.pem)
        )
        # No CA at all: the system's trust store does not know this server either.
        await assert_never_connects(tmp_path / "no-ca.log", server, **env)


async def test_a_server_certificate_that_fails_verification_is_logged(tmp_path: Path) -> None:
    ca, impostor = Authority.create(tmp_path, "nats-ca"), Authority.create(tmp_path, "other-ca")
    server_pair = ca.issue(tmp_path, "nats-server", server=True)
    async with nats_server(tmp_path / "nats", tls_block(server_pair)) as server:
        await create_publisher_stream(server.url, tls=client_context(ca))
        log = await assert_never_connects(
            tmp_path / "other-ca.log",
            server,
            NATS_URL=server.url,
            NATS_TLS_CA_FILE=str(impostor.pem),
        )
        assert "CERTIFICATE_VERIFY_FAILED" in log


async def test_mutual_tls_admits_the_client_cert_and_refuses_none_or_an_untrusted_one(
    tmp_path: Path, db: asyncpg.Connection
) -> None:
    ca, impostor = Authority.create(tmp_path, "nats-ca"), Authority.create(tmp_path, "other-ca")
    server_pair = ca.issue(tmp_path, "nats-server", server=True)
    config = tls_block(server_pair, client_ca=ca.pem)
    async with nats_server(tmp_path / "nats", config) as server:
        relay = {"tls": client_context(ca, ca.issue(tmp_path, "relay", server=False))}
        await create_publisher_stream(server.url, **relay)
        env = {"NATS_URL": server.url, "NATS_TLS_CA_FILE": str(ca.pem)}

        async with ready_service(
            tmp_path / "service.log",
            **env,
            **_client_cert(ca.issue(tmp_path, "audit", server=False)),
        ):
            await publish_and_expect_row(server.url, db, **relay)

        await assert_never_connects(tmp_path / "no-cert.log", server, **env)
        # A well-formed client certificate, from a CA the server does not trust.
        stranger = impostor.issue(tmp_path, "stranger", server=False)
        await assert_never_connects(
            tmp_path / "untrusted.log", server, **env, **_client_cert(stranger)
        )


def _client_cert(pair: KeyPair) -> dict[str, str]:
    return {"NATS_TLS_CERT_FILE": str(pair.cert), "NATS_TLS_KEY_FILE": str(pair.key)}
