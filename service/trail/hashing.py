"""The trail's bytes: a row's canonical image and hash, a seal's content and hash.

docs/trail.md specifies both precisely enough to re-implement them elsewhere, with test
vectors that tests/test_trail_hashing.py reads from it. Both are SHA-256 of the RFC 8785
(JCS) serialisation of a JSON array whose first element names the format and its version.
"""

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

from service.trail.canonical import (
    MAX_SAFE_INTEGER,
    STRICT_JSON,
    CanonicalError,
    canonical_json,
    encode,
    plain,
    reference_jcs,
    utf8,
)

__all__ = [
    "ROW_COLUMNS",
    "ZERO_HASH",
    "CanonicalError",
    "RowImage",
    "SealEntry",
    "canonical_json",
    "record_hash",
    "row_array",
    "row_hash",
    "row_image_from_record",
    "seal_array",
    "seal_hash",
    "time_text",
]

ROW_FORMAT = "session-audit/row/v1"
SEAL_FORMAT = "session-audit/seal/v1"
# prev_hash of the first seal.
ZERO_HASH = bytes(32)

# (row id, session id, row hash): what a seal says about one row.
SealEntry = tuple[UUID, UUID, bytes]


@dataclass(frozen=True, slots=True)
class RowImage:
    """An audit_logs row as the trail hashes it: every column, as stored."""

    id: UUID
    tenant_id: UUID
    user_id: UUID | None
    action: str
    resource_type: str | None
    resource_id: str | None
    device_id: UUID | None
    details: Mapping[str, Any]
    encrypted_details: str | None
    ip_address: str | None
    created_at: datetime
    occurred_at: datetime | None
    ingested_at: datetime
    idempotency_key: str | None


# The columns in the order the row array holds them (after ROW_FORMAT).
ROW_COLUMNS = (
    "id",
    "tenant_id",
    "user_id",
    "action",
    "resource_type",
    "resource_id",
    "device_id",
    "details",
    "encrypted_details",
    "ip_address",
    "created_at",
    "occurred_at",
    "ingested_at",
    "idempotency_key",
)


def time_text(moment: datetime | None) -> str | None:
    """UTC as YYYY-MM-DDTHH:MM:SS.ffffffZ, always six fraction digits; None stays None."""
    if moment is None:
        return None
    if moment.tzinfo is not UTC:  # asyncpg returns timestamptz in UTC: nothing to convert
        if moment.utcoffset() is None:
            msg = f"time {moment.isoformat()} has no offset: the trail hashes only aware times"
            raise CanonicalError(msg)
        moment = moment.astimezone(UTC)
    # %-formatting pads the year to four digits, which strftime's %Y does not everywhere.
    return _TIME_FORMAT % (
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
        moment.microsecond,
    )


_TIME_FORMAT = "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ"


def row_array(image: RowImage) -> list[Any]:
    """The JSON array whose canonical bytes are hashed: the format, then every column."""
    return _row_array(
        image.id,
        image.tenant_id,
        image.user_id,
        image.action,
        image.resource_type,
        image.resource_id,
        image.device_id,
        image.details,
        image.encrypted_details,
        image.ip_address,
        image.created_at,
        image.occurred_at,
        image.ingested_at,
        image.idempotency_key,
    )


def _row_array(
    id_: Any,
    tenant_id: Any,
    user_id: Any,
    action: Any,
    resource_type: Any,
    resource_id: Any,
    device_id: Any,
    details: Any,
    encrypted_details: Any,
    ip_address: Any,
    created_at: Any,
    occurred_at: Any,
    ingested_at: Any,
    idempotency_key: Any,
) -> list[Any]:
    created = time_text(created_at)
    # str() of uuid.UUID and of asyncpg's UUID alike is the lower-case hyphenated form.
    return [
        ROW_FORMAT,
        None if id_ is None else str(id_),
        None if tenant_id is None else str(tenant_id),
        None if user_id is None else str(user_id),
        action,
        resource_type,
        resource_id,
        None if device_id is None else str(device_id),
        details,
        encrypted_details,
        ip_address,
        created,
        # The service writes occurred_at = created_at; equal instants have equal text.
        created if occurred_at == created_at else time_text(occurred_at),
        _ingested_text(ingested_at),
        idempotency_key,
    ]


_last_ingested: tuple[datetime | None, str | None] = (None, None)


def _ingested_text(moment: datetime | None) -> str | None:
    # A batch's rows share ingested_at (the transaction's now()): one conversion each.
    global _last_ingested
    last, text = _last_ingested
    if moment is None or moment != last:
        text = time_text(moment)
        _last_ingested = (moment, text)
    return text


def row_hash(image: RowImage) -> bytes:
    """SHA-256 of the row's canonical bytes."""
    return hashlib.sha256(_row_bytes(row_array(image))).digest()


def record_hash(values: Iterable[Any]) -> bytes:
    """row_hash of a row read as the columns of ROW_COLUMNS, in order (details: jsonb text).

    The verifier's path: no RowImage is built, and details may be any JSON value, so that a
    row changed into something no RowImage could hold still gets a hash (one that differs).
    """
    array = _row_array(*values)
    details = array[8]
    if type(details) is str:
        if details.isascii() and "\\u" not in details:
            # ASCII text without \u escapes (as jsonb writes details holding no control
            # character) decodes to ASCII only: no key past U+FFFF, no lone surrogate; the
            # strict decoder refuses floats and unsafe integers. The fast encoder then
            # writes JCS as it is.
            array[8] = STRICT_JSON.decode(details)
            return hashlib.sha256(utf8(encode(array))).digest()
        array[8] = json.loads(details)
    return hashlib.sha256(_row_bytes(array)).digest()


def _row_bytes(array: list[Any]) -> bytes:
    # Only details can hold what the fast path cannot write: every other element is a str
    # or None by construction (lone surrogates in them fail the UTF-8 encoding below).
    return utf8(encode(array) if plain(array[8]) else reference_jcs(array))


class Columns(Protocol):
    """A row read by column name: a mapping, or asyncpg's Record."""

    def __getitem__(self, name: str, /) -> Any: ...


def row_image_from_record(record: Columns) -> RowImage:
    """The image of a row read from the database; details may be jsonb text or a dict."""
    details = record["details"]
    if isinstance(details, str | bytes):
        details = json.loads(details)
    if not isinstance(details, dict):
        msg = f"details is a JSON {type(details).__name__}, not an object"
        raise CanonicalError(msg)
    # asyncpg hands back its own UUID type; the image holds the standard one.
    return RowImage(
        id=_as_uuid(record["id"]),
        tenant_id=_as_uuid(record["tenant_id"]),
        user_id=_as_uuid(record["user_id"]),
        action=record["action"],
        resource_type=record["resource_type"],
        resource_id=record["resource_id"],
        device_id=_as_uuid(record["device_id"]),
        details=details,
        encrypted_details=record["encrypted_details"],
        ip_address=record["ip_address"],
        created_at=record["created_at"],
        occurred_at=record["occurred_at"],
        ingested_at=record["ingested_at"],
        idempotency_key=record["idempotency_key"],
    )


def _as_uuid(value: Any) -> Any:
    if value is None or type(value) is UUID:
        return value
    return UUID(str(value))


def seal_array(
    *,
    seq: int,
    prev_hash: bytes,
    sealed_at: datetime,
    key_id: str | None,
    entries: Iterable[SealEntry],
) -> list[Any]:
    """The JSON array whose canonical bytes are a seal's hash; rows sorted by row id."""
    if len(prev_hash) != 32:
        msg = f"prev_hash has {len(prev_hash)} bytes, not 32"
        raise CanonicalError(msg)
    rows = []
    for row_id, session_id, digest in entries:
        if len(digest) != 32:
            msg = f"row {row_id} has a {len(digest)}-byte hash, not 32"
            raise CanonicalError(msg)
        rows.append([str(row_id), str(session_id), digest.hex()])
    # The lower-case text of UUIDs sorts as their 16 bytes do.
    rows.sort()
    return [SEAL_FORMAT, seq, prev_hash.hex(), time_text(sealed_at), key_id or "", rows]


def seal_hash(
    *,
    seq: int,
    prev_hash: bytes,
    sealed_at: datetime,
    key_id: str | None,
    entries: Iterable[SealEntry],
) -> bytes:
    """SHA-256 of the seal's canonical bytes; the signature is made over these 32 bytes."""
    content = seal_array(
        seq=seq, prev_hash=prev_hash, sealed_at=sealed_at, key_id=key_id, entries=entries
    )
    # Every element was built above from strings and seq: nothing the fast path cannot write.
    if not 1 <= seq <= MAX_SAFE_INTEGER:
        msg = f"seq {seq} is outside 1..2**53 - 1"
        raise CanonicalError(msg)
    return hashlib.sha256(utf8(encode(content))).digest()
