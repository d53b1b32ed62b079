"""deploy/nats-server.conf: only the relay publishes events, only the service consumes them."""

import asyncio
import contextlib
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import nats.errors
import pytest
import yaml
from nats.aio.client import Client

from service.dev.publisher import publisher_stream_config
from tests.integration_support import eventually
from tests.security.servers import ConfiguredNats, connect, publish_and_expect_row, ready_service
from tests.service_process import PROJECT
from tests.session_events import session_end, subject_of, wire

CONFIG = PROJECT / "deploy" / "nats-server.conf"
PASSWORDS = {
    "NATS_RELAY_PASSWORD": "relay-pw-7f3a",
    "NATS_SERVICE_PASSWORD": "service-pw-91c2",
    "NATS_READER_PASSWORD": "reader-pw-c0de",
}
USERS = {
    "relay": PASSWORDS["NATS_RELAY_PASSWORD"],
    "session-audit": PASSWORDS["NATS_SERVICE_PASSWORD"],
    "reader": PASSWORDS["NATS_READER_PASSWORD"],
}
DURABLE, STREAM, DLQ = "session-audit-writer", "DEVICE_EVENTS", "AUDIT_DLQ"
SEALS = "AUDIT_SEALS"  # the anchor stream deploy/nats-server.conf names


@dataclass
class Deployment:
    """nats-server on the deploy config, the relay's stream, and the service as its user."""

    server: ConfiguredNats
    clients: list[Client] = field(default_factory=list)

    async def login(self, user: str) -> tuple[Client, list[str]]:
        """A connection as user, with the permission violations the server reports to it."""
        violations: list[str] = []

        async def record(error: Exception) -> None:
            violations.append(str(error))

        # The reader's replies come to its own inbox prefix (see the config's header).
        inbox = {"inbox_prefix": "_INBOX_reader"} if user == "reader" else {}
        nc = await connect(
            self.server.url, user=user, password=USERS[user], error_cb=record, **inbox
        )
        self.clients.append(nc)
        return nc, violations

    def violations_of(self, user: str, since: int = 0) -> list[str]:
        """The permission violations the server logged for user, from offset since on."""
        log = self.server.log_file.read_text()[since:]
        return re.findall(rf'"\$G/user:{user}" - \w+ Violation - .*', log)

    async def messages(self, stream: str) -> int:
        """How many messages the stream holds, asked as the reader."""
        nc, _ = await self.login("reader")
        return int((await nc.jetstream().stream_info(stream)).state.messages)


@pytest.fixture(scope="module")
async def deployed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    """The deploy config with its passwords in the environment, and the service ready on it."""
    directory = tmp_path_factory.mktemp("deployed")
    with pytest.MonkeyPatch.context() as env:
        for name, value in PASSWORDS.items():
            env.setenv(name, value)  # nats-server reads $NATS_*_PASSWORD from its environment
        server = ConfiguredNats(directory / "nats", CONFIG)
        await asyncio.to_thread(server.start)
    deployment = Deployment(server)
    try:
        relay, _ = await deployment.login("relay")
        await relay.jetstream().add_stream(publisher_stream_config(STREAM))
        settings = {"NATS_URL": server.url, "NATS_USER": "session-audit",
                    "NATS_PASSWORD": USERS["session-audit"], "DURABLE": DURABLE,
                    "DLQ_STREAM": DLQ, "TRAIL_ANCHOR_STREAM": SEALS}  # fmt: skip
        async with ready_service(directory / "service.log", **settings) as service:
            assert service.get("/metrics").status_code == 200  # reads its consumer's info
            # Binding, creating its durable and the DLQ stream: all allowed.
            assert deployment.violations_of("session-audit") == []
            yield deployment
    finally:
        for nc in deployment.clients:
            with contextlib.suppress(Exception):
                await nc.close()
        await asyncio.to_thread(server.stop)


async def refused(violations: list[str], attempt: Awaitable[Any], subject: str) -> None:
    """Run attempt; the server must answer with a permission violation naming subject."""
    with contextlib.suppress(nats.errors.TimeoutError, nats.errors.NoRespondersError):
        await attempt

    async def reported() -> bool:
        return any(subject.lower() in v and "permissions violation" in v for v in violations)

    await eventually(reported, within=5, what=f"a permissions violation for {subject}")


async def test_relay_events_become_rows_and_dead_letters_with_the_service_user(
    deployed: Deployment, db: asyncpg.Connection
) -> None:
    start = len(deployed.server.log_file.read_text())
    relay, relay_violations = await deployed.login("relay")
    await publish_and_expect_row(deployed.server.url, db, user="relay", password=USERS["relay"])
    poison = session_end(tenant_id="not-a-uuid")
    await relay.jetstream().publish(subject_of(poison), wire(poison), stream=STREAM)

    async def dead_lettered() -> bool:
        return await deployed.messages(DLQ) == 1

    await eventually(dead_lettered, within=20, what="the poison event's dead letter")

    async def anchored() -> bool:
        try:
            return await deployed.messages(SEALS) >= 1
        except nats.js.errors.NotFoundError:  # created with the first anchor
            return False

    await eventually(anchored, within=20, what="the row's seal anchored")
    # Fetching, acking, terminating, dead-lettering and anchoring are allowed, and so is
    # relaying.
    assert deployed.violations_of("session-audit", since=start) == []
    assert relay_violations == []


@pytest.mark.parametrize("user", ["session-audit", "reader"])
async def test_no_one_but_the_relay_may_publish_events(deployed: Deployment, user: str) -> None:
    nc, violations = await deployed.login(user)
    before = await deployed.messages(STREAM)

    forged = session_end()
    attempt = nc.jetstream().publish(subject_of(forged), wire(forged), timeout=1)
    await refused(violations, attempt, subject_of(forged))
    await refused(violations, nc.publish("audit.session.end.x", b"{}"), "audit.session.end.x")

    assert await deployed.messages(STREAM) == before


async def test_no_one_but_the_service_may_forge_dead_letters(deployed: Deployment) -> None:
    before = await deployed.messages(DLQ)
    for user in ("relay", "reader"):
        nc, violations = await deployed.login(user)
        subject = "audit.dlq.session.end.x"
        await refused(violations, nc.jetstream().publish(subject, b"{}", timeout=1), subject)
    assert await deployed.messages(DLQ) == before


@pytest.mark.parametrize("user", ["relay", "reader"])
async def test_no_one_but_the_service_may_consume_or_settle_events(
    deployed: Deployment, user: str
) -> None:
    nc, violations = await deployed.login(user)
    js = nc.jetstream(timeout=1)
    api = "$JS.API.CONSUMER"

    if user == "relay":  # the reader may read the durable's state, not bind to it
        bind = js.pull_subscribe("audit.session.end.*", durable=DURABLE, stream=STREAM)
        await refused(violations, bind, f"{api}.INFO.{STREAM}.{DURABLE}")
    fetch = nc.request(f"{api}.MSG.NEXT.{STREAM}.{DURABLE}", b'{"batch": 1}', timeout=1)
    await refused(violations, fetch, f"{api}.MSG.NEXT.{STREAM}.{DURABLE}")
    await refused(violations, js.add_consumer(STREAM, durable_name="snoop"), f"{api}.")
    # An ack is only a publish: whoever may send it can settle events that have no row.
    ack = f"$JS.ACK.{STREAM}.{DURABLE}.1.1.1.0.0"
    await refused(violations, nc.publish(ack, b"+ACK"), ack)
    if user == "reader":  # JetStream delivers the events to the service's _INBOX
        await refused(violations, nc.subscribe("_INBOX.>"), "_INBOX.>")

    reader, _ = await deployed.login("reader")
    assert (await reader.jetstream().stream_info(STREAM)).state.consumer_count == 1  # the service's


async def test_the_service_user_may_consume_only_its_own_durable(deployed: Deployment) -> None:
    nc, violations = await deployed.login("session-audit")
    js = nc.jetstream(timeout=1)
    other = js.add_consumer(STREAM, durable_name="other", filter_subject="device.metrics.>")
    await refused(violations, other, "$JS.API.CONSUMER.")
    get = js.get_msg(STREAM, 1)
    await refused(violations, get, f"$JS.API.STREAM.MSG.GET.{STREAM}")


def test_sample_publisher_authenticates_with_the_nats_settings(deployed: Deployment) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service", "publish-sample", "--count", "1"],
        cwd=PROJECT,
        env=os.environ
        | {"NATS_URL": deployed.server.url, "NATS_USER": "relay", "NATS_PASSWORD": USERS["relay"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_compose_runs_nats_on_the_deploy_config_with_each_user_and_password() -> None:
    services = yaml.safe_load((PROJECT / "compose.yaml").read_text())["services"]
    nats_service = services["nats"]
    command = nats_service["command"]
    mounted = {volume.split(":")[0]: volume.split(":")[1] for volume in nats_service["volumes"]}
    assert mounted["./deploy/nats-server.conf"] == command[command.index("-c") + 1]
    config = CONFIG.read_text()
    referenced = set(re.findall(r"password: \$(\w+)", config))
    assert referenced == set(PASSWORDS) == set(nats_service["environment"])
    users = dict(re.findall(r"user: ([\w-]+), password: \$(\w+)", config))
    service_env = services["session-audit"]["environment"]
    assert users[service_env["NATS_USER"]] == "NATS_SERVICE_PASSWORD"
    assert "${NATS_SERVICE_PASSWORD" in service_env["NATS_PASSWORD"]
    publisher_env = services["publisher"]["environment"]
    assert users[publisher_env["NATS_USER"]] == "NATS_RELAY_PASSWORD"
