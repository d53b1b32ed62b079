"""The Transit client against a real OpenBao: order, batching, and each failure's kind."""

import asyncio
import base64
import json
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from service.dev.openbao import EmbeddedOpenBao
from service.encryption import EncryptionUnavailable, TransitClient, data_key_name
from service.encryption.answers import ciphertexts


class CountingTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, noting each request's method and path."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.seen: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(scope="session")
def service_token(openbao: EmbeddedOpenBao, tmp_path_factory: pytest.TempPathFactory) -> SecretStr:
    path = openbao.service_token_file(tmp_path_factory.mktemp("transit") / "token")
    return SecretStr(path.read_text().strip())


@pytest.fixture
async def transport() -> CountingTransport:
    return CountingTransport()


@pytest.fixture
async def client(
    openbao: EmbeddedOpenBao, service_token: SecretStr, transport: CountingTransport
) -> AsyncIterator[TransitClient]:
    async with TransitClient(openbao.url, service_token, transport=transport) as transit:
        yield transit


def details(i: int) -> bytes:
    return json.dumps({"session": i, "user": "ops@example.com", "note": "ünïcode ✓"}).encode()


def decrypt(openbao: EmbeddedOpenBao, tenant: uuid.UUID, ciphertext: str) -> bytes:
    """What the platform's audit-log API does to show a row (it holds decrypt; we do not)."""
    path = f"transit/decrypt/{data_key_name(tenant)}"
    answer = openbao.as_root("POST", path, {"ciphertext": ciphertext})
    return base64.b64decode(answer["data"]["plaintext"])


async def test_batch_of_several_tenants_comes_back_in_input_order_and_decrypts(
    openbao: EmbeddedOpenBao, client: TransitClient, transport: CountingTransport
) -> None:
    tenants = [uuid.uuid4() for _ in range(3)]
    for tenant in tenants:
        openbao.ensure_data_key(tenant)
    items = [(tenants[i % 3 if i < 9 else 0], details(i)) for i in range(12)]
    found = await client.encrypt_details(items)
    assert len(found) == len(items)
    assert all(c.startswith("vault:v1:") for c in found)
    for (tenant, plaintext), ciphertext in zip(items, found, strict=True):
        assert decrypt(openbao, tenant, ciphertext) == plaintext
    # One request per tenant, all three of them.
    assert sorted(transport.seen) == sorted(
        ("POST", f"/v1/transit/encrypt/{data_key_name(t)}") for t in tenants
    )


async def test_a_tenants_items_beyond_the_servers_json_limit_go_in_even_requests(
    openbao: EmbeddedOpenBao, client: TransitClient, transport: CountingTransport
) -> None:
    # The default listener refuses a batch of 500 (1000 JSON strings); 1000 items take three.
    tenant = uuid.uuid4()
    openbao.ensure_data_key(tenant)
    items = [(tenant, details(i)) for i in range(1000)]
    found = await client.encrypt_details(items)
    assert len(transport.seen) == 3
    assert decrypt(openbao, tenant, found[0]) == details(0)
    assert decrypt(openbao, tenant, found[-1]) == details(999)


async def test_no_items_make_no_request(
    client: TransitClient, transport: CountingTransport
) -> None:
    assert await client.encrypt_details([]) == []
    assert transport.seen == []


async def test_missing_key_is_key_not_found_naming_it_and_stays_missing(
    openbao: EmbeddedOpenBao, client: TransitClient, service_token: SecretStr
) -> None:
    known, unknown = uuid.uuid4(), uuid.uuid4()
    openbao.ensure_data_key(known)
    secret = b'{"password": "hunter2-never-logged"}'
    with pytest.raises(EncryptionUnavailable) as caught:
        await client.encrypt_details([(known, details(1)), (unknown, secret)])
    error = caught.value
    assert error.kind == "key_not_found"
    assert error.key == data_key_name(unknown)
    assert error.tenant_id == unknown
    assert data_key_name(unknown) in str(error)
    assert "hunter2" not in str(error)
    assert service_token.get_secret_value() not in str(error)
    with pytest.raises(RuntimeError, match="HTTP 404"):
        openbao.as_root("GET", f"transit/keys/{data_key_name(unknown)}")


async def test_token_without_the_policy_is_permission_denied(openbao: EmbeddedOpenBao) -> None:
    tenant = uuid.uuid4()
    openbao.ensure_data_key(tenant)
    policy = 'path "sys/capabilities-self" { capabilities = ["update"] }'
    openbao.as_root("PUT", "sys/policies/acl/no-transit", {"policy": policy})
    body = {"policies": ["no-transit"], "no_default_policy": True, "ttl": "1h"}
    token = openbao.as_root("POST", "auth/token/create", body)["auth"]["client_token"]
    async with TransitClient(openbao.url, SecretStr(token)) as transit:
        with pytest.raises(EncryptionUnavailable) as caught:
            await transit.encrypt_details([(tenant, details(1))])
        assert caught.value.kind == "permission_denied"
        assert data_key_name(tenant) in str(caught.value)
        with pytest.raises(EncryptionUnavailable) as at_start:
            await transit.check_token()
        assert at_start.value.kind == "permission_denied"
    assert token not in str(caught.value) + str(at_start.value)


async def test_revoked_token_is_permission_denied(openbao: EmbeddedOpenBao, tmp_path: Path) -> None:
    tenant = uuid.uuid4()
    openbao.ensure_data_key(tenant)
    token = openbao.service_token_file(tmp_path / "token").read_text().strip()
    openbao.as_root("POST", "auth/token/revoke", {"token": token})
    async with TransitClient(openbao.url, SecretStr(token)) as transit:
        with pytest.raises(EncryptionUnavailable) as caught:
            await transit.encrypt_details([(tenant, details(1))])
        assert caught.value.kind == "permission_denied"
        with pytest.raises(EncryptionUnavailable) as at_start:
            await transit.check_token()
        assert at_start.value.kind == "permission_denied"


async def test_check_token_accepts_the_service_token_and_refuses_one_that_creates_keys(
    openbao: EmbeddedOpenBao, client: TransitClient
) -> None:
    ttl = await client.check_token()
    assert ttl > 24 * 3600
    assert await client.renew_token() > 24 * 3600
    async with TransitClient(openbao.url, SecretStr(openbao.root_token)) as root:
        with pytest.raises(EncryptionUnavailable) as caught:
            await root.check_token()
    assert caught.value.kind == "unsafe_token"
    assert "session-audit.hcl" in str(caught.value)


async def test_stopped_and_sealed_servers_are_unreachable_and_sealed_and_not_healthy(
    tmp_path: Path,
) -> None:
    server = EmbeddedOpenBao(tmp_path / "openbao")
    await asyncio.to_thread(server.start)
    try:
        tenant = uuid.uuid4()
        server.ensure_data_key(tenant)
        token = SecretStr(server.service_token_file(tmp_path / "token").read_text().strip())
        async with TransitClient(server.url, token) as transit:
            assert await transit.health() is True
            assert len(await transit.encrypt_details([(tenant, details(1))])) == 1

            server.as_root("PUT", "sys/seal")
            assert await transit.health() is False
            with pytest.raises(EncryptionUnavailable) as sealed:
                await transit.encrypt_details([(tenant, details(2))])
            assert sealed.value.kind == "sealed"

            await asyncio.to_thread(server.stop)
            assert await transit.health() is False
            with pytest.raises(EncryptionUnavailable) as stopped:
                await transit.encrypt_details([(tenant, details(3))])
            assert stopped.value.kind == "unreachable"
            assert server.url in str(stopped.value)
            assert data_key_name(tenant) in str(stopped.value)
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_server_that_never_answers_is_a_timeout() -> None:
    with socket.socket() as silent:  # the kernel accepts connections; nobody answers them
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        async with TransitClient(url, SecretStr("s.x"), timeout_s=0.3) as transit:
            with pytest.raises(EncryptionUnavailable) as caught:
                await transit.encrypt_details([(uuid.uuid4(), details(1))])
            assert caught.value.kind == "timeout"
            assert await transit.health() is False


def test_an_item_refused_inside_a_batch_answer_raises(openbao: EmbeddedOpenBao) -> None:
    key = openbao.ensure_data_key(uuid.uuid4())
    body = {"batch_input": [{"plaintext": "e30="}, {"plaintext": "not base64!"}]}
    answer = httpx.post(
        f"{openbao.url}/v1/transit/encrypt/{key}",
        json=body,
        headers={"X-Vault-Token": openbao.root_token},
    )
    assert answer.status_code == 400
    assert "ciphertext" in answer.json()["data"]["batch_results"][0]  # the other item did work
    with pytest.raises(EncryptionUnavailable) as caught:
        ciphertexts(answer, url=openbao.url, mount="transit", key=key, count=2)
    assert caught.value.kind == "bad_response"
    assert "1 of 2 items" in str(caught.value)
    assert "item 1" in str(caught.value)
    assert key in str(caught.value)
