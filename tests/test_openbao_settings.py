"""OPENBAO_* settings: a set-up that cannot encrypt stops start-up with one line naming them."""

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service.config import ConfigurationError, Settings, describe
from service.encryption import TransitClient
from service.encryption.token import read_token
from tests.service_process import run_to_exit


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def problem(**values: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        settings(**values)
    return describe(caught.value)


def token_file(tmp_path: Path, text: str = "s.example\n") -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    return path


def test_encryption_is_off_without_openbao_addr() -> None:
    assert TransitClient.from_settings(settings()) is None


@pytest.mark.parametrize(
    "tokens",
    [{}, {"openbao_token": "s.x", "openbao_token_file": "TOKEN_FILE"}],
    ids=["neither", "both"],
)
def test_openbao_addr_needs_exactly_one_token(tmp_path: Path, tokens: dict[str, str]) -> None:
    if tokens:
        tokens["openbao_token_file"] = str(token_file(tmp_path))
    assert problem(openbao_addr="http://bao:8200", **tokens) == (
        "configuration error: OPENBAO_ADDR needs exactly one of OPENBAO_TOKEN_FILE and "
        "OPENBAO_TOKEN"
    )


def test_a_token_without_openbao_addr_is_refused_rather_than_left_unused() -> None:
    assert problem(openbao_token="s.x") == (
        "configuration error: OPENBAO_TOKEN_FILE or OPENBAO_TOKEN is set but OPENBAO_ADDR is not"
    )


def test_bad_address_and_mount_name_their_variable(tmp_path: Path) -> None:
    line = problem(openbao_addr="bao:8200", openbao_token="s.secret-value")
    assert line.startswith("configuration error: OPENBAO_ADDR: ")
    assert "http:// or https://" in line
    assert "s.secret-value" not in line
    line = problem(
        openbao_addr="http://bao:8200", openbao_token="s.x", openbao_transit_mount="../sys"
    )
    assert line.startswith("configuration error: OPENBAO_TRANSIT_MOUNT: ")


def test_ca_file_needs_https(tmp_path: Path) -> None:
    ca = token_file(tmp_path, "-----BEGIN CERTIFICATE-----\n")
    assert problem(openbao_addr="http://bao:8200", openbao_token="s.x", openbao_ca_file=ca) == (
        "configuration error: OPENBAO_CA_FILE needs an https:// OPENBAO_ADDR"
    )


def test_token_file_is_read_once_without_surrounding_whitespace(tmp_path: Path) -> None:
    path = token_file(tmp_path, "  s.from-file \n\n")
    configured = settings(openbao_addr="http://bao:8200/", openbao_token_file=path)
    assert configured.openbao_addr == "http://bao:8200"
    assert read_token(configured).get_secret_value() == "s.from-file"


def test_empty_token_file_stops_with_one_line_naming_it(tmp_path: Path) -> None:
    configured = settings(
        openbao_addr="http://bao:8200", openbao_token_file=token_file(tmp_path, "\n")
    )
    with pytest.raises(ConfigurationError) as caught:
        read_token(configured)
    assert str(caught.value.code).startswith("configuration error: OPENBAO_TOKEN_FILE: ")


async def test_service_started_with_openbao_addr_alone_stops_with_one_line() -> None:
    done = await asyncio.to_thread(run_to_exit, OPENBAO_ADDR="http://127.0.0.1:8200")
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines == [
        "configuration error: OPENBAO_ADDR needs exactly one of OPENBAO_TOKEN_FILE and "
        "OPENBAO_TOKEN"
    ]
