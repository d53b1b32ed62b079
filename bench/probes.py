"""Watching a phase from outside: rows and dead letters so far, deadlines, progress on stderr."""

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from bench.servers import PhaseFailed

Check = Callable[[], Awaitable[tuple[bool, str]]]


def say(line: str) -> None:
    """One progress line on stderr."""
    print(f"  {time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)  # noqa: T201


async def wait_until(
    check: Check,
    *,
    deadline_s: float,
    what: str,
    every_s: float = 0.5,
    report_every_s: float = 3.0,
    watch: Callable[[], None] | None = None,
) -> None:
    """Poll check until it says done, showing its status; PhaseFailed after deadline_s."""
    started = time.monotonic()
    reported = started
    status = "nothing yet"
    while True:
        if watch is not None:
            watch()  # raises when a process the phase needs has died
        done, status = await check()
        now = time.monotonic()
        if done:
            return
        if now - started > deadline_s:
            raise PhaseFailed(f"{what}: not done after {deadline_s:.0f} s ({status})")
        if now - reported >= report_every_s:
            say(f"{what}: {status}")
            reported = now
        # Polling: the state lives in other processes; there is nothing to await on.
        await asyncio.sleep(every_s)


async def row_count(conn: asyncpg.Connection) -> int:
    """Rows in audit_logs."""
    return int(await conn.fetchval("SELECT count(*) FROM audit_logs"))


@dataclass(frozen=True)
class CommitSpan:
    """When the first and the last rows were written, from the rows themselves."""

    first: datetime
    last: datetime
    rows: int
    rows_in_first_transaction: int

    @property
    def seconds(self) -> float:
        """Between the first and the last transaction."""
        return (self.last - self.first).total_seconds()

    def events_per_s(self, events: int) -> float:
        """Rate of events handled after the first transaction, assuming them evenly mixed.

        ingested_at is now(), the same for every row of a transaction and taken at its
        start: the span from the first to the last transaction covers every row but
        those of the first one, and each row stands for events/rows messages.
        """
        if self.seconds <= 0:
            raise PhaseFailed("every row came in one transaction: too few events to time")
        after_first = self.rows - self.rows_in_first_transaction
        return events * after_first / self.rows / self.seconds


async def commit_span(conn: asyncpg.Connection) -> CommitSpan:
    """First and last ingested_at of audit_logs, with the row counts that go with them."""
    row = await conn.fetchrow(
        """
        SELECT min(ingested_at) AS first, max(ingested_at) AS last, count(*) AS rows,
               count(*) FILTER (WHERE ingested_at = (SELECT min(ingested_at) FROM audit_logs))
                 AS rows_in_first
        FROM audit_logs
        """
    )
    assert row is not None
    if not row["rows"]:
        raise PhaseFailed("no rows were written")
    return CommitSpan(row["first"], row["last"], row["rows"], row["rows_in_first"])


async def exactly_one_row_each(conn: asyncpg.Connection, keys: list[str]) -> dict[str, int]:
    """Rows, distinct keys, and expected keys present: all three must equal len(keys)."""
    row = await conn.fetchrow(
        """
        SELECT count(*) AS rows, count(DISTINCT idempotency_key) AS distinct_keys,
               count(*) FILTER (WHERE idempotency_key = ANY($1::text[])) AS expected_present
        FROM audit_logs
        """,
        keys,
    )
    assert row is not None
    totals = {name: int(row[name]) for name in ("rows", "distinct_keys", "expected_present")}
    if set(totals.values()) != {len(keys)}:
        raise PhaseFailed(f"expected one row for each of {len(keys)} sessions, got {totals}")
    return totals
