"""Prometheus metrics: FastStream's own, with bounded labels, and the audit writer's."""

import time
from collections.abc import Sequence
from typing import Any

from faststream.message import StreamMessage
from faststream.nats.response import NatsPublishCommand
from faststream.prometheus import ConsumeAttrs
from faststream.prometheus.middleware import PrometheusMiddleware
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

registry = CollectorRegistry()
PREFIX = "session_audit"

rows_inserted = Counter(f"{PREFIX}_rows_inserted", "Audit rows written.", registry=registry)
duplicates_skipped = Counter(
    f"{PREFIX}_duplicates_skipped",
    "Valid events whose session already had a row (redelivery, repeated end event).",
    registry=registry,
)
dead_letters = Counter(
    f"{PREFIX}_dead_letters",
    "Messages stored in the dead-letter stream, by reason.",
    ["reason"],
    registry=registry,
)
retries = Counter(
    f"{PREFIX}_retries",
    "Messages nak'ed for a later retry, by cause.",
    ["cause"],
    registry=registry,
)
database_errors = Counter(
    f"{PREFIX}_database_errors",
    "Failed batch writes, by kind (SQLSTATE class, or the exception type).",
    ["kind"],
    registry=registry,
)
encryption_errors = Counter(
    f"{PREFIX}_encryption_errors",
    "Failed Transit encryptions of a tenant's part of a batch, by kind.",
    ["kind"],
    registry=registry,
)
plaintext_fallbacks = Counter(
    f"{PREFIX}_plaintext_fallbacks",
    "Events stored with plaintext details because Transit failed (OPENBAO_PLAINTEXT_FALLBACK).",
    registry=registry,
)
encrypt_seconds = Histogram(
    f"{PREFIX}_encrypt_seconds",
    "Time to encrypt one batch's details with Transit (every tenant's request).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=registry,
)
seal_seconds = Histogram(
    f"{PREFIX}_seal_seconds",
    "Time to seal one committed batch (row hashes, the append lock, the seal's INSERT).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
    registry=registry,
)
batch_size = Histogram(
    f"{PREFIX}_batch_size",
    "Messages per handled batch.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
    registry=registry,
)
commit_seconds = Histogram(
    f"{PREFIX}_commit_seconds",
    "Time to write and commit one batch.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=registry,
)
consumer_pending = Gauge(
    f"{PREFIX}_consumer_pending",
    "Events in the stream not yet delivered to the durable (lag), read at scrape time.",
    registry=registry,
)
consumer_ack_pending = Gauge(
    f"{PREFIX}_consumer_ack_pending",
    "Events delivered to the durable and not yet acknowledged, read at scrape time.",
    registry=registry,
)
newest_event_age = Gauge(
    f"{PREFIX}_newest_committed_event_age_seconds",
    "Seconds since end_time of the newest event committed by this process.",
    registry=registry,
)
_newest_end_time = 0.0


def committed_end_time(timestamp: float) -> None:
    """Remember the newest end_time committed, for the age gauge."""
    global _newest_end_time
    _newest_end_time = max(_newest_end_time, timestamp)


def render(pending: int | None, ack_pending: int | None) -> bytes:
    """The metrics in Prometheus text format, with the scrape-time gauges set."""
    if pending is not None and ack_pending is not None:
        consumer_pending.set(pending)
        consumer_ack_pending.set(ack_pending)
    if _newest_end_time:
        newest_event_age.set(time.time() - _newest_end_time)
    return generate_latest(registry)


def _subject_pattern(subject: str) -> str:
    # The last token is a session id: as a label value it would make one series per session.
    return subject.rsplit(".", 1)[0] + ".*" if subject.count(".") >= 3 else subject


class _BoundedLabels:
    """FastStream's NATS metrics, labelled by subject pattern rather than by subject."""

    def get_consume_attrs_from_message(self, msg: StreamMessage[Any]) -> ConsumeAttrs:
        raw = msg.raw_message
        batch: Sequence[Msg] = raw if isinstance(raw, Sequence) else [raw]
        return {
            "destination_name": _subject_pattern(batch[0].subject),
            "message_size": sum(len(m.data) for m in batch),
            "messages_count": len(batch),
        }

    def get_publish_destination_name_from_cmd(self, cmd: NatsPublishCommand) -> str:
        return _subject_pattern(cmd.destination)

    messaging_system = "nats"


def faststream_middleware() -> PrometheusMiddleware[Any, Any]:
    """FastStream's Prometheus middleware on this registry, with bounded labels."""
    return PrometheusMiddleware(
        settings_provider_factory=lambda _msg: _BoundedLabels(),
        registry=registry,
        app_name="session-audit",
        metrics_prefix="faststream",
    )
