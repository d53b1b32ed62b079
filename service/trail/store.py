"""Every SQL statement of the trail: the seal append, and reading seals and rows back."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

# pg_advisory_xact_lock key of the seal append: the ASCII bytes "SATRAIL1" as a bigint.
# Advisory locks are per database, shared with whatever else runs there: this key is
# documented in docs/trail.md so that nobody else picks it.
APPEND_LOCK_KEY = 0x5341_5452_4149_4C31

_LOCK = sa.text("SELECT pg_advisory_xact_lock(:key)")
# A statement of its own, after the lock: under READ COMMITTED its snapshot is taken once
# the lock is held, so it sees the seal the previous holder committed before releasing it.
# clock_timestamp(), not now(): the time the seal is made, increasing with seq.
_HEAD = sa.text(
    """
    SELECT current_setting('transaction_isolation') AS isolation,
           clock_timestamp() AS sealed_at, head.seq, head.seal_hash
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (SELECT seq, seal_hash FROM audit_seals ORDER BY seq DESC LIMIT 1)
         AS head ON true
    """
)
_INSERT = sa.text(
    """
    INSERT INTO audit_seals (seq, sealed_at, prev_hash, seal_hash, key_id, signature,
                             row_ids, session_ids, row_hashes)
    VALUES (:seq, :sealed_at, :prev_hash, :seal_hash, :key_id, :signature,
            CAST(:row_ids AS uuid[]), CAST(:session_ids AS uuid[]),
            CAST(:row_hashes AS bytea[]))
    """
)


@dataclass(frozen=True, slots=True)
class Head:
    """The newest seal when the lock was taken, and the database's clock then."""

    seq: int
    seal_hash: bytes | None
    sealed_at: datetime


class NotReadCommitted(RuntimeError):
    """append_seal ran in a transaction whose snapshot could miss the newest seal."""


async def lock_and_read_head(conn: AsyncConnection) -> Head:
    """Take the append lock for the rest of the transaction; then read the chain's head."""
    await conn.execute(_LOCK, {"key": APPEND_LOCK_KEY})
    row = (await conn.execute(_HEAD)).one()
    # Under REPEATABLE READ or SERIALIZABLE the snapshot predates the lock: the head read
    # would miss a seal committed meanwhile and the insert would collide on seq.
    if row.isolation != "read committed":
        msg = f"seals must be appended under READ COMMITTED, not {row.isolation.upper()}"
        raise NotReadCommitted(msg)
    return Head(row.seq or 0, row.seal_hash, row.sealed_at)


async def insert_seal(conn: AsyncConnection, values: dict[str, Any]) -> None:
    """Insert one seal row (the caller holds the append lock)."""
    await conn.execute(_INSERT, values)


_SEALS_AFTER = sa.text(
    """
    SELECT seq, seal_hash, row_ids, session_ids FROM audit_seals
    WHERE seq > :after ORDER BY seq LIMIT :limit
    """
)


@dataclass(frozen=True, slots=True)
class SealSummary:
    """What the anchor publishes of a seal."""

    seq: int
    seal_hash: bytes
    row_ids: Sequence[UUID]
    session_ids: Sequence[UUID]


async def seals_after(engine: AsyncEngine, after: int, limit: int) -> list[SealSummary]:
    """Up to limit seals with seq above after, in seq order."""
    async with engine.connect() as conn:
        result = await conn.execute(_SEALS_AFTER, {"after": after, "limit": limit})
        return [SealSummary(*row) for row in result.all()]
