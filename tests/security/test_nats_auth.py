"""NATS authentication through settings, each method against a nats-server that demands it."""

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import nats.errors
import nkeys
import pytest

from tests.security.material import NKey, Operator, user_creds
from tests.security.servers import (
    assert_never_connects,
    create_publisher_stream,
    nats_server,
    publish_and_expect_row,
    ready_service,
)
from tests.service_process import PROJECT


@dataclass(frozen=True)
class Auth:
    """A server that demands one method, the settings that pass it and settings that must not."""

    config: str
    client: dict[str, Any]  # nats-py options of the test's own (relay-side) connection
    env: dict[str, str]  # the service's settings
    wrong: dict[str, str]  # the same method with a wrong secret


def user_and_password(directory: Path) -> Auth:
    """NATS_USER and NATS_PASSWORD."""
    password = "correct horse battery staple"
    return Auth(
        config=f'authorization {{ user: "session-audit", password: "{password}" }}',
        client={"user": "session-audit", "password": password},
        env={"NATS_USER": "session-audit", "NATS_PASSWORD": password},
        wrong={"NATS_USER": "session-audit", "NATS_PASSWORD": "guessed"},
    )


def token(directory: Path) -> Auth:
    """NATS_TOKEN."""
    secret = "s3cr3t-t0ken-for-the-audit-service"
    return Auth(
        config=f'authorization {{ token: "{secret}" }}',
        client={"token": secret},
        env={"NATS_TOKEN": secret},
        wrong={"NATS_TOKEN": "not-the-token"},
    )


def nkey_seed(directory: Path) -> Auth:
    """NATS_NKEY_SEED_FILE: the server knows only the public key."""
    user, stranger = (NKey.create(nkeys.PREFIX_BYTE_USER) for _ in range(2))
    seed, other = directory / "service.nk", directory / "stranger.nk"
    seed.write_text(user.seed)
    other.write_text(stranger.seed)
    return Auth(
        config=f"authorization {{ users = [ {{ nkey: {user.public} }} ] }}",
        client={"nkeys_seed": str(seed)},
        env={"NATS_NKEY_SEED_FILE": str(seed)},
        wrong={"NATS_NKEY_SEED_FILE": str(other)},
    )


def credentials_file(directory: Path) -> Auth:
    """NATS_CREDS_FILE: operator mode, a user JWT issued by a trusted account."""
    operator = Operator.create()
    creds = user_creds(directory / "service.creds", operator.account)
    # Same shape, but issued by an account this operator never signed.
    forged = user_creds(directory / "forged.creds", NKey.create(nkeys.PREFIX_BYTE_ACCOUNT))
    return Auth(
        config=operator.server_config(directory),
        client={"user_credentials": str(creds)},
        env={"NATS_CREDS_FILE": str(creds)},
        wrong={"NATS_CREDS_FILE": str(forged)},
    )


@pytest.mark.parametrize(
    "method", [user_and_password, token, nkey_seed, credentials_file], ids=lambda m: m.__name__
)
async def test_service_authenticates_as_set_and_is_refused_with_a_wrong_secret(
    tmp_path: Path, db: asyncpg.Connection, method: Callable[[Path], Auth]
) -> None:
    auth = method(tmp_path)
    async with nats_server(tmp_path / "nats", auth.config) as server:
        # The server really demands it: an anonymous client is turned away.
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await create_publisher_stream(server.url)
        await create_publisher_stream(server.url, **auth.client)
        env = {"NATS_URL": server.url}

        async with ready_service(tmp_path / "service.log", **env, **auth.env):
            await publish_and_expect_row(server.url, db, **auth.client)

        log = await assert_never_connects(tmp_path / "wrong.log", server, **env, **auth.wrong)
        assert "Authorization Violation" in log
        secrets = [v for k, v in auth.wrong.items() if k in {"NATS_PASSWORD", "NATS_TOKEN"}]
        assert [secret for secret in secrets if secret in log] == []


def test_nkey_and_credentials_support_ships_in_the_production_dependencies() -> None:
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    names = {
        dep.split(">")[0].split("=")[0].split("<")[0].strip() for dep in project["dependencies"]
    }
    assert "nkeys" in names or "nats-py[nkeys]" in names
