"""The session-end subscriber: validate a batch, write it, then settle every message."""

import asyncio
import logging
from collections.abc import Sequence
from typing import Annotated, Any

from faststream import AckPolicy
from faststream.message import StreamMessage
from faststream.nats import JStream, NatsMessage, NatsRouter, PullSub
from nats.aio.msg import Msg
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import WithJsonSchema

from service import metrics
from service.broker import PipelinedBatchPull
from service.config import get_settings
from service.db import get_engine
from service.deadletters.letters import (
    DETAIL,
    ORIGINAL_SEQUENCE,
    ORIGINAL_SUBJECT,
    REASON,
    dead_letter_headers,
    dlq_subject,
    stream_position,
)
from service.encryption.at_rest import details_at_rest, get_transit
from service.events import Refusal, Rejected, SessionEndEvent, parse_session_ends
from service.repository import DatabaseUnavailable, SessionRow, insert_session_ends
from service.trail.lifecycle import seals_committed, trail_signer

logger = logging.getLogger(__name__)
settings = get_settings()
router = NatsRouter()


async def _raw_bodies(message: StreamMessage[Any]) -> list[bytes]:
    # Parsing is ours, message by message: one bad body must not fail the batch.
    return [m.data for m in message.raw_message]


dead_letters = router.publisher(
    f"{settings.dlq_subject_prefix}.{{session_id}}",
    stream=JStream(settings.dlq_stream, declare=False),
    title=f"{settings.dlq_subject_prefix}.{{session_id}}",
    description=(
        "A session-end message that could not become an audit row, with its original "
        "bytes unchanged. Headers: Audit-Dlq-Reason (too_large, invalid_json, "
        "not_an_object, invalid_field, subject_mismatch, database_refused), "
        "Audit-Dlq-Detail (which field failed and why), Audit-Original-Subject, "
        "Audit-Original-Stream, Audit-Original-Sequence, Audit-Deliveries, Audit-Failed-At."
    ),
    schema=bytes,
)

session_ends = router.subscriber(
    "audit.session.end.{session_id}",
    # declare=False: the stream is the publisher's; binding must never rewrite its limits.
    stream=JStream(settings.stream, declare=False),
    durable=settings.durable,
    config=ConsumerConfig(
        ack_policy=JsAckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=float(settings.ack_wait_s),
        max_ack_pending=settings.max_ack_pending,
        # Unlimited: JetStream would otherwise stop delivering a message after N tries
        # without a row or a dead letter. The handler decides instead (see settle).
        max_deliver=-1,
    ),
    pull_sub=PullSub(settings.batch_size, timeout=settings.batch_wait_ms / 1000, batch=True),
    ack_policy=AckPolicy.MANUAL,
    decoder=_raw_bodies,
    title="audit.session.end.{session_id}",
    description=(
        "One event per ended SSH session, published by the SSH relay on stream "
        f"{settings.stream}. Each session becomes exactly one audit_logs row; a message "
        "that is not a valid event goes to the dead-letter channel with its reason."
    ),
)


# The handler takes the batch's raw bodies (parsing is per message, see _raw_bodies);
# integration teams need the schema of one message, which is one event.
# The pull loop under the declarative subscriber; see PipelinedBatchPull for why.
session_ends.__class__ = PipelinedBatchPull

SessionEndBatch = Annotated[list[bytes], WithJsonSchema(SessionEndEvent.model_json_schema())]


@session_ends
async def on_session_end(bodies: SessionEndBatch, message: NatsMessage) -> None:
    """Turn a batch of session-end events into audit rows and dead letters."""
    # A batch subscriber's raw message is the fetched list, typed as one message upstream.
    raw: list[Msg] = message.raw_message  # type: ignore[assignment]
    await handle_batch(raw)


async def handle_batch(msgs: Sequence[Msg]) -> None:
    """Validate, encrypt, write in one transaction, dead-letter the rest, then settle each."""
    metrics.batch_size.observe(len(msgs))
    events: list[SessionEndEvent] = []
    event_msgs: list[Msg] = []
    rejected: list[tuple[Msg, Rejected]] = []
    outcomes = parse_session_ends(
        [(msg.subject, msg.data) for msg in msgs], max_bytes=settings.max_payload_bytes
    )
    for msg, outcome in zip(msgs, outcomes, strict=True):
        if isinstance(outcome, Rejected):
            rejected.append((msg, outcome))
        else:
            events.append(outcome)
            event_msgs.append(msg)

    # Encrypted before the write turn, so that Transit works while the batch before is
    # being written.
    with metrics.encrypt_seconds.time():
        at_rest = await details_at_rest(
            get_transit(), events, plaintext_fallback=settings.openbao_plaintext_fallback
        )
    unencrypted = [event_msgs[position] for position in at_rest.failed]
    metrics.retries.labels("encryption_unavailable").inc(len(unencrypted))
    row_msgs = [event_msgs[position] for position in at_rest.positions]
    async with write_turn:
        await _write_and_settle(at_rest.rows, row_msgs, rejected, unencrypted)


# Batches are parsed concurrently (see PipelinedBatchPull) but written one at a time, in
# the order they were fetched: asyncio.Lock wakes its waiters first come, first served.
write_turn = asyncio.Lock()


async def _write_and_settle(
    rows: list[SessionRow],
    row_msgs: list[Msg],
    rejected: list[tuple[Msg, Rejected]],
    retry: list[Msg],
) -> None:
    committed: list[Msg] = []
    try:
        with metrics.commit_seconds.time():
            result = await insert_session_ends(get_engine(), rows=rows, signer=trail_signer())
    except DatabaseUnavailable as error:
        metrics.database_errors.labels(error.kind).inc()
        metrics.retries.labels("database_unavailable").inc(len(row_msgs))
        logger.error(
            "database unavailable, %d events will be retried: %s",
            len(row_msgs),
            error,
            extra={"batch_size": len(rows) + len(rejected) + len(retry), "error": error.kind},
        )
        retry = retry + row_msgs
    else:
        for position, msg in enumerate(row_msgs):
            if position in result.refused:
                detail = result.refused[position]
                rejected.append((msg, Rejected(Refusal.DATABASE_REFUSED, detail)))
            else:
                committed.append(msg)
        if result.seal is not None:
            metrics.seal_seconds.observe(result.seal_seconds)
            seals_committed()
        metrics.rows_inserted.inc(result.inserted)
        metrics.duplicates_skipped.inc(result.duplicates)
        if rows:
            metrics.committed_end_time(max(r.event.end_time for r in rows).timestamp())

    stored = await asyncio.gather(*(dead_letter(msg, why) for msg, why in rejected))
    failed = [msg for (msg, _), ok in zip(rejected, stored, strict=True) if not ok]
    metrics.retries.labels("dead_letter_unavailable").inc(len(failed))
    await settle(
        committed=committed,
        dead_lettered=[msg for (msg, _), ok in zip(rejected, stored, strict=True) if ok],
        retry=retry + failed,
    )


async def settle(*, committed: list[Msg], dead_lettered: list[Msg], retry: list[Msg]) -> None:
    """The one place that acks, terminates or naks: each message ends as a row or a dead letter."""
    for msg in committed:  # its row is committed (or was, by an earlier delivery)
        await msg.ack()
    for msg in dead_lettered:  # its dead letter is stored; it must never come back
        await msg.term()
    for msg in retry:  # nothing durable happened (database, Transit or dead-letter stream
        # unavailable); try again later, slower each time
        await msg.nak(delay=retry_delay(msg))


def retry_delay(msg: Msg) -> float:
    """Seconds before redelivery: 1, 2, 4 … up to 30, by how often it was delivered."""
    position = stream_position(msg)
    deliveries = position[2] if position else 1
    return float(min(30, 2 ** min(deliveries - 1, 5)))


async def dead_letter(msg: Msg, rejected: Rejected) -> bool:
    """Store msg in the dead-letter stream with its reason; False if that failed."""
    headers = dead_letter_headers(msg, rejected)
    try:
        await dead_letters.publish(
            msg.data,
            subject=dlq_subject(settings.dlq_subject_prefix, msg.subject),
            headers=headers,
            stream=settings.dlq_stream,
            timeout=5.0,
        )
    except Exception as error:  # any failure here means: keep the message, retry later
        logger.error(
            "could not dead-letter %s, will retry: %s",
            msg.subject,
            error,
            extra=_context(headers) | {"error": type(error).__name__},
        )
        return False
    metrics.dead_letters.labels(rejected.reason.value).inc()
    logger.warning("dead-lettered %s: %s", msg.subject, headers[DETAIL], extra=_context(headers))
    return True


def _context(headers: dict[str, str]) -> dict[str, str | None]:
    return {
        "subject": headers[ORIGINAL_SUBJECT],
        "stream_sequence": headers.get(ORIGINAL_SEQUENCE),
        "session_id": headers[ORIGINAL_SUBJECT].rsplit(".", 1)[-1][:64],
        "reason": headers[REASON],
    }
