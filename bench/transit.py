"""The Transit limit: how many audit details per second the service's client gets encrypted."""

import json
import time
import uuid
from collections.abc import Sequence

import httpx
from pydantic import SecretStr

from service.encryption import TransitClient, data_key_name


def details(i: int) -> bytes:
    """About 250 bytes of JSON, like a session's audit details."""
    return json.dumps(
        {
            "session_id": str(uuid.UUID(int=i)),
            "username": f"operator{i % 97}@example.com",
            "device": f"core-router-{i % 40:03d}.dc1.example.net",
            "source_ip": f"10.{i % 250}.{i % 199}.{i % 13 + 1}",
            "start_time": "2026-03-12T16:07:10+00:00",
            "end_time": "2026-03-12T16:42:57+00:00",
            "duration_s": 2147,
            "reason": "normal",
        },
        separators=(",", ":"),
    ).encode()


async def measure_transit_limit(
    url: str, token: str, items: int, tenants: int, batch: int
) -> float:
    """Items/s: items encrypted batch at a time, each batch's items spread over the tenants.

    token must create keys (the platform's role: the embedded server's root token will do);
    the tenants' data keys are made before the clock starts.
    """
    tenant_ids = [uuid.uuid4() for _ in range(tenants)]
    async with httpx.AsyncClient(headers={"X-Vault-Token": token}, timeout=10) as admin:
        for tenant_id in tenant_ids:
            created = await admin.post(
                f"{url}/v1/transit/keys/{data_key_name(tenant_id)}", json={"type": "aes256-gcm96"}
            )
            created.raise_for_status()
    work = [(tenant_ids[i % tenants], details(i)) for i in range(items)]
    return await encrypt_rate(url, token, work, batch)


async def encrypt_rate(
    url: str, token: str, work: Sequence[tuple[uuid.UUID, bytes]], batch: int
) -> float:
    """Items/s: (tenant, plaintext) items encrypted batch at a time by the service's client.

    Batches go one after another, as the service writes them; within a batch the client sends
    each tenant's items at once. Every tenant's data key must exist; token need only encrypt.
    """
    async with TransitClient(url, SecretStr(token), timeout_s=30) as transit:
        await transit.encrypt_details(work[:batch])  # opens the connections, off the clock
        started = time.perf_counter()
        for start in range(0, len(work), batch):
            await transit.encrypt_details(work[start : start + batch])
        return len(work) / (time.perf_counter() - started)
