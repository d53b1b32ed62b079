"""Verification: recompute every row hash, seal hash, link and signature; compare the anchor.

Reads with asyncpg directly, in one REPEATABLE READ READ ONLY transaction (one snapshot for
every check), as a login in audit_verifier. Seals are read in seq order, a page at a time
(keyset on seq), and the rows a page names are fetched by id in one query; the unsealed
rows are found by the server (an anti-join against every seal's row ids). The anchor is
read before the snapshot is taken, so that every seal it names was committed before it.
"""

import asyncio
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from service.repository import ACTION
from service.trail.anchor import AnchorReader
from service.trail.hashing import ZERO_HASH, CanonicalError, record_hash, seal_hash
from service.trail.keys import TrustedKeys
from service.trail.report import (
    ANCHOR_MISMATCH,
    BAD_SIGNATURE,
    BROKEN_LINK,
    CHANGED,
    DELETED,
    MISSING,
    UNSEALED,
    UNSIGNED,
    CannotVerify,
    Finding,
    Report,
)

__all__ = ["CannotVerify", "Finding", "Progress", "Report", "verify_trail"]

# A page holds about this many rows; how many seals that takes is learnt from the last page
# (a seal holds one batch: 1 to BATCH_SIZE rows).
_ROWS_PER_PAGE = 5000
_FIRST_PAGE_SEALS = 10
_MAX_PAGE_SEALS = 1000
_YIELD_EVERY_ROWS = 500

_SEALS = """
    SELECT seq, sealed_at, prev_hash, seal_hash, key_id, signature,
           row_ids, session_ids, row_hashes
    FROM audit_seals WHERE seq > $1 ORDER BY seq LIMIT $2
"""
_ROWS = """
    SELECT id, tenant_id, user_id, action, resource_type, resource_id, device_id, details,
           encrypted_details, ip_address, created_at, occurred_at, ingested_at, idempotency_key
    FROM audit_logs WHERE id = ANY($1::uuid[])
"""
# Rows of the service (its action, an idempotency key) that no seal names, whatever seq, and
# whether each predates the trail: ingested before its first seal was made (the rows of
# that seal were ingested earlier in the same transaction, but they are sealed).
_UNSEALED = """
    WITH start AS (SELECT min(sealed_at) AS at FROM audit_seals)
    SELECT a.id, a.idempotency_key, a.details ->> 'session_id' AS session,
           start.at IS NULL OR a.ingested_at < start.at AS pre_trail
    FROM audit_logs AS a CROSS JOIN start
    WHERE a.action = $1 AND a.idempotency_key IS NOT NULL
      AND NOT EXISTS (SELECT FROM (SELECT unnest(row_ids) AS id FROM audit_seals) AS s
                      WHERE s.id = a.id)
    ORDER BY a.ingested_at, a.id
"""
_SERVICE_ROWS = "SELECT count(*) FROM audit_logs WHERE action = $1 AND idempotency_key IS NOT NULL"


Progress = Callable[[Report], None]


@dataclass(frozen=True, slots=True)
class _Seal:
    seq: int
    record: asyncpg.Record

    def rows(self) -> list[tuple[UUID, UUID]]:
        return list(zip(self.record["row_ids"], self.record["session_ids"], strict=False))


async def verify_trail(
    conn: asyncpg.Connection,
    *,
    trusted: TrustedKeys,
    allow_unsigned: bool = False,
    since: int = 1,
    anchor: AnchorReader | None = None,
    progress: Progress | None = None,
    rows_conn: asyncpg.Connection | None = None,
) -> Report:
    """Check the trail from seal since to the newest; conn must see every tenant's rows.

    rows_conn, a second connection as the same login, makes it faster: the next page's rows
    are fetched there, in the same snapshot, while this page is hashed.
    """
    started = time.perf_counter()
    report = Report(since=since, unsigned_allowed=allow_unsigned)
    # Every row read is a few container objects, freed by reference counting; the cycle
    # collector would walk the whole heap again and again for nothing (a quarter of the
    # run's time, measured). It is off for the run and back on after.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return await _verify(conn, rows_conn, report, trusted, allow_unsigned, anchor, progress)
    finally:
        if collecting:
            gc.enable()
        report.seconds = time.perf_counter() - started


async def _verify(
    conn: asyncpg.Connection,
    rows_conn: asyncpg.Connection | None,
    report: Report,
    trusted: TrustedKeys,
    allow_unsigned: bool,
    anchor: AnchorReader | None,
    progress: Progress | None,
) -> Report:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if rows_conn is None:
            mismatched = await _check_chain(conn, conn, report, trusted, allow_unsigned, progress)
        else:
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            async with rows_conn.transaction(isolation="repeatable_read", readonly=True):
                await rows_conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                mismatched = await _check_chain(
                    conn, rows_conn, report, trusted, allow_unsigned, progress
                )
        await _check_unsealed(conn, report)
        if anchor is not None:
            await _check_anchor(conn, report, anchor, mismatched)
    return report


async def _check_chain(
    conn: asyncpg.Connection,
    rows_conn: asyncpg.Connection,
    report: Report,
    trusted: TrustedKeys,
    allow_unsigned: bool,
    progress: Progress | None,
) -> dict[int, bytes]:
    """Seals from report.since on; the seqs whose stored hash does not recompute, with theirs."""
    seals_query = await conn.prepare(_SEALS)
    rows_query = await rows_conn.prepare(_ROWS)

    async def rows_of(page: list[asyncpg.Record]) -> dict[Any, asyncpg.Record]:
        ids = [row_id for seal in page for row_id in seal["row_ids"]]
        return {row[0]: row for row in await rows_query.fetch(ids)}

    after = report.since - 1
    # The link into the first seal checked: zeros before seal 1, else the stored hash of the
    # seal before (which is not itself checked: --since trusts what precedes it).
    expected_prev: bytes | None = ZERO_HASH
    if after > 0:
        expected_prev = await conn.fetchval(
            "SELECT seal_hash FROM audit_seals WHERE seq = $1", after
        )
    mismatched: dict[int, bytes] = {}
    # Keyset pagination on seq: each page is an index range scan, however far in.
    page = await seals_query.fetch(after, _FIRST_PAGE_SEALS)
    ahead: asyncio.Task[dict[Any, asyncpg.Record]] | None = None
    while page:
        rows = await (ahead if ahead is not None else rows_of(page))
        named = sum(len(seal["row_ids"]) for seal in page)
        size = min(_MAX_PAGE_SEALS, max(1, _ROWS_PER_PAGE * len(page) // max(1, named)))
        following = await seals_query.fetch(page[-1]["seq"], size)
        # On a second connection the next page's rows are on their way while this page is
        # hashed (the server's part then costs no time); on one they wait their turn.
        ahead = None
        if following and rows_conn is not conn:
            ahead = asyncio.create_task(rows_of(following))
        since_yield = 0
        for record in page:
            seal = _Seal(record["seq"], record)
            if seal.seq != after + 1:
                missing = f"seal {after + 1}"
                if seal.seq > after + 2:
                    missing = f"seals {after + 1}..{seal.seq - 1}"
                _seal_findings(report, seal, BROKEN_LINK, f"{missing} missing before this seal")
            elif expected_prev is None:
                _seal_findings(report, seal, BROKEN_LINK, f"seal {after} is missing")
            elif bytes(record["prev_hash"]) != expected_prev:
                detail = f"prev_hash is not the hash of seal {after}"
                _seal_findings(report, seal, BROKEN_LINK, detail)
            recomputed = _check_seal(report, seal, trusted, allow_unsigned)
            if recomputed != bytes(record["seal_hash"]):
                mismatched[seal.seq] = recomputed
            _check_rows(report, seal, rows)
            report.seals += 1
            report.first_seq = report.first_seq or seal.seq
            report.last_seq = seal.seq
            after, expected_prev = seal.seq, recomputed
            since_yield += len(record["row_ids"])
            if ahead is not None and since_yield >= _YIELD_EVERY_ROWS:
                # Lets asyncpg take in the rows arriving meanwhile: a full socket buffer
                # would stop the server until this page is done.
                await asyncio.sleep(0)
                since_yield = 0
        if progress is not None:
            progress(report)
        page = following
    return mismatched


def _check_seal(report: Report, seal: _Seal, trusted: TrustedKeys, allow_unsigned: bool) -> bytes:
    """The seal's recomputed hash; findings if it differs from the stored one or is unproven."""
    record = seal.record
    entries = list(
        zip(record["row_ids"], record["session_ids"], record["row_hashes"], strict=False)
    )
    if not len(record["row_ids"]) == len(record["session_ids"]) == len(record["row_hashes"]):
        _seal_findings(report, seal, BAD_SIGNATURE, "its row arrays differ in length")
    try:
        recomputed = seal_hash(
            seq=seal.seq,
            prev_hash=bytes(record["prev_hash"]),
            sealed_at=record["sealed_at"],
            key_id=record["key_id"],
            # asyncpg's UUIDs are uuid.UUIDs: they sort and print as the standard ones do.
            entries=entries,
        )
    except CanonicalError as error:
        _seal_findings(report, seal, BAD_SIGNATURE, f"it cannot be hashed: {error}")
        return bytes(32)
    key_id, signature = record["key_id"], record["signature"]
    if recomputed != bytes(record["seal_hash"]):
        _seal_findings(report, seal, BAD_SIGNATURE, "its content does not hash to its seal_hash")
    if key_id is None or signature is None:
        if not allow_unsigned:
            _seal_findings(report, seal, UNSIGNED, "the seal is not signed")
        return recomputed
    report.keys[key_id] += 1
    problem = trusted.problem(key_id, recomputed, bytes(signature))
    if problem is not None:
        _seal_findings(report, seal, BAD_SIGNATURE, problem)
    return recomputed


def _check_rows(report: Report, seal: _Seal, rows: dict[Any, asyncpg.Record]) -> None:
    record = seal.record
    row_ids = record["row_ids"]
    report.rows += len(row_ids)
    for row_id, session_id, stored in zip(
        row_ids, record["session_ids"], record["row_hashes"], strict=False
    ):
        row = rows.get(row_id)
        if row is None:
            why, kind = "the row is gone", DELETED
        else:
            try:
                if record_hash(row) == stored:
                    continue
                why = "the row differs from what was sealed"
            except (CanonicalError, ValueError) as error:
                why = f"the row differs from what was sealed ({error})"
            kind = CHANGED
        report.findings.append(Finding(kind, seal.seq, _uuid(row_id), _uuid(session_id), why))


def _seal_findings(report: Report, seal: _Seal, kind: str, detail: str) -> None:
    """One finding per row of the seal: those are the rows it no longer proves."""
    for row_id, session_id in seal.rows():
        report.findings.append(Finding(kind, seal.seq, _uuid(row_id), _uuid(session_id), detail))


async def _check_unsealed(conn: asyncpg.Connection, report: Report) -> None:
    report.service_rows = await conn.fetchval(_SERVICE_ROWS, ACTION)
    for row in await conn.fetch(_UNSEALED, ACTION):
        if row["pre_trail"]:
            # Written before the trail began (before migration 0004 and a service that
            # seals): nothing can prove them, or tell them from rows forged with an old
            # ingested_at. Counted, so that a count that grows between runs shows.
            report.pre_trail_rows += 1
            continue
        report.findings.append(
            Finding(
                UNSEALED,
                None,
                _uuid(row["id"]),
                _session_of(row["idempotency_key"], row["session"]),
                "no seal names this row: it was added outside the service's transactions",
            )
        )


def _session_of(idempotency_key: str, details_session: str | None) -> UUID | None:
    for text in (idempotency_key.removeprefix(f"{ACTION}:"), details_session):
        try:
            return UUID(text) if text else None
        except ValueError:
            continue
    return None


async def _check_anchor(
    conn: asyncpg.Connection, report: Report, anchor: AnchorReader, mismatched: dict[int, bytes]
) -> None:
    """Every anchored seal from since on is in the database with the hash it was anchored with."""
    report.anchor_checked = True
    async for chunk in anchor.anchored():
        wanted = [item for item in chunk if item.seq >= report.since]
        report.anchored += len(chunk)
        report.anchored_through = max([report.anchored_through, *(item.seq for item in chunk)])
        if not wanted:
            continue
        found = await conn.fetch(
            "SELECT seq, seal_hash FROM audit_seals WHERE seq = ANY($1::bigint[])",
            [item.seq for item in wanted],
        )
        stored: dict[int, bytes] = {row["seq"]: bytes(row["seal_hash"]) for row in found}
        for item in wanted:
            if item.seq not in stored:
                await _missing(report, anchor, item.seq)
                continue
            # The recomputed hash where it differs from the stored one (that seal was changed).
            actual = mismatched.get(item.seq, stored[item.seq])
            if actual != item.seal_hash:
                record = await conn.fetchrow(
                    "SELECT row_ids, session_ids FROM audit_seals WHERE seq = $1", item.seq
                )
                detail = f"the anchor holds hash {item.seal_hash.hex()[:16]}… for this seal"
                if record is not None:  # in this snapshot it is there: it was just read
                    _seal_findings(report, _Seal(item.seq, record), ANCHOR_MISMATCH, detail)
    report.unreadable_anchors = anchor.unreadable


async def _missing(report: Report, anchor: AnchorReader, seq: int) -> None:
    detail = "the anchor names this seal; the database no longer holds it"
    rows = await anchor.rows_of(seq)
    if not rows:
        detail += " (the anchor does not list its rows)"
        report.findings.append(Finding(MISSING, seq, None, None, detail))
        return
    for row_id, session_id in rows:
        report.findings.append(Finding(MISSING, seq, row_id, session_id, detail))


def _uuid(value: Any) -> UUID | None:
    return None if value is None else UUID(str(value))
