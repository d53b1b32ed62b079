"""The anchor: every seal's seq and hash, published to a JetStream stream of the trail's own.

The database can be rewritten by whoever owns it; the anchor lives elsewhere (NATS, under
other credentials), so deleting the newest seals together with their rows, which leaves a
chain that is intact as far as it goes, still shows against the anchor. One message per
seal on `audit.seals.<stream>.<seq>`: headers Audit-Seal-Seq and Audit-Seal-Hash (hex), and
Nats-Msg-Id `seal:<seq>`, so that replicas anchoring the same seal store it once; the
payload is the JSON array [[row id, session id], ...] of the seal, so that a verifier can
name the sessions of a seal that is gone from the database. The stream denies deleting and
purging messages.

Anchoring never holds up the writer: a background task publishes what the database has
and the stream lacks, when notified after a commit and every few seconds besides.
"""

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass
from uuid import UUID

from nats.errors import MaxPayloadError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings
from service.trail.store import SealSummary, seals_after

logger = logging.getLogger(__name__)

SUBJECT_PREFIX = "audit.seals"
SEQ_HEADER = "Audit-Seal-Seq"
HASH_HEADER = "Audit-Seal-Hash"
ROWS_OMITTED_HEADER = "Audit-Seal-Rows-Omitted"
MSG_ID = "Nats-Msg-Id"
# Replicas catching up at once publish the same seals within seconds; an hour is ample.
DUPLICATE_WINDOW_S = 3600
POLL_S = 5.0
_PAGE = 100


async def ensure_anchor_stream(js: JetStreamContext, settings: Settings) -> None:
    """Create the anchor stream if it is absent; an existing one is left as it is."""
    name = settings.trail_anchor_stream
    try:
        await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(
            api.StreamConfig(
                name=name,
                subjects=[f"{subject_of(name, None)}"],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                max_age=settings.trail_anchor_max_age_days * 86_400,
                duplicate_window=DUPLICATE_WINDOW_S,
                deny_delete=True,
                deny_purge=True,
            )
        )
        logger.info("created seal anchor stream %s for %s", name, subject_of(name, None))


def subject_of(stream: str, seq: int | None) -> str:
    """Seal seq's anchor subject; with seq None, the stream's wildcard.

    The stream's name is in it, so that anchor streams of different trails (databases)
    can share a NATS server without their subjects overlapping.
    """
    return f"{SUBJECT_PREFIX}.{stream}.{'>' if seq is None else seq}"


def anchor_headers(seq: int, seal_hash: bytes) -> dict[str, str]:
    """The headers of seal seq's anchor message."""
    return {MSG_ID: f"seal:{seq}", SEQ_HEADER: str(seq), HASH_HEADER: seal_hash.hex()}


async def publish_anchor(js: JetStreamContext, stream: str, seal: SealSummary) -> None:
    """Publish one seal's anchor and wait for the stream's ack."""
    subject = subject_of(stream, seal.seq)
    headers = anchor_headers(seal.seq, seal.seal_hash)
    rows = [[str(r), str(s)] for r, s in zip(seal.row_ids, seal.session_ids, strict=True)]
    payload = json.dumps(rows, separators=(",", ":")).encode()
    try:
        await js.publish(subject, payload, stream=stream, headers=headers)
    except MaxPayloadError:
        # A seal of a very large batch: its hash still goes out, its sessions cannot.
        headers[ROWS_OMITTED_HEADER] = str(len(rows))
        await js.publish(subject, b"", stream=stream, headers=headers)


async def newest_anchored_seq(js: JetStreamContext, stream: str) -> int:
    """The seq of the stream's last message, 0 when it holds none."""
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return 0
    last = await js.get_msg(stream, info.state.last_seq)
    return int((last.headers or {}).get(SEQ_HEADER, 0))


async def anchor_pending(
    js: JetStreamContext, engine: AsyncEngine, *, stream: str = "AUDIT_SEALS"
) -> int:
    """Publish, in seq order, every seal newer than the stream's last; how many were published."""
    after = await newest_anchored_seq(js, stream)
    published = 0
    while seals := await seals_after(engine, after, _PAGE):
        for seal in seals:
            await publish_anchor(js, stream, seal)
            after = seal.seq
            published += 1
    return published


class Anchoring:
    """The background task that anchors seals; notify() after a commit wakes it at once."""

    def __init__(
        self,
        js: Callable[[], JetStreamContext | None],
        engine: AsyncEngine,
        settings: Settings,
    ) -> None:
        self._js = js
        self._engine = engine
        self._settings = settings
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        """New seals were committed: anchor them soon. Never blocks."""
        self._wake.set()

    def start(self) -> None:
        """Start the task in the running event loop."""
        self._task = asyncio.create_task(self._run(), name="trail-anchoring")

    async def stop(self) -> None:
        """Stop the task; seals not yet anchored are anchored by the next start."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        stream = self._settings.trail_anchor_stream
        ensured = False
        trouble: str | None = None
        while True:
            # Cleared before the round: a notify() during it makes the wait below return.
            self._wake.clear()
            try:
                # The broker's JetStream, or None (or an error) while it is not connected.
                js = self._js()
                if js is not None:
                    if not ensured:
                        await ensure_anchor_stream(js, self._settings)
                        ensured = True
                    await anchor_pending(js, self._engine, stream=stream)
                    if trouble is not None:
                        logger.info("seal anchoring to %s works again", stream)
                        trouble = None
            except Exception as error:  # NATS or the database away: try again next round
                said = f"{type(error).__name__}: {error}"
                if said != trouble:  # once per kind of trouble, not every round
                    logger.warning("cannot anchor seals to %s yet: %s", stream, said)
                    trouble = said
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=POLL_S)


def start_anchoring(
    js: Callable[[], JetStreamContext | None], engine: AsyncEngine, settings: Settings
) -> Anchoring:
    """Start anchoring seals in the background; js() gives the broker's JetStream, or None.

    js may also raise while the broker is not connected (FastStream's connection_state
    does): the round is skipped and tried again.
    """
    anchoring = Anchoring(js, engine, settings)
    anchoring.start()
    return anchoring


async def stop_anchoring(anchoring: Anchoring) -> None:
    """Stop the background anchoring."""
    await anchoring.stop()


@dataclass(frozen=True, slots=True)
class Anchored:
    """One anchor message as the verifier reads it: which seal, and the hash it had."""

    seq: int
    seal_hash: bytes


class AnchorReader:
    """The anchor stream as it was when opened: its messages, and a seal's rows on demand."""

    def __init__(self, js: JetStreamContext, stream: str, info: api.StreamInfo) -> None:
        self.js = js
        self.stream = stream
        # Messages stored later are not read: the database snapshot is taken after this,
        # so every seal anchored up to here was committed before the snapshot.
        self.last_stream_seq = info.state.last_seq if info.state.messages else 0
        self.unreadable = 0

    async def anchored(self, *, chunk: int = 1000) -> AsyncIterator[list[Anchored]]:
        """Every anchor message up to last_stream_seq, headers only, in chunks."""
        if not self.last_stream_seq:
            return
        sub = await self.js.subscribe(
            subject_of(self.stream, None),
            stream=self.stream,
            ordered_consumer=True,
            headers_only=True,
        )
        found: list[Anchored] = []
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=5.0)
                except NatsTimeoutError:
                    break  # the remaining messages expired after the stream was read
                position = msg.metadata.sequence.stream
                if position > self.last_stream_seq:
                    break
                headers = msg.headers or {}
                try:
                    found.append(
                        Anchored(int(headers[SEQ_HEADER]), bytes.fromhex(headers[HASH_HEADER]))
                    )
                except (KeyError, ValueError):
                    self.unreadable += 1
                if len(found) >= chunk:
                    yield found
                    found = []
                if position == self.last_stream_seq or msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        if found:
            yield found

    async def rows_of(self, seq: int) -> list[tuple[UUID, UUID]] | None:
        """(row id, session id) of the seal the anchor names seq, None if it does not say."""
        try:
            msg = await self.js.get_last_msg(self.stream, subject_of(self.stream, seq))
        except NotFoundError:
            return None
        try:
            return [(UUID(row), UUID(session)) for row, session in json.loads(msg.data or b"")]
        except (ValueError, TypeError):  # rows omitted (too large), or not what we publish
            return None
