"""What an encrypt answer of Transit means: the ciphertexts, or the reason there are none."""

import httpx

from service.encryption.errors import (
    EncryptionUnavailable,
    json_of,
    server_errors,
    status_failure,
)


def missing_key(url: str, mount: str, key: str) -> EncryptionUnavailable:
    """The tenant's data key does not exist (and must not be created here)."""
    return EncryptionUnavailable(
        "key_not_found",
        f"Transit key {key} does not exist on mount {mount} at {url}; the platform creates it "
        "with the tenant, this service never does: check that the tenant exists",
    )


def denied(url: str, path: str, key: str) -> EncryptionUnavailable:
    """The token may not encrypt with key."""
    return EncryptionUnavailable(
        "permission_denied",
        f"OpenBao at {url} refused encrypt with Transit key {key}: the token is expired or "
        f"revoked, or lacks update on {path}; apply deploy/openbao/session-audit.hcl, "
        "check OPENBAO_TRANSIT_MOUNT",
    )


def ciphertexts(
    response: httpx.Response, *, url: str, mount: str, key: str, count: int
) -> list[str]:
    """The count vault: ciphertexts of a batch encrypt answer (not a 403), in item order."""
    what = f"encrypt with Transit key {key} (mount {mount})"
    results = json_of(response).get("data", {}).get("batch_results")
    if not isinstance(results, list):
        if response.status_code == 400 and "key not found" in server_errors(response):
            # How a missing key is answered when the mount has disable_upsert set.
            raise missing_key(url, mount, key)
        raise status_failure(response, url, what)
    # One bad item turns the whole answer into a 400 that still carries every result.
    failed = [(i, r.get("error")) for i, r in enumerate(results) if r.get("error")]
    if failed:
        index, error = failed[0]
        raise EncryptionUnavailable(
            "bad_response",
            f"OpenBao refused {len(failed)} of {len(results)} items to {what}; "
            f"item {index}: {error}",
        )
    found = [r.get("ciphertext") for r in results]
    texts = [c for c in found if isinstance(c, str) and c.startswith("vault:")]
    if len(texts) != count or len(found) != count:
        raise EncryptionUnavailable(
            "bad_response",
            f"OpenBao answered {what} with {len(texts)} vault: ciphertexts for {count} items",
        )
    if response.status_code != 200:
        raise status_failure(response, url, what)
    return texts
