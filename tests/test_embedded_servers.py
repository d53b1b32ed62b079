"""The embedded nats-server and PostgreSQL are real, survive restarts and free their ports."""

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import nats

from service.dev.embedded import EmbeddedNats, EmbeddedPostgres, port_open

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a private loop, leaving pytest-asyncio's session loop alone."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def js_publish(url: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="PROBE", subjects=["probe.>"])
        for i in range(3):
            ack = await js.publish("probe.x", f"msg-{i}".encode())
            assert ack.seq == i + 1
    finally:
        await nc.close()


async def js_read(url: str) -> list[bytes]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("PROBE")
        return [
            (await js.get_msg("PROBE", seq)).data or b""
            for seq in range(1, info.state.messages + 1)
        ]
    finally:
        await nc.close()


async def pg_write(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        version: str = await conn.fetchval("select version()")
        await conn.execute("create table probe (id int primary key, note text not null)")
        await conn.execute("insert into probe values (1, 'one'), (2, 'two')")
        return version
    finally:
        await conn.close()


async def pg_read(dsn: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [
            (r["id"], r["note"]) for r in await conn.fetch("select id, note from probe order by id")
        ]
    finally:
        await conn.close()


def test_embedded_nats(tmp_path: Path) -> None:
    expected = [b"msg-0", b"msg-1", b"msg-2"]
    server = EmbeddedNats(tmp_path / "nats")
    with server:
        port = server.port
        assert port != 4222
        assert server.url == f"nats://127.0.0.1:{port}"
        run(js_publish(server.url))
        assert run(js_read(server.url)) == expected

        server.restart()
        assert server.port == port
        assert run(js_read(server.url)) == expected

        server.stop(kill=True)
        assert not server.running
        server.start()
        assert run(js_read(server.url)) == expected
    assert not server.running
    assert not port_open(port)
    server.stop()  # idempotent


def test_embedded_postgres(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg")
    with server:
        port = server.port
        assert port != 5432
        assert server.url() == f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
        server.create_database("audit")
        server.create_database("audit")  # idempotent
        dsn = server.url("audit", driver="postgresql")
        assert "PostgreSQL 16" in run(pg_write(dsn))
        assert run(pg_read(dsn)) == [(1, "one"), (2, "two")]

        server.restart()
        assert server.port == port
        assert run(pg_read(dsn)) == [(1, "one"), (2, "two")]

        # A crash leaves a stale postmaster.pid behind; the next start must cope with it.
        server.stop(kill=True)
        assert (tmp_path / "pg" / "postmaster.pid").exists()
        server.start()
        assert run(pg_read(dsn)) == [(1, "one"), (2, "two")]
    assert not server.running
    assert not port_open(port)
    server.stop()  # idempotent

    # The data dir is reusable by a fresh instance on a fresh port.
    with EmbeddedPostgres(tmp_path / "pg") as again:
        assert run(pg_read(again.url("audit", driver="postgresql"))) == [(1, "one"), (2, "two")]
