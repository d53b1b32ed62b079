"""The NATS transport: a broker patient at start-up, and the pull loop under the subscriber."""

import asyncio
import contextlib
import logging
import os
import ssl
from collections import deque
from typing import Any

from faststream.nats import NatsBroker
from faststream.nats.security import (
    NatsCredentials,
    NatsNKey,
    NatsSecurity,
    NatsToken,
    NatsUserPassword,
)
from faststream.nats.subscriber.usecases.stream_pull_subscriber import BatchPullStreamSubscriber
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoServersError
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from typing_extensions import override

from service.config import Settings, redact
from service.deadletters.letters import ensure_dlq_stream
from service.pull import ConsumerGone, LeanPull

logger = logging.getLogger(__name__)

_MAX_RETRY_DELAY_S = 30.0
PIPELINE_DEPTH = 2
_DEFAULT_WAIT_S = 5.0  # the wait of a pull request when the subscriber declares none


def nats_security(settings: Settings) -> NatsSecurity | None:
    """Authentication and TLS for the NATS connection, as the settings ask."""
    tls: ssl.SSLContext | None = None
    if settings.nats_tls_ca_file is not None:
        tls = ssl.create_default_context(cafile=str(settings.nats_tls_ca_file))
        if settings.nats_tls_cert_file is not None and settings.nats_tls_key_file is not None:
            tls.load_cert_chain(str(settings.nats_tls_cert_file), str(settings.nats_tls_key_file))
    transport: dict[str, Any] = {"ssl_context": tls, "use_ssl": tls is not None}
    if settings.nats_user is not None and settings.nats_password is not None:
        password = settings.nats_password.get_secret_value()
        return NatsUserPassword(settings.nats_user, password, **transport)
    if settings.nats_token is not None:
        return NatsToken(settings.nats_token.get_secret_value(), **transport)
    if settings.nats_nkey_seed_file is not None:
        return NatsNKey(settings.nats_nkey_seed_file, **transport)
    if settings.nats_creds_file is not None:
        return NatsCredentials.from_file(settings.nats_creds_file, **transport)
    return NatsSecurity(**transport) if tls is not None else None


class _NatsTrouble:
    """nats-py's error callback: one line per kind of trouble, again at most every 30 s.

    With unlimited reconnects nats-py retries inside connect() and never raises, so a
    refused TLS handshake or a server that is down would otherwise go unlogged.
    """

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    async def __call__(self, error: Exception) -> None:
        text = redact(str(error) or type(error).__name__)
        now = asyncio.get_running_loop().time()
        if now - self._last.get(text, -_MAX_RETRY_DELAY_S) >= _MAX_RETRY_DELAY_S:
            self._last[text] = now
            logger.warning("NATS connection trouble: %s", text)


class SessionAuditBroker(NatsBroker):
    """A NatsBroker that never gives up on start-up while NATS or the stream are missing."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(error_cb=_NatsTrouble(), **kwargs)
        self.settings = settings
        self.stream_ready = asyncio.Event()

    @override
    async def start(self) -> None:
        loop = type(asyncio.get_running_loop())
        logger.info("event loop: %s.%s", loop.__module__, loop.__qualname__)
        await _retrying("connect to NATS at " + redact(self.settings.nats_url), self.connect)
        js = self.config.connection_state.stream
        await _retrying(f"find stream {self.settings.stream}", lambda: _stream_exists(js, self))
        dlq = self.settings.dlq_stream
        try:
            await _retrying(
                f"prepare dead-letter stream {dlq}",
                lambda: ensure_dlq_stream(
                    js,
                    name=dlq,
                    subject_prefix=self.settings.dlq_subject_prefix,
                    max_age_days=self.settings.dlq_max_age_days,
                ),
            )
        except BadRequestError as error:
            # Retrying cannot help (e.g. another stream already holds its subjects), and a
            # process that never binds but answers /healthz would look alive for ever.
            # Nothing has been fetched yet, so nothing is in flight.
            logger.critical(
                "cannot create the dead-letter stream DLQ_STREAM=%s: %s", dlq, error.description
            )
            logging.shutdown()
            os._exit(2)
        await _retrying("check the durable", lambda: _warn_on_consumer_drift(js, self.settings))
        await _retrying(f"bind durable {self.settings.durable}", super().start)


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
        except BadRequestError:
            raise
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


class PipelinedBatchPull(BatchPullStreamSubscriber):
    """The declarative batch subscriber's pull loop, adaptive, pipelined and safe on timeouts.

    FastStream 0.7's own loop keeps fetching until the batch is full or the wait is over,
    and catches only nats.errors.TimeoutError; nats-py also raises a bare
    asyncio.TimeoutError when a wait ends between its requests, which kills the loop and
    strands the messages already fetched in that window until ACK_WAIT_S runs out. Here
    one fetch takes what is there now (a full batch under load, waiting up to
    BATCH_WAIT_MS only when nothing is), and the next fetch runs while the previous batch
    is written: up to PIPELINE_DEPTH batches are in the handler at once, one being parsed
    while the one before is written. The handler writes them one at a time, in the order
    they were fetched (handlers.write_turn), so the first end event of a session is the
    one that is kept. The fetches are LeanPull's (service.pull), not nats-py's, which
    spends a task per message; a durable deleted under the loop is bound again, created
    as declared.
    """

    __slots__ = ()
    _draining: bool  # set when stopping; the FastStream base classes carry a __dict__

    async def _consume_pull(self) -> None:
        assert self.subscription is not None, "subscription is created before the loop starts"
        # nats-py's own name for the durable's next-message subject (API prefix included).
        pull = LeanPull(self.connection, self.subscription._nms)
        await pull.open()
        in_flight: deque[asyncio.Task[Any]] = deque()
        size = self.pull_sub.batch_size
        wait = self.pull_sub.timeout or _DEFAULT_WAIT_S
        try:
            while self.running and not self._draining:
                messages = await self._fetch(pull, size, wait)
                # While the pipeline is full, keep gathering: the busier the database,
                # the larger (and the cheaper per event) the next batch.
                while len(in_flight) == PIPELINE_DEPTH and not in_flight[0].done():
                    if len(messages) >= size:
                        await in_flight[0]
                        break
                    more = await self._fetch(pull, size - len(messages), 0.005)
                    if not more:
                        await in_flight[0]
                        break
                    messages += more
                while in_flight and (in_flight[0].done() or len(in_flight) == PIPELINE_DEPTH):
                    await in_flight.popleft()
                if messages and self.running and not self._draining:
                    in_flight.append(asyncio.create_task(self.consume(messages)))
                elif messages:
                    # Stopping: hand them back now rather than after ACK_WAIT_S.
                    await asyncio.gather(*(m.nak() for m in messages), return_exceptions=True)
        finally:
            try:
                for task in in_flight:
                    await task
            finally:
                # Deliveries that came after the last fetch go back with a nak.
                await pull.close()

    async def start(self) -> None:
        """Start fetching (again, after a stop)."""
        self._draining = False
        await super().start()

    async def stop(self) -> None:
        """Drain, then stop: no fetch is left open and every batch taken is settled."""
        # FastStream's stop() would unsubscribe while a fetch is still open, and JetStream
        # would then deliver that batch to an inbox nobody reads, to wait ACK_WAIT_S.
        # Instead the loop is told to finish: its open fetch ends (within BATCH_WAIT_MS),
        # what that fetch brought is nak'ed, and batches already taken are written and
        # settled while `running` still lets them through.
        self._draining = True
        loops = [task for task in self.tasks if not task.done()]
        if loops:
            await asyncio.wait(loops, timeout=self._outer_config.graceful_timeout)
        await super().stop()

    async def _fetch(self, pull: LeanPull, batch: int, wait: float) -> list[Msg]:
        try:
            return await pull.fetch(batch, wait)
        except ConsumerGone as gone:
            if self.running and not self._draining:
                await self._bind_again(str(gone))
        return []

    async def _bind_again(self, why: str) -> None:
        """Bind the durable again after JetStream said it is gone, creating it as declared."""
        durable = self.extra_options.get("durable")
        logger.warning("durable %s is gone (%s); binding it again", durable, why)
        try:
            # As at start-up: the durable as it is if it exists, else created as declared.
            subscription = await self.jetstream.pull_subscribe(
                subject=self.subject.broker_address, config=self.config, **self.extra_options
            )
        except (NatsError, OSError) as error:  # OSError: TimeoutError too
            logger.warning("cannot bind durable %s yet (%s); will try again", durable, error)
            return
        previous, self.subscription = self.subscription, subscription
        if previous is not None:
            with contextlib.suppress(NatsError):
                await previous.unsubscribe()
        logger.info("durable %s bound again", durable)
