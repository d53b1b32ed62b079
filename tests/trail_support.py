"""The trail tests' own migrated database and logins; rows written and sealed as the service does.

A database of their own: the run's database is emptied by other tests (TRUNCATE audit_logs),
which would read as deleted rows here, and its unsealed rows as findings.
"""

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import nkeys  # type: ignore[import-untyped]
from nats.js import JetStreamContext
from sqlalchemy.engine import make_url

from service.config import Settings
from service.dev.stack import migrate, writer_url
from service.events import SessionEndEvent
from service.repository import ACTION, create_engine, insert_session_ends, plaintext_row, write_rows
from service.trail.anchor import AnchorReader
from service.trail.hashing import row_image_from_record
from service.trail.keys import Signer, signer_from_seed, trusted_keys
from service.trail.seals import Seal, SealedRow, append_seal
from service.trail.verify import Report, verify_trail
from tests.session_events import session_end


def dsn(url: str) -> str:
    """asyncpg's DSN for a SQLAlchemy URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def new_signer() -> Signer:
    """A fresh signing key."""
    return signer_from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER).decode())


@dataclass(frozen=True)
class TrailDatabase:
    """A migrated database of the trail tests, its owner, a writer and a verifier login."""

    owner_url: str
    writer_url: str
    verifier_url: str
    verifier_role: str


@asynccontextmanager
async def connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection to url, closed after the block."""
    conn = await asyncpg.connect(dsn(url))
    try:
        yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def trail_database(admin_url: str) -> AsyncIterator[TrailDatabase]:
    """A new database migrated to head, with logins of its own; all gone after the block."""
    tag = uuid.uuid4().hex[:8]
    name, writer, verifier = f"trail_test_{tag}", f"trail_writer_{tag}", f"trail_verifier_{tag}"
    owner_url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    async with connection(admin_url) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        # migrate() and writer_url() run event loops of their own: each in a thread.
        await asyncio.to_thread(migrate, owner_url)
        writer_login = await asyncio.to_thread(
            writer_url, owner_url, role=writer, password=uuid.uuid4().hex
        )
        password = uuid.uuid4().hex
        async with connection(owner_url) as owner:
            await owner.execute(
                f"CREATE ROLE \"{verifier}\" LOGIN PASSWORD '{password}' IN ROLE audit_verifier"
            )
        verifier_url = (
            make_url(owner_url)
            .set(username=verifier, password=password)
            .render_as_string(hide_password=False)
        )
        yield TrailDatabase(owner_url, writer_login, verifier_url, verifier)
    finally:
        async with connection(admin_url) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            for role in (writer, verifier):
                await admin.execute(f'DROP ROLE IF EXISTS "{role}"')


async def empty(db: TrailDatabase) -> None:
    """No rows and no seals: each test starts its trail at seal 1."""
    async with connection(db.owner_url) as owner:
        await owner.execute("TRUNCATE audit_logs, audit_seals")


def events(count: int, **fields: Any) -> list[SessionEndEvent]:
    """count session-end events of the contract's example, each a new session."""
    return [SessionEndEvent.model_validate(session_end(**fields)) for _ in range(count)]


async def insert_as_the_service(db: TrailDatabase, batch: Sequence[SessionEndEvent]) -> None:
    """Write the batch with the service's own INSERT statement, as its writer login, and
    no seal: rows as a writer without the trail (an older release) left them."""
    engine = create_engine(db.writer_url)
    try:
        async with engine.begin() as conn:
            written = await write_rows(conn, [plaintext_row(e) for e in batch])
    finally:
        await engine.dispose()
    assert len(written) == len(batch)


async def stored_rows(db: TrailDatabase, sessions: Sequence[uuid.UUID]) -> list[SealedRow]:
    """The rows of these sessions as stored (read as the owner), ready to seal."""
    keys = [f"{ACTION}:{session}" for session in sessions]
    async with connection(db.owner_url) as owner:
        records = await owner.fetch(
            "SELECT * FROM audit_logs WHERE idempotency_key = ANY($1)", keys
        )
    return [
        SealedRow(row_image_from_record(r), uuid.UUID(r["idempotency_key"].split(":", 1)[1]))
        for r in records
    ]


async def seal(db: TrailDatabase, rows: Sequence[SealedRow], signer: Signer | None) -> Seal | None:
    """append_seal in a transaction of the writer login's own."""
    engine = create_engine(db.writer_url)
    try:
        async with engine.begin() as conn:
            return await append_seal(conn, rows=rows, signer=signer)
    finally:
        await engine.dispose()


async def write_and_seal(
    db: TrailDatabase, count: int, signer: Signer | None, **fields: Any
) -> tuple[Seal, list[SessionEndEvent]]:
    """count new sessions written and sealed by the service's writer, as one batch."""
    batch = events(count, **fields)
    engine = create_engine(db.writer_url)
    try:
        result = await insert_session_ends(engine, events=batch, signer=signer)
    finally:
        await engine.dispose()
    assert (result.inserted, result.refused) == (len(batch), {})
    assert result.seal is not None
    return result.seal, batch


def anchor_settings(stream: str) -> Settings:
    """The service's settings with the test's anchor stream."""
    return Settings(trail_anchor_stream=stream)


async def verify(
    db: TrailDatabase,
    *keys: str,
    allow_unsigned: bool = False,
    since: int = 1,
    anchor: tuple[JetStreamContext, str] | None = None,
) -> Report:
    """verify_trail as the verifier login (two connections, as the command uses)."""
    async with connection(db.verifier_url) as conn, connection(db.verifier_url) as rows_conn:
        reader = None
        if anchor is not None:
            js, stream = anchor
            reader = AnchorReader(js, stream, await js.stream_info(stream))
        return await verify_trail(
            conn,
            trusted=trusted_keys(list(keys)),
            allow_unsigned=allow_unsigned,
            since=since,
            anchor=reader,
            rows_conn=rows_conn,
        )


def named(report: Report) -> set[tuple[str, int | None, uuid.UUID | None]]:
    """(kind, seq, session) of every finding."""
    return {(f.kind, f.seq, f.session_id) for f in report.findings}
