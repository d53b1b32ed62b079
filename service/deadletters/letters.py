"""Dead letters: where a message that cannot become a row goes, with its reason."""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from service.events import Rejected

logger = logging.getLogger(__name__)

# Header names of a dead letter; the original bytes are its payload, unchanged.
REASON = "Audit-Dlq-Reason"
DETAIL = "Audit-Dlq-Detail"
ORIGINAL_SUBJECT = "Audit-Original-Subject"
ORIGINAL_STREAM = "Audit-Original-Stream"
ORIGINAL_SEQUENCE = "Audit-Original-Sequence"
DELIVERIES = "Audit-Deliveries"
FAILED_AT = "Audit-Failed-At"
# JetStream drops a second publish with the same id inside the duplicate window, so a
# dead letter whose term was lost and that fails again is not stored twice.
MSG_ID = "Nats-Msg-Id"
DUPLICATE_WINDOW_S = 3600


@dataclass(frozen=True)
class DeadLetter:
    """A stored dead letter as read back: its place in the DLQ stream, headers and bytes."""

    sequence: int
    subject: str
    stored_at: datetime
    headers: Mapping[str, str]
    # None when read headers-only (listing a large DLQ without holding every payload).
    payload: bytes | None = None
    # When `python -m service dlq replay` last republished it (see service/deadletters/store.py).
    replayed_at: datetime | None = None

    @property
    def reason(self) -> str:
        """Why it was dead-lettered, e.g. invalid_field."""
        return self.headers.get(REASON, "")

    @property
    def detail(self) -> str:
        """Which field failed and why."""
        return self.headers.get(DETAIL, "")

    @property
    def original_subject(self) -> str:
        """The subject the original message was published on."""
        return self.headers.get(ORIGINAL_SUBJECT, "")

    @property
    def original_position(self) -> str:
        """stream:sequence of the original message, or "" when it was no JetStream message."""
        stream, sequence = self.headers.get(ORIGINAL_STREAM), self.headers.get(ORIGINAL_SEQUENCE)
        return f"{stream}:{sequence}" if stream and sequence else ""


def stream_position(msg: Msg) -> tuple[str, int, int] | None:
    """(stream, stream sequence, deliveries) of a JetStream message, or None for others."""
    try:
        meta = msg.metadata
    except NatsError:
        return None
    return meta.stream, meta.sequence.stream, meta.num_delivered


def dlq_subject(prefix: str, original_subject: str) -> str:
    """The dead-letter subject for an original subject: same session token, DLQ prefix."""
    return f"{prefix}.{original_subject.rsplit('.', 1)[-1]}"


def dead_letter_headers(msg: Msg, rejected: Rejected) -> dict[str, str]:
    """Headers that say why, and where the original message sits in its stream."""
    headers = {
        REASON: rejected.reason.value,
        # Header values are one line of text; the detail may quote hostile input.
        DETAIL: rejected.detail.encode("ascii", "backslashreplace")
        .decode()[:1024]
        .replace("\r", " ")
        .replace("\n", " "),
        ORIGINAL_SUBJECT: msg.subject,
        FAILED_AT: datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    position = stream_position(msg)
    if position is not None:
        stream, sequence, deliveries = position
        headers |= {
            ORIGINAL_STREAM: stream,
            ORIGINAL_SEQUENCE: str(sequence),
            DELIVERIES: str(deliveries),
            MSG_ID: f"dlq:{stream}:{sequence}",
        }
    return headers


async def ensure_dlq_stream(
    js: JetStreamContext, *, name: str, subject_prefix: str, max_age_days: int
) -> None:
    """Create the dead-letter stream if it is absent; an existing one is left as it is."""
    try:
        await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(
            api.StreamConfig(
                name=name,
                subjects=[f"{subject_prefix}.>"],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                max_age=max_age_days * 86_400,
                duplicate_window=DUPLICATE_WINDOW_S,
                discard=api.DiscardPolicy.OLD,
            )
        )
        logger.info("created dead-letter stream %s for %s.>", name, subject_prefix)
