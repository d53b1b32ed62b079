"""OpenBao Transit: each tenant's audit details encrypted with its data key, in batches."""

import asyncio
import base64
import ssl
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from uuid import UUID

import httpx
from pydantic import SecretStr

from service.config import Settings
from service.encryption.answers import ciphertexts, denied, missing_key
from service.encryption.errors import (
    EncryptionUnavailable,
    data_key_name,
    json_of,
    status_failure,
    transport_failure,
)
from service.encryption.token import read_token

# OpenBao's listener refuses JSON holding more than max_request_json_strings (1000 by
# default) strings, and each batch item costs two ("plaintext" and its value): a batch of
# 500 is refused whole. 400 leaves room for a server configured a little tighter.
ITEMS_PER_REQUEST = 400
# httpcore's pool does work in proportion to connections times waiting requests for every
# request, so 50 tenants' requests at once cost more client CPU than OpenBao spends on them:
# about 2,500 items/s at 50 tenants, twice that with 4 to 8 in flight (no loss at 1 tenant).
REQUESTS_IN_FLIGHT = 8
# Capabilities are a matter of the path alone, so any data key name stands for them all.
_PROBE_KEY = data_key_name(UUID(int=0))


class TransitClient:
    """OpenBao Transit for the whole process: one token, one keep-alive connection pool."""

    def __init__(
        self,
        url: str,
        token: SecretStr,
        *,
        mount: str = "transit",
        timeout_s: float = 5.0,
        ca_file: Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.mount = mount
        self.timeout_s = timeout_s
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            verify = ssl.create_default_context(cafile=ca_file)
        self._http = httpx.AsyncClient(
            base_url=f"{self.url}/v1/",
            headers={"X-Vault-Token": token.get_secret_value()},
            timeout=timeout_s,
            verify=verify,
            transport=transport,
            # Two beyond the encrypt requests, so that /readyz's health check never queues.
            limits=httpx.Limits(
                max_connections=REQUESTS_IN_FLIGHT + 2,
                max_keepalive_connections=REQUESTS_IN_FLIGHT + 2,
            ),
        )
        self._in_flight = asyncio.Semaphore(REQUESTS_IN_FLIGHT)

    @classmethod
    def from_settings(cls, settings: Settings) -> "TransitClient | None":
        """The process's client, or None while OPENBAO_ADDR is unset (encryption off)."""
        if settings.openbao_addr is None:
            return None
        return cls(
            settings.openbao_addr,
            read_token(settings),
            mount=settings.openbao_transit_mount,
            timeout_s=settings.openbao_timeout_s,
            ca_file=settings.openbao_ca_file,
        )

    async def encrypt_details(self, items: Sequence[tuple[UUID, bytes]]) -> list[str]:
        """Encrypt each (tenant, plaintext) with its tenant's data key; ciphertexts in order."""
        by_tenant: dict[UUID, list[int]] = {}
        for index, (tenant_id, _) in enumerate(items):
            by_tenant.setdefault(tenant_id, []).append(index)
        requests = [
            (tenant_id, part)
            for tenant_id, indexes in by_tenant.items()
            for part in _parts(indexes)
        ]
        # Every request runs to its end, so that none is left behind to fail unobserved.
        results = await asyncio.gather(
            *(
                self._encrypt(tenant_id, [items[i][1] for i in part])
                for tenant_id, part in requests
            ),
            return_exceptions=True,
        )
        in_order = [""] * len(items)
        for (_, part), result in zip(requests, results, strict=True):
            if isinstance(result, BaseException):
                raise result  # the first failed tenant's, in input order
            for index, ciphertext in zip(part, result, strict=True):
                in_order[index] = ciphertext
        return in_order

    async def health(self) -> bool:
        """Whether OpenBao is initialised, unsealed and serving (for /readyz)."""
        params = {"standbyok": "true", "perfstandbyok": "true"}
        try:
            response = await self._http.get("sys/health", params=params)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def check_token(self) -> float:
        """At start-up: the token is valid, may encrypt with data keys and may not create them.

        Returns its seconds to live (0: it does not expire) so that renewal can be planned.
        """
        response = await self._request("GET", "auth/token/lookup-self", what="token lookup")
        if response.status_code != 200:
            raise status_failure(response, self.url, "the token's lookup-self")
        path = f"{self.mount}/encrypt/{_PROBE_KEY}"
        capabilities = await self._capabilities(path)
        if {"root", "create"} & set(capabilities):
            raise EncryptionUnavailable(
                "unsafe_token",
                f"the OpenBao token may create Transit keys ({', '.join(capabilities)} on {path}); "
                "this service must never create one: give it a token with only the policy "
                "deploy/openbao/session-audit.hcl",
            )
        if "update" not in capabilities:
            granted = ", ".join(capabilities) or "nothing"
            raise EncryptionUnavailable(
                "permission_denied",
                f"the OpenBao token may not encrypt with tenant data keys ({granted} on {path}); "
                "apply deploy/openbao/session-audit.hcl, check OPENBAO_TRANSIT_MOUNT",
            )
        return float(json_of(response).get("data", {}).get("ttl", 0))

    async def renew_token(self) -> float:
        """Renew the (periodic) token; its seconds to live afterwards."""
        response = await self._request("POST", "auth/token/renew-self", what="token renewal")
        if response.status_code != 200:
            raise status_failure(response, self.url, "the token's renew-self")
        return float(json_of(response).get("auth", {}).get("lease_duration", 0))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _encrypt(self, tenant_id: UUID, plaintexts: list[bytes]) -> list[str]:
        key = data_key_name(tenant_id)
        body = {"batch_input": [{"plaintext": base64.b64encode(p).decode()} for p in plaintexts]}
        try:
            async with self._in_flight:
                response = await self._request(
                    "POST", f"{self.mount}/encrypt/{key}", what=f"encrypt with {key}", json=body
                )
            if response.status_code == 403:
                raise await self._refused(key)
            return ciphertexts(
                response, url=self.url, mount=self.mount, key=key, count=len(plaintexts)
            )
        except EncryptionUnavailable as failure:
            failure.key, failure.tenant_id = key, tenant_id
            raise

    async def _refused(self, key: str) -> EncryptionUnavailable:
        # A token without create meets a missing key with a 403 too: Transit takes that encrypt
        # for a create (it would make the key), which the ACL refuses. What the token may do on
        # the path tells the two apart: update granted means the key is what is missing.
        path = f"{self.mount}/encrypt/{key}"
        if "update" in await self._capabilities(path):
            return missing_key(self.url, self.mount, key)
        return denied(self.url, path, key)

    async def _capabilities(self, path: str) -> list[str]:
        """The token's capabilities on path; none when the token itself is refused."""
        response = await self._request(
            "POST", "sys/capabilities-self", what="capabilities lookup", json={"paths": [path]}
        )
        if response.status_code != 200:
            return []
        found = json_of(response).get("data", {}).get(path, [])
        return [str(c) for c in found] if isinstance(found, list) else []

    async def _request(
        self, method: str, path: str, *, what: str, json: Any = None
    ) -> httpx.Response:
        try:
            return await self._http.request(method, path, json=json)
        except httpx.TransportError as error:
            raise transport_failure(error, self.url, self.timeout_s, what) from error


def _parts(indexes: list[int]) -> list[list[int]]:
    """Split into the fewest requests the server accepts, of even size (500 → 250 + 250)."""
    count = -(-len(indexes) // ITEMS_PER_REQUEST)
    size = -(-len(indexes) // count)
    return [indexes[start : start + size] for start in range(0, len(indexes), size)]
