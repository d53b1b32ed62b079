"""The trail over the process's life: the signing key loaded at start, anchoring around it."""

import logging
from collections.abc import Callable

from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import ConfigurationError, Settings
from service.trail.anchor import Anchoring, start_anchoring, stop_anchoring
from service.trail.keys import Signer, TrailKeyError, configured_signer

logger = logging.getLogger(__name__)
_signer: Signer | None = None
_anchoring: Anchoring | None = None


def load_trail_key(settings: Settings) -> None:
    """Load the signing key, or stop start-up with one line naming the setting."""
    global _signer
    try:
        _signer = configured_signer(settings)
    except TrailKeyError as error:
        raise ConfigurationError(f"configuration error: TRAIL_SIGNING_KEY_FILE: {error}") from None
    if _signer is None:
        logger.warning(
            "audit trail seals are NOT signed: TRAIL_SIGNING_KEY_FILE is not set and "
            "TRAIL_ALLOW_UNSIGNED=true"
        )
    else:
        logger.info("audit trail seals signed with key %s", _signer.key_id)


def trail_signer() -> Signer | None:
    """The key that signs this process's seals (None: unsigned, as the settings allow)."""
    return _signer


def start_trail_anchoring(
    js: Callable[[], JetStreamContext | None], engine: AsyncEngine, settings: Settings
) -> None:
    """Anchor committed seals to TRAIL_ANCHOR_STREAM in the background, catching up first."""
    global _anchoring
    if _anchoring is None:
        _anchoring = start_anchoring(js, engine, settings)


def seals_committed() -> None:
    """Wake the anchoring: a batch committed a seal. Never blocks, never fails the batch."""
    if _anchoring is not None:
        _anchoring.notify()


async def stop_trail_anchoring() -> None:
    """Stop anchoring; seals not yet anchored are anchored at the next start."""
    global _anchoring
    if _anchoring is not None:
        await stop_anchoring(_anchoring)
        _anchoring = None
