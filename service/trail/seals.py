"""The seal append: the one function the writer calls, inside its batch transaction."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from service.trail.hashing import ZERO_HASH, RowImage, SealEntry, row_hash, seal_hash
from service.trail.keys import Signer
from service.trail.store import insert_seal, lock_and_read_head


@dataclass(frozen=True, slots=True)
class SealedRow:
    """A row the batch inserted, as stored, and the session it records."""

    image: RowImage
    session_id: UUID


@dataclass(frozen=True, slots=True)
class Seal:
    """One appended seal, as stored in audit_seals."""

    seq: int
    sealed_at: datetime
    prev_hash: bytes
    seal_hash: bytes
    key_id: str | None
    signature: bytes | None
    # (row id, session id, row hash), sorted by row id.
    entries: tuple[SealEntry, ...]


async def append_seal(
    conn: AsyncConnection, *, rows: Sequence[SealedRow], signer: Signer | None
) -> Seal | None:
    """Seal the rows this transaction inserted: the chain's next seal; None for no rows.

    Call it last in the batch's transaction, after the INSERT: it takes the append lock,
    which serialises every writer's seals (and so keeps seq gapless) until this commits.
    The transaction must be READ COMMITTED, PostgreSQL's default.
    """
    if not rows:
        return None
    # Hashed before the lock, so that the lock is held for three short statements only.
    entries = tuple(sorted((row.image.id, row.session_id, row_hash(row.image)) for row in rows))
    if len({entry[0] for entry in entries}) != len(entries):
        msg = "a row id appears twice among the rows to seal"
        raise ValueError(msg)
    head = await lock_and_read_head(conn)
    seq = head.seq + 1
    prev_hash = head.seal_hash if head.seal_hash is not None else ZERO_HASH
    key_id = signer.key_id if signer is not None else None
    digest = seal_hash(
        seq=seq, prev_hash=prev_hash, sealed_at=head.sealed_at, key_id=key_id, entries=entries
    )
    signature = signer.sign(digest) if signer is not None else None
    await insert_seal(
        conn,
        {
            "seq": seq,
            "sealed_at": head.sealed_at,
            "prev_hash": prev_hash,
            "seal_hash": digest,
            "key_id": key_id,
            "signature": signature,
            "row_ids": [entry[0] for entry in entries],
            "session_ids": [entry[1] for entry in entries],
            "row_hashes": [entry[2] for entry in entries],
        },
    )
    return Seal(seq, head.sealed_at, prev_hash, digest, key_id, signature, entries)
