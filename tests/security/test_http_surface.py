"""The HTTP endpoints give away no secret setting, and the docs page cannot publish."""

import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.security.servers import create_publisher_stream, nats_server, ready_service

PATHS = ["/healthz", "/readyz", "/metrics", "/docs/asyncapi", "/docs/asyncapi.json",
         "/docs/asyncapi.yaml", "/docs/asyncapi/static/index.js", "/no-such-page",
         "/docs/asyncapi/try"]  # fmt: skip


@pytest.mark.parametrize("method", ["password", "token"])
async def test_no_endpoint_shows_a_secret_setting_and_the_docs_cannot_publish(
    tmp_path: Path, writer_database_url: str, method: str
) -> None:
    nats_secret = f"nats-{method}-{uuid.uuid4().hex}"
    if method == "password":
        config = f'authorization {{ user: "session-audit", password: "{nats_secret}" }}'
        client = {"user": "session-audit", "password": nats_secret}
        auth = {"NATS_USER": "session-audit", "NATS_PASSWORD": nats_secret}
    else:
        config = f'authorization {{ token: "{nats_secret}" }}'
        client, auth = {"token": nats_secret}, {"NATS_TOKEN": nats_secret}
    database_password = make_url(writer_database_url).password
    assert database_password  # the writer login of the run has one
    secrets = [nats_secret, str(database_password)]

    async with nats_server(tmp_path / "nats", config) as server:
        await create_publisher_stream(server.url, **client)
        log = tmp_path / "service.log"
        async with ready_service(log, NATS_URL=server.url, **auth) as service:
            http = httpx.AsyncClient(base_url=service.base_url, timeout=5)
            async with http:
                answers = {path: await http.get(path) for path in PATHS}
                try_it = await http.post("/docs/asyncapi/try", json={"payload": "{}"})

    assert {path: r.status_code for path, r in answers.items()} == {
        **dict.fromkeys(PATHS, 200),
        "/no-such-page": 404,
        "/docs/asyncapi/try": 404,
    }
    assert try_it.status_code == 404
    assert "AsyncApiTryItPlugin" not in answers["/docs/asyncapi"].text
    exposed = [(p, r.text + str(r.headers)) for p, r in answers.items()]
    exposed.append(("POST /docs/asyncapi/try", try_it.text + str(try_it.headers)))
    leaks = [(path, s) for path, text in exposed for s in secrets if s in text]
    assert leaks == []
    assert [s for s in secrets if s in log.read_text()] == []
