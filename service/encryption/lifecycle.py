"""Transit over the process's life: the token checked at start, kept alive, the pool closed."""

import asyncio
import contextlib
import logging

from service.config import ConfigurationError, Settings
from service.encryption.at_rest import get_transit
from service.encryption.errors import EncryptionUnavailable

logger = logging.getLogger(__name__)
# Failures that an operator fixes in OpenBao while the service waits; anything else is a
# wrong token or policy, fixed in the service's configuration.
_WAIT_FOR = {"unreachable", "timeout", "sealed"}
_renewal: asyncio.Task[None] | None = None


async def start_encryption(settings: Settings) -> None:
    """Check the token once, say how details are stored, and keep a periodic token alive."""
    global _renewal
    transit = get_transit()
    if transit is None:
        logger.warning(
            "session details are stored in plaintext: OPENBAO_ADDR is not set "
            "(the platform encrypts them with OpenBao Transit)"
        )
        return
    ttl: float | None
    try:
        ttl = await transit.check_token()
    except EncryptionUnavailable as error:
        if error.kind not in _WAIT_FOR:
            setting = "OPENBAO_TOKEN_FILE" if settings.openbao_token_file else "OPENBAO_TOKEN"
            raise ConfigurationError(f"configuration error: {setting}: {error}") from None
        logger.warning("OpenBao is not available yet; events wait for it: %s", error)
        ttl = None
    logger.info(
        "session details encrypted at rest with OpenBao Transit at %s (mount %s)%s",
        settings.openbao_addr,
        settings.openbao_transit_mount,
        ", plaintext if it fails (OPENBAO_PLAINTEXT_FALLBACK)"
        if settings.openbao_plaintext_fallback
        else "",
    )
    if (ttl is None or ttl > 0) and _renewal is None:
        _renewal = asyncio.create_task(_keep_token_alive(ttl), name="openbao-token-renewal")


async def _keep_token_alive(ttl: float | None) -> None:
    transit = get_transit()
    assert transit is not None
    while ttl is None:  # OpenBao was down at start: learn the token's time to live later
        await asyncio.sleep(30)
        with contextlib.suppress(EncryptionUnavailable):
            ttl = await transit.check_token()
    if ttl == 0:  # a token that never expires
        return
    while True:
        # Half the time to live: one failed renewal still leaves the other half to retry in.
        await asyncio.sleep(max(ttl / 2, 5.0))
        try:
            ttl = await transit.renew_token()
        except EncryptionUnavailable as error:
            logger.error("could not renew the OpenBao token, retrying in a minute: %s", error)
            ttl = 120.0


async def stop_encryption() -> None:
    """Stop renewing and close the connection pool."""
    global _renewal
    if _renewal is not None:
        _renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await _renewal
        _renewal = None
    transit = get_transit()
    if transit is not None:
        await transit.aclose()
