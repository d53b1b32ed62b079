"""The running service's HTTP surface: health, readiness, AsyncAPI docs."""

from pathlib import Path

import yaml

from tests.service_process import ServiceProcess


def test_running_service_is_ready_and_documents_its_channel(tmp_path: Path) -> None:
    with ServiceProcess(tmp_path / "service.log") as service:
        service.wait_ready()
        ready = service.get("/readyz").json()
        assert ready == {
            "status": "ready",
            "checks": {"nats": True, "stream": True, "consumer": True, "database": True},
        }
        assert service.get("/healthz").json() == {"status": "alive"}

        spec = service.get("/docs/asyncapi.json").json()
        assert spec["asyncapi"] == "3.0.0"
        assert "audit.session.end.{session_id}" in spec["channels"]
        schemas = spec["components"]["schemas"]
        payload = next(s for name, s in schemas.items() if name.startswith("audit.session.end"))
        fields = payload["properties"]
        assert set(fields) == {
            "session_id", "user_id", "tenant_id", "device_id",
            "start_time", "end_time", "source_ip", "reason",
        }  # fmt: skip
        assert all(field.get("description") for field in fields.values())

        page = service.get("/docs/asyncapi")
        assert page.status_code == 200
        assert "audit.session.end.{session_id}" in page.text
        assert "AsyncApiTryItPlugin" not in page.text
        assert yaml.safe_load(service.get("/docs/asyncapi.yaml").text)["asyncapi"] == "3.0.0"
