"""The lean pull on a real nats-server: when a pull ends, deleted durables, late deliveries."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from service.dev.embedded import EmbeddedNats
from service.pull import REPLY_GRACE_S, ConsumerGone, LeanPull
from tests.integration_support import (
    consumer,
    drained,
    eventually,
    has_rows,
    isolated,
    publish_event,
    rows_per_session,
    running_service,
    session_event,
)

ACK_WAIT_S = 30  # longer than any test here waits: a stranded delivery would show


@dataclass(frozen=True)
class Scratch:
    """A stream and a durable of one test, and a client on them."""

    nc: Client
    stream: str
    subject: str
    durable: str

    @property
    def js(self) -> JetStreamContext:
        """JetStream on the test's client."""
        return self.nc.jetstream()

    @property
    def next_subject(self) -> str:
        """Where pull requests of the durable go."""
        return f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}"

    async def publish(self, count: int) -> list[int]:
        """Publish count messages; their stream sequences."""
        return [(await self.js.publish(f"{self.subject}.{n}", b"{}")).seq for n in range(count)]

    async def add_durable(self) -> None:
        """Create the durable (again)."""
        await self.js.add_consumer(
            self.stream,
            ConsumerConfig(
                durable_name=self.durable,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT_S,
                filter_subject=f"{self.subject}.>",
            ),
        )

    async def pull(self) -> LeanPull:
        """An open LeanPull on the durable."""
        pull = LeanPull(self.nc, self.next_subject)
        await pull.open()
        return pull


@asynccontextmanager
async def scratch(url: str, **connect: object) -> AsyncIterator[Scratch]:
    """A fresh stream and durable on the server at url, removed afterwards."""
    nc = await nats.connect(url, connect_timeout=5, **connect)
    tag = uuid.uuid4().hex[:8]
    names = Scratch(nc, f"LEAN_{tag}", f"lean.{tag}", f"lean-{tag}")
    await names.js.add_stream(StreamConfig(name=names.stream, subjects=[f"{names.subject}.>"]))
    await names.add_durable()
    try:
        yield names
    finally:
        with suppress(Exception):
            await names.js.delete_stream(names.stream)
        await nc.close()


async def timed(pending: Awaitable[list[Msg]]) -> tuple[list[Msg], float]:
    """The result of a fetch and the seconds it took from now."""
    started = time.monotonic()
    messages = await pending
    return messages, time.monotonic() - started


async def test_a_pull_of_fewer_messages_than_asked_ends_on_the_status_not_the_wait(
    nats_url: str,
) -> None:
    async with scratch(nats_url) as s:
        pull = await s.pull()
        try:
            await s.publish(3)
            # Three there now: they come at once, the 404 ends the request.
            messages, seconds = await timed(pull.fetch(10, wait=5.0))
            assert len(messages) == 3
            assert seconds < 1.0, seconds
            assert all(isinstance(m, Msg) and m.metadata.num_delivered == 1 for m in messages)
            for m in messages:
                await m.ack()

            # Nothing there: the 408 at the request's expiry ends it, not the grace after.
            messages, seconds = await timed(pull.fetch(10, wait=0.3))
            assert messages == []
            assert 0.25 < seconds < 0.3 + REPLY_GRACE_S / 2, seconds

            # The first message to come ends a long wait at once.
            fetching = asyncio.create_task(pull.fetch(10, wait=10.0))
            await asyncio.sleep(0.2)
            await s.publish(1)
            messages, seconds = await timed(fetching)
            assert len(messages) == 1
            assert seconds < 2.0, seconds
            await messages[0].ack()
        finally:
            await pull.close()


async def test_acks_from_the_lean_pull_settle_the_messages(nats_url: str) -> None:
    async with scratch(nats_url) as s:
        pull = await s.pull()
        try:
            sequences = await s.publish(600)
            taken: list[Msg] = []
            while len(taken) < 600:
                taken += await pull.fetch(500, wait=1.0)
            assert [m.metadata.sequence.stream for m in taken] == sequences
            await asyncio.gather(*(m.ack() for m in taken[:300]))
            await asyncio.gather(*(m.term() for m in taken[300:]))
            await s.nc.flush()
        finally:
            await pull.close()
        info = await s.js.consumer_info(s.stream, s.durable)
        assert info.num_ack_pending == 0
        assert info.num_pending == 0


async def test_a_deleted_durable_ends_the_pull_at_once_and_every_later_one(
    nats_url: str,
) -> None:
    async with scratch(nats_url) as s:
        pull = await s.pull()
        try:
            fetching = asyncio.create_task(pull.fetch(10, wait=10.0))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            await s.js.delete_consumer(s.stream, s.durable)
            with pytest.raises(ConsumerGone, match="409 Consumer Deleted"):
                await fetching
            assert time.monotonic() - started < 1.0

            # No one answers for it now (503), until it exists again.
            with pytest.raises(ConsumerGone, match="503"):
                await pull.fetch(10, wait=0.5)
            await s.add_durable()
            await s.publish(2)
            messages: list[Msg] = []
            async with asyncio.timeout(10):
                while not messages:
                    messages = await pull.fetch(10, wait=0.5)
            assert len(messages) == 2
            await asyncio.gather(*(m.ack() for m in messages))
        finally:
            await pull.close()


async def test_deliveries_for_a_request_given_up_on_come_with_the_next_fetch(
    nats_url: str,
) -> None:
    async with scratch(nats_url) as s:
        pull = await s.pull()
        try:
            # A fetch abandoned mid-wait leaves its request open on the server.
            abandoned = asyncio.create_task(pull.fetch(10, wait=5.0))
            await asyncio.sleep(0.1)
            abandoned.cancel()
            with suppress(asyncio.CancelledError):
                await abandoned
            sequences = await s.publish(3)
            await asyncio.sleep(0.3)  # delivered to the inbox for the ended request

            messages, seconds = await timed(pull.fetch(10, wait=5.0))
            assert [m.metadata.sequence.stream for m in messages][:1] == sequences[:1]
            assert seconds < 1.0, "came from what had arrived, not from a new wait"
            rest = [m.metadata.sequence.stream for m in messages]
            while len(rest) < 3:
                more = await pull.fetch(10, wait=1.0)
                messages += more
                rest += [m.metadata.sequence.stream for m in more]
            assert rest == sequences
            assert all(m.metadata.num_delivered == 1 for m in messages)
            await asyncio.gather(*(m.ack() for m in messages))
        finally:
            await pull.close()


async def test_deliveries_arriving_after_the_last_fetch_are_handed_back_on_close(
    nats_url: str,
) -> None:
    async with scratch(nats_url) as s:
        pull = await s.pull()
        abandoned = asyncio.create_task(pull.fetch(10, wait=1.0))
        await asyncio.sleep(0.1)
        abandoned.cancel()
        with suppress(asyncio.CancelledError):
            await abandoned
        sequences = await s.publish(3)
        # close() hands back what came and waits out the abandoned request, so that
        # nothing comes to the inbox after it is gone.
        await pull.close()
        await s.nc.flush()

        # Another puller gets them all at once: what was delivered came back with a nak,
        # none waits for ACK_WAIT_S (30 s).
        stand_in = await s.pull()
        try:
            again: list[Msg] = []
            async with asyncio.timeout(5):
                while len(again) < 3:
                    again += await stand_in.fetch(10, wait=0.5)
            assert sorted(m.metadata.sequence.stream for m in again) == sequences
            assert any(m.metadata.num_delivered == 2 for m in again), "one was delivered before"
            await asyncio.gather(*(m.ack() for m in again))
        finally:
            await stand_in.close()


async def test_a_pull_open_while_nats_restarts_ends_and_the_next_one_gets_messages(
    tmp_path: Path,
) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    await asyncio.to_thread(server.start)
    try:
        options = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.2}
        async with scratch(server.url, **options) as s:
            pull = await s.pull()
            try:
                fetching = asyncio.create_task(pull.fetch(10, wait=30.0))
                await asyncio.sleep(0.2)
                await asyncio.to_thread(server.restart)
                # The request died with the server; the reconnect ends the wait for it.
                messages, seconds = await timed(fetching)
                assert messages == []
                assert seconds < 10, seconds

                await s.publish(2)
                async with asyncio.timeout(15):
                    while len(messages) < 2:
                        with suppress(ConsumerGone):  # JetStream may still be loading
                            messages += await pull.fetch(10, wait=0.5)
                assert len(messages) == 2
                await asyncio.gather(*(m.ack() for m in messages))
            finally:
                await pull.close()
    finally:
        await asyncio.to_thread(server.stop)


async def test_durable_deleted_while_the_service_runs_is_created_again_and_consumed(
    tmp_path: Path, db: asyncpg.Connection, js: JetStreamContext
) -> None:
    before = [session_event() for _ in range(3)]
    after = [session_event() for _ in range(3)]
    ids = [e["session_id"] for e in before + after]
    async with (
        isolated(js, "deleted") as names,
        running_service(tmp_path / "service.log", **names.env) as service,
    ):
        for event in before:
            await publish_event(js, event)
        await eventually(lambda: has_rows(db, ids[:3], 3), within=20, what="first rows")

        await js.delete_consumer("DEVICE_EVENTS", names.durable)
        for event in after:
            await publish_event(js, event)
        # Created again as declared (deliver all): the whole stream comes again.
        await eventually(lambda: has_rows(db, ids, 6), within=60, what="rows after")
        await eventually(lambda: drained(js, names.durable), within=60, what="the stream settled")
        info = await consumer(js, names.durable)
        assert service.proc is not None
        assert service.proc.poll() is None, "went on in the same process"
        log = service.log()

    assert info.config.deliver_policy == DeliverPolicy.ALL
    assert "bound again" in log
    assert "event loop: " in log  # said once at start-up
    assert await rows_per_session(db, ids) == dict.fromkeys(ids, 1)
