"""The operator's dead-letter tool, reading side: the DLQ stream, its dead letters, replay marks.

`python -m service dlq …` (cli.py beside it) runs these and replay.py's
functions; they return values and print nothing. Each call connects to NATS_URL as the
service does and reads DLQ_STREAM by sequence or through an ordered ephemeral consumer: no
durable consumer, no state left on the DLQ.

Replays are recorded in a KeyValue bucket beside the stream, `<DLQ_STREAM>_REPLAYED` (key:
DLQ sequence, value: replay time, ISO 8601), created on the first replay. Not in the dead
letters: JetStream messages are immutable, and rewriting one would give it a new sequence
and defeat the Nats-Msg-Id deduplication. Not in PostgreSQL: the tool needs only the NATS the
dead letters live in. The bucket's TTL is the stream's MaxAge, so a mark expires after its
dead letter; a mark older than the stream (a recreated DLQ restarts its sequences) is ignored.
"""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime

import nats
from faststream.nats.security import parse_security
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from service.broker import nats_security
from service.config import Settings, redact
from service.deadletters.letters import DeadLetter

# A read ends when the consumer has nothing pending; this only bounds the wait when the
# last messages expire between reading the stream's state and reaching them.
_READ_IDLE_S = 5.0


class DlqToolError(Exception):
    """A failure the operator can act on: one line, and the exit status it stands for."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class DeadLetterStream:
    """An open DLQ stream, its replay marks, and the settings that name them."""

    js: JetStreamContext
    settings: Settings
    info: api.StreamInfo
    _bucket: KeyValue | None = None
    _marks: dict[int, datetime] | None = None  # read once per connection, kept up to date

    @property
    def name(self) -> str:
        """The DLQ stream's name (DLQ_STREAM)."""
        return self.settings.dlq_stream

    @property
    def bucket(self) -> str:
        """The KeyValue bucket that records replays."""
        return f"{self.name}_REPLAYED"

    async def letters(self) -> list[DeadLetter]:
        """Every dead letter, oldest first, headers only, with its replay mark."""
        if self.info.state.messages == 0:
            return []
        marks = await self.marks()
        letters = []
        for msg in await _read_stream(self.js, self.name, ">", headers_only=True):
            seq = msg.metadata.sequence.stream
            headers = {k: v for k, v in (msg.headers or {}).items() if k != "Nats-Msg-Size"}
            stored = msg.metadata.timestamp
            letters.append(DeadLetter(seq, msg.subject, stored, headers, None, marks.get(seq)))
        return letters

    async def letter(self, sequence: int) -> DeadLetter:
        """One dead letter with its payload, or a DlqToolError saying the sequence is not there."""
        try:
            raw = await self.js.get_msg(self.name, sequence)
        except NotFoundError:
            state = self.info.state
            held = (
                f"it holds {state.messages} between {state.first_seq} and {state.last_seq}"
                if state.messages
                else "it is empty"
            )
            msg = f"no dead letter {sequence} in {self.name}: {held} (dlq list shows them)"
            raise DlqToolError(msg) from None
        mark = (await self.marks()).get(sequence)
        stored = raw.time or datetime.now(UTC)
        return DeadLetter(
            sequence, raw.subject or "", stored, dict(raw.headers or {}), raw.data or b"", mark
        )

    async def marks(self) -> dict[int, datetime]:
        """When each replayed dead letter was last replayed, by DLQ sequence."""
        if self._marks is None:
            self._marks = await self._read_marks()
        return self._marks

    async def _read_marks(self) -> dict[int, datetime]:
        try:
            bucket = await self.js.stream_info(f"KV_{self.bucket}")
        except NotFoundError:
            return {}
        if bucket.state.messages == 0:
            return {}
        prefix = f"$KV.{self.bucket}."
        marks = {}
        for msg in await _read_stream(self.js, f"KV_{self.bucket}", prefix + ">", latest=True):
            if {"KV-Operation", "Nats-Marker-Reason"} & set(msg.headers or {}):
                continue  # a deleted mark (its dead letter was purged) or a server marker
            with suppress(ValueError):
                when = datetime.fromisoformat(msg.data.decode())
                if self.info.created is None or when >= self.info.created:
                    marks[int(msg.subject.removeprefix(prefix))] = when
        return marks

    async def open_marks(self) -> KeyValue:
        """The bucket that records replays, created on first use."""
        if self._bucket is None:
            try:
                self._bucket = await self.js.key_value(self.bucket)
            except BucketNotFoundError:
                config = api.KeyValueConfig(
                    bucket=self.bucket,
                    description=f"when each dead letter of {self.name} was replayed",
                    ttl=self.info.config.max_age or None,
                    storage=api.StorageType.FILE,
                )
                self._bucket = await self.js.create_key_value(config)
        return self._bucket

    async def mark_replayed(self, sequence: int, when: datetime) -> None:
        """Record that a dead letter was replayed."""
        await (await self.open_marks()).put(str(sequence), when.isoformat().encode())
        (await self.marks())[sequence] = when


async def _read_stream(
    js: JetStreamContext,
    stream: str,
    subject: str,
    *,
    headers_only: bool = False,
    latest: bool = False,
) -> list[Msg]:
    """Every message of a stream (latest: the last per subject), via an ordered ephemeral consumer.

    It stops at the message whose metadata says nothing is pending. (nats-py's KV watcher asks
    consumer_info instead, which races the deliveries and now and then reports no entries.)
    """
    sub = await js.subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        headers_only=headers_only,
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT if latest else None,
    )
    messages = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=_READ_IDLE_S)
            except NatsTimeoutError:
                break
            messages.append(msg)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return messages


@asynccontextmanager
async def open_dlq(settings: Settings) -> AsyncIterator[DeadLetterStream]:
    """Connect to NATS_URL and find DLQ_STREAM, or fail with one line naming what is missing."""
    url = redact(settings.nats_url)
    servers = [server.strip() for server in settings.nats_url.split(",")]
    # The real cause (a permissions violation, a refused connection) reaches nats-py's error
    # callback, while the call that failed says only "timeout": keep it for the message.
    said: list[str] = []

    async def remember(error: Exception) -> None:  # instead of nats-py's traceback log
        said.append(redact(str(error)))

    def because(error: Exception) -> str:
        text = redact(str(error))
        return f"{text} ({said[-1]})" if said and said[-1] != text else text

    try:
        nc = await nats.connect(
            servers,
            # Authentication and TLS exactly as the service's broker gets them.
            **parse_security(nats_security(settings)),
            connect_timeout=5,
            allow_reconnect=False,
            # nats-py retries a first connect max_reconnect_attempts times (default 60, 2 s
            # apart); a person at a terminal wants to hear within seconds that NATS is away.
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,
            error_cb=remember,
        )
    except (NatsError, OSError, TimeoutError) as error:
        msg = f"cannot connect to NATS at NATS_URL={url}: {because(error)}"
        raise DlqToolError(msg) from None
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(settings.dlq_stream)
        except NotFoundError:
            msg = (
                f"no dead-letter stream {settings.dlq_stream} on {url}: nothing has been "
                "dead-lettered yet, or DLQ_STREAM names another stream"
            )
            raise DlqToolError(msg) from None
        yield DeadLetterStream(js, settings, info)
    except (NatsError, TimeoutError) as error:
        raise DlqToolError(f"NATS at {url} failed: {because(error)}") from None
    finally:
        await nc.close()


def matching(
    letters: Sequence[DeadLetter], *, reason: str | None = None, subject: str | None = None
) -> list[DeadLetter]:
    """The dead letters with this reason and whose original subject contains this text."""
    text = (subject or "").lower()
    return [
        letter
        for letter in letters
        if (reason is None or letter.reason == reason) and text in letter.original_subject.lower()
    ]


@dataclass(frozen=True)
class Listing:
    """Dead letters that match a filter, and how many the stream holds in all."""

    letters: list[DeadLetter]
    total: int


async def list_dead_letters(
    settings: Settings, *, reason: str | None = None, subject: str | None = None
) -> Listing:
    """The dead letters matching reason and subject text, oldest first."""
    async with open_dlq(settings) as dlq:
        letters = await dlq.letters()
        return Listing(matching(letters, reason=reason, subject=subject), len(letters))


async def get_dead_letter(settings: Settings, sequence: int) -> DeadLetter:
    """One dead letter with its payload and replay mark."""
    async with open_dlq(settings) as dlq:
        return await dlq.letter(sequence)
