"""The trail in numbers: its cost on the write path, and rows verified per second."""

import json
import os
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import nkeys  # type: ignore[import-untyped]

from service.dev.publisher import session_end
from service.events import SessionEndEvent
from service.repository import (
    SessionRow,
    create_engine,
    insert_session_ends,
    plaintext_row,
    write_rows,
)
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


@dataclass(frozen=True)
class TrailResult:
    """What the trail costs the write path, and how fast `trail verify` checks a trail."""

    rows: int  # written in each mode for the cost
    sealed_rows_per_s: float  # the service's write, sealed and signed in its transaction
    bare_rows_per_s: float  # the same INSERT, no seal
    sealed_cpu_us_per_row: float
    bare_cpu_us_per_row: float
    cost: float  # 1 - sealed / bare: the share of write throughput the trail takes
    verify_rows: int
    verify_rows_per_s: float


async def measure_trail(database_url: str, *, rows: int, verify_rows: int) -> TrailResult:
    """The write path with and without the seal, interleaved; then the verifier's speed.

    Both modes run the service's own INSERT of prevalidated 500-row batches as the
    database's owner in one process; they alternate batch by batch, so that a
    disturbance of the machine falls on both alike.
    """
    seed = bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER)).decode()
    signer = signer_from_seed(seed)
    rng = random.Random(3)  # noqa: S311 - sample data
    batch = 500

    def new_batch() -> list[SessionRow]:
        return [
            plaintext_row(SessionEndEvent.model_validate(session_end(rng))) for _ in range(batch)
        ]

    engine = create_engine(database_url)
    wall = {"sealed": 0.0, "bare": 0.0}
    cpu = {"sealed": 0.0, "bare": 0.0}
    try:
        await insert_session_ends(engine, rows=new_batch(), signer=signer)  # warm the pool
        for _ in range(max(1, rows // batch)):
            for mode in ("sealed", "bare"):
                work = new_batch()
                began, began_cpu = time.perf_counter(), time.process_time()
                if mode == "sealed":
                    await insert_session_ends(engine, rows=work, signer=signer)
                else:
                    async with engine.begin() as conn:
                        await write_rows(conn, work)
                wall[mode] += time.perf_counter() - began
                cpu[mode] += time.process_time() - began_cpu
    finally:
        await engine.dispose()
    written = max(1, rows // batch) * batch
    sealed, bare = written / wall["sealed"], written / wall["bare"]
    speed = await measure_verify(database_url, rows=verify_rows)
    return TrailResult(
        rows=written,
        sealed_rows_per_s=round(sealed),
        bare_rows_per_s=round(bare),
        sealed_cpu_us_per_row=round(cpu["sealed"] / written * 1e6, 1),
        bare_cpu_us_per_row=round(cpu["bare"] / written * 1e6, 1),
        cost=round(1 - sealed / bare, 3),
        verify_rows=verify_rows,
        verify_rows_per_s=round(speed),
    )
