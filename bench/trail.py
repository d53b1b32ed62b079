"""The verifier's speed: sealed rows verified per second, as `trail verify` reads them."""

import json
import os
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import nkeys  # type: ignore[import-untyped]

from service.repository import create_engine
from service.trail.hashing import ROW_COLUMNS, RowImage
from service.trail.keys import signer_from_seed, trusted_keys
from service.trail.seals import SealedRow, append_seal
from service.trail.verify import Report, verify_trail


def sample_row(i: int, now: datetime) -> SealedRow:
    """A row like the service writes, for session i."""
    session, tenant, device = uuid.uuid4(), uuid.UUID(int=i % 50 + 1), uuid.UUID(int=i % 900 + 7)
    end = now - timedelta(seconds=i % 86_400, microseconds=i % 1000)
    start = end - timedelta(seconds=60 + i % 7200)
    details = {
        "session_id": str(session),
        "start_time": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end_time": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_seconds": int((end - start).total_seconds()),
        "source_ip": f"10.{i % 250}.{i % 199}.{i % 13 + 1}:{40000 + i % 20000}",
        "reason": "normal" if i % 10 else "idle_timeout",
    }
    image = RowImage(
        id=uuid.uuid4(),
        tenant_id=tenant,
        user_id=uuid.UUID(int=i % 3000 + 11),
        action="ssh_session_end",
        resource_type="device",
        resource_id=str(device),
        device_id=device,
        details=details,
        encrypted_details=None,
        ip_address=f"10.{i % 250}.{i % 199}.{i % 13 + 1}",
        created_at=end,
        occurred_at=end,
        ingested_at=now,
        idempotency_key=f"ssh_session_end:{session}",
    )
    return SealedRow(image, session)


async def seed_trail(database_url: str, *, rows: int, batch: int = 500, seed: str) -> None:
    """Write rows sealed batch by batch as the service would, signed with seed (owner's URL)."""
    signer = signer_from_seed(seed)
    engine = create_engine(database_url)
    now = datetime.now(UTC)
    try:
        for start in range(0, rows, batch):
            sealed = [sample_row(i, now) for i in range(start, min(rows, start + batch))]
            async with engine.begin() as conn:
                raw = (await conn.get_raw_connection()).driver_connection
                assert raw is not None
                records = [
                    tuple(
                        json.dumps(getattr(s.image, c)) if c == "details" else getattr(s.image, c)
                        for c in ROW_COLUMNS
                    )
                    for s in sealed
                ]
                await raw.copy_records_to_table("audit_logs", records=records, columns=ROW_COLUMNS)
                await append_seal(conn, rows=sealed, signer=signer)
    finally:
        await engine.dispose()


async def verify_report(database_url: str, *, trusted_key: str) -> Report:
    """trail verify's checks (no anchor) over the whole trail of database_url."""
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn, rows_conn = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        return await verify_trail(conn, trusted=trusted_keys(trusted_key), rows_conn=rows_conn)
    finally:
        await conn.close()
        await rows_conn.close()


async def measure_verify(database_url: str, *, rows: int = 200_000, batch: int = 500) -> float:
    """Rows/s verified: seal `rows` new rows into a migrated database (owner URL), verify all.

    Every row of the trail is verified, those there before included, and counted.
    """
    seed = bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER)).decode()
    await seed_trail(database_url, rows=rows, batch=batch, seed=seed)
    report = await verify_report(database_url, trusted_key=signer_from_seed(seed).key_id)
    # Rows sealed before, by another key, are findings here; the speed is what is measured.
    return report.rows_per_second
