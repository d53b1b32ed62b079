"""compose.yaml and the Dockerfile are wired as the README says (no engine here to run them)."""

import re
from pathlib import Path
from typing import Any

import yaml

from service.config import Settings

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
