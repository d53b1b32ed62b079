"""deploy/openbao/session-audit.hcl on a real OpenBao: encrypt with data keys, nothing more."""

import base64
import uuid
from pathlib import Path

import httpx
import pytest

from service.dev.openbao import EmbeddedOpenBao

PLAINTEXT = base64.b64encode(b'{"command_count": 3}').decode()


@pytest.fixture(scope="module")
def service_token(openbao: EmbeddedOpenBao, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A token holding only the service's policy, as an operator would issue it."""
    path = openbao.service_token_file(tmp_path_factory.mktemp("policy") / "token")
    return path.read_text().strip()


def call(
    openbao: EmbeddedOpenBao, token: str, method: str, path: str, body: object = None
) -> httpx.Response:
    return httpx.request(
        method, f"{openbao.url}/v1/{path}", json=body, headers={"X-Vault-Token": token}
    )


def encrypt(openbao: EmbeddedOpenBao, token: str, key: str) -> httpx.Response:
    return call(openbao, token, "POST", f"transit/encrypt/{key}", {"plaintext": PLAINTEXT})


def token_with(openbao: EmbeddedOpenBao, name: str, policy: str) -> str:
    """A token holding only this policy, written under name."""
    openbao.as_root("PUT", f"sys/policies/acl/{name}", {"policy": policy})
    body = {"policies": [name], "no_default_policy": True, "ttl": "1h"}
    return str(openbao.as_root("POST", "auth/token/create", body)["auth"]["client_token"])


def test_service_token_encrypts_with_a_tenant_data_key(
    openbao: EmbeddedOpenBao, service_token: str
) -> None:
    key = openbao.ensure_data_key(uuid.uuid4())
    answer = encrypt(openbao, service_token, key)
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["ciphertext"].startswith("vault:v1:")


def test_service_token_cannot_decrypt_even_what_it_encrypted(
    openbao: EmbeddedOpenBao, service_token: str
) -> None:
    key = openbao.ensure_data_key(uuid.uuid4())
    ciphertext = encrypt(openbao, service_token, key).json()["data"]["ciphertext"]
    answer = call(
        openbao, service_token, "POST", f"transit/decrypt/{key}", {"ciphertext": ciphertext}
    )
    assert answer.status_code == 403


def test_an_encrypt_with_a_missing_data_key_is_refused_and_creates_no_key(
    openbao: EmbeddedOpenBao, service_token: str
) -> None:
    key = f"tenant_{uuid.uuid4()}_data"
    answer = encrypt(openbao, service_token, key)
    # Transit takes it for a create (it would make the key), which the policy does not grant.
    assert answer.status_code == 403
    assert "permission denied" in answer.text
    with pytest.raises(RuntimeError, match="HTTP 404"):
        openbao.as_root("GET", f"transit/keys/{key}")


def test_service_token_cannot_create_read_rotate_export_or_delete_keys(
    openbao: EmbeddedOpenBao, service_token: str
) -> None:
    key = openbao.ensure_data_key(uuid.uuid4())
    refused = [
        ("POST", f"transit/keys/tenant_{uuid.uuid4()}_data", {"type": "aes256-gcm96"}),
        ("GET", f"transit/keys/{key}", None),
        ("POST", f"transit/keys/{key}/rotate", {}),
        ("POST", f"transit/keys/{key}/config", {"deletion_allowed": True}),
        ("DELETE", f"transit/keys/{key}", None),
        ("GET", f"transit/export/encryption-key/{key}", None),
        ("GET", f"transit/backup/{key}", None),
        ("POST", f"transit/datakey/plaintext/{key}", {}),
        ("POST", f"transit/rewrap/{key}", {"ciphertext": "vault:v1:AAAA"}),
        ("POST", f"transit/hmac/{key}", {"input": PLAINTEXT}),
        ("GET", "transit/keys?list=true", None),
        ("GET", "sys/mounts", None),
        ("GET", "sys/policies/acl/session-audit", None),
    ]
    for method, path, body in refused:
        answer = call(openbao, service_token, method, path, body)
        assert answer.status_code == 403, (method, path, answer.status_code)


def test_service_token_has_only_its_policy_and_can_look_itself_up_and_renew(
    openbao: EmbeddedOpenBao, service_token: str
) -> None:
    data = call(openbao, service_token, "GET", "auth/token/lookup-self").json()["data"]
    assert data["policies"] == ["session-audit"]  # no "default"
    assert data["renewable"] is True
    assert data["period"] > 0
    assert call(openbao, service_token, "POST", "auth/token/renew-self", {}).status_code == 200
    assert call(openbao, service_token, "GET", "cubbyhole/x").status_code == 403  # default's


def test_credential_keys_share_the_prefix_so_the_file_lets_them_encrypt_but_not_decrypt(
    openbao: EmbeddedOpenBao, service_token: str
) -> None:
    # Pinned on purpose: no static OpenBao 2.7 ACL tells tenant_<uuid> from tenant_<uuid>_data
    # (a glob only ends a path). The service can encrypt with a credential key, nothing more.
    key = f"tenant_{uuid.uuid4()}"
    openbao.as_root("POST", f"transit/keys/{key}", {"type": "aes256-gcm96"})
    answer = encrypt(openbao, service_token, key)
    assert answer.status_code == 200
    ciphertext = answer.json()["data"]["ciphertext"]
    refused = call(
        openbao, service_token, "POST", f"transit/decrypt/{key}", {"ciphertext": ciphertext}
    )
    assert refused.status_code == 403
    assert encrypt(openbao, service_token, "platform_signing").status_code == 403


def test_a_glob_inside_a_path_is_literal_and_matches_no_data_key(openbao: EmbeddedOpenBao) -> None:
    token = token_with(
        openbao,
        "mid-path-glob",
        'path "transit/encrypt/tenant_*_data" { capabilities = ["update"] }',
    )
    key = openbao.ensure_data_key(uuid.uuid4())
    assert encrypt(openbao, token, key).status_code == 403  # accepted policy, matches nothing


def test_one_exact_rule_per_tenant_keeps_the_credential_keys_out(openbao: EmbeddedOpenBao) -> None:
    tenant = uuid.uuid4()
    data_key = openbao.ensure_data_key(tenant)
    credential_key = f"tenant_{tenant}"
    openbao.as_root("POST", f"transit/keys/{credential_key}", {"type": "aes256-gcm96"})
    rule = f'path "transit/encrypt/{data_key}" {{ capabilities = ["update"] }}'
    token = token_with(openbao, f"exact-{tenant}", rule)
    assert encrypt(openbao, token, data_key).status_code == 200
    assert encrypt(openbao, token, credential_key).status_code == 403


def test_policy_file_is_written_for_the_default_mount() -> None:
    text = (Path(__file__).resolve().parents[1] / "deploy/openbao/session-audit.hcl").read_text()
    rules = [line for line in text.splitlines() if line.startswith("path ")]
    assert 'path "transit/encrypt/tenant_*" {' in rules
    assert not any("decrypt" in rule or "keys" in rule for rule in rules)
