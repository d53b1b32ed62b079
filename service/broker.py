"""The NATS broker, patient at start-up: it waits for NATS and the publisher's stream."""

import asyncio
import logging
from typing import Any

from faststream.nats import NatsBroker
from nats.errors import Error as NatsError
from nats.errors import NoServersError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from typing_extensions import override

from service.config import Settings, redact
from service.dlq import ensure_dlq_stream

logger = logging.getLogger(__name__)

_MAX_RETRY_DELAY_S = 30.0


class SessionAuditBroker(NatsBroker):
    """A NatsBroker that never gives up on start-up while NATS or the stream are missing."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.stream_ready = asyncio.Event()

    @override
    async def start(self) -> None:
        await _retrying("connect to NATS at " + redact(self.settings.nats_url), self.connect)
        js = self.config.connection_state.stream
        await _retrying(f"find stream {self.settings.stream}", lambda: _stream_exists(js, self))
        await ensure_dlq_stream(
            js,
            name=self.settings.dlq_stream,
            subject_prefix=self.settings.dlq_subject_prefix,
            max_age_days=self.settings.dlq_max_age_days,
        )
        await _warn_on_consumer_drift(js, self.settings)
        await super().start()


async def _stream_exists(js: JetStreamContext, broker: SessionAuditBroker) -> None:
    await js.stream_info(broker.settings.stream)
    broker.stream_ready.set()


async def _retrying(what: str, attempt: Any) -> None:
    """Run attempt until it succeeds, backing off up to 30 s and saying why it waits."""
    delay = 0.5
    tries = 0
    while True:
        try:
            await attempt()
        except (NotFoundError, NoServersError, NatsError, OSError) as error:
            tries += 1
            level = logging.WARNING if tries == 1 or tries % 10 == 0 else logging.DEBUG
            logger.log(level, "cannot %s yet (%s); retrying in %.1f s", what, error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_DELAY_S)
        else:
            if tries:
                logger.info("%s: done after %d retries", what, tries)
            return


async def _warn_on_consumer_drift(js: JetStreamContext, settings: Settings) -> None:
    # JetStream binds to an existing durable as it is; settings changed since it was
    # created do not apply until an operator updates or recreates it (see the README).
    try:
        info = await js.consumer_info(settings.stream, settings.durable)
    except NotFoundError:
        return
    wanted = {"ack_wait": float(settings.ack_wait_s), "max_ack_pending": settings.max_ack_pending}
    actual = {"ack_wait": info.config.ack_wait, "max_ack_pending": info.config.max_ack_pending}
    drift = {k: (actual[k], v) for k, v in wanted.items() if actual[k] != v}
    if drift:
        logger.warning(
            "durable %s keeps its existing config, which differs from the settings: %s",
            settings.durable,
            ", ".join(f"{k} is {a}, settings say {w}" for k, (a, w) in drift.items()),
        )
