"""Each row's details as stored: encrypted with its tenant's data key, as the platform does."""

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from uuid import UUID

from service import metrics
from service.config import get_settings
from service.encryption.errors import EncryptionUnavailable
from service.encryption.transit import TransitClient
from service.events import SessionEndEvent
from service.repository import SessionRow, encrypted_row, plaintext_row

logger = logging.getLogger(__name__)


@dataclass
class AtRest:
    """A batch's rows ready to write, and the events whose tenant could not be encrypted."""

    rows: list[SessionRow] = field(default_factory=list)
    # For each row, the position of its event in the batch.
    positions: list[int] = field(default_factory=list)
    failed: dict[int, EncryptionUnavailable] = field(default_factory=dict)


@lru_cache(maxsize=1)
def get_transit() -> TransitClient | None:
    """The process's Transit client, or None while OPENBAO_ADDR is unset (encryption off)."""
    return TransitClient.from_settings(get_settings())


async def details_at_rest(
    transit: TransitClient | None,
    events: Sequence[SessionEndEvent],
    *,
    plaintext_fallback: bool = False,
) -> AtRest:
    """Rows for events: details encrypted per tenant (one request per tenant, concurrently)."""
    if transit is None:
        return AtRest([plaintext_row(e) for e in events], list(range(len(events))))
    by_tenant: dict[UUID, list[int]] = {}
    for position, event in enumerate(events):
        by_tenant.setdefault(event.tenant_id, []).append(position)
    # The platform's own serialisation (json.dumps with its default separators), so that
    # its audit API decrypts exactly what its audit service would have encrypted.
    plaintexts = [json.dumps(e.details()).encode() for e in events]
    outcomes = await asyncio.gather(
        *(
            transit.encrypt_details([(tenant, plaintexts[p]) for p in positions])
            for tenant, positions in by_tenant.items()
        ),
        return_exceptions=True,
    )
    ready = AtRest()
    for positions, outcome in zip(by_tenant.values(), outcomes, strict=True):
        if isinstance(outcome, EncryptionUnavailable):
            _count_failure(outcome, len(positions), plaintext_fallback)
            if plaintext_fallback:  # the platform's behaviour, chosen explicitly
                ready.rows += [plaintext_row(events[p]) for p in positions]
                ready.positions += positions
            else:
                ready.failed.update(dict.fromkeys(positions, outcome))
            continue
        if isinstance(outcome, BaseException):
            raise outcome
        for position, ciphertext in zip(positions, outcome, strict=True):
            ready.rows.append(encrypted_row(events[position], ciphertext))
            ready.positions.append(position)
    return ready


def _count_failure(error: EncryptionUnavailable, events: int, fallback: bool) -> None:
    metrics.encryption_errors.labels(error.kind).inc()
    if fallback:
        metrics.plaintext_fallbacks.inc(events)
        logger.warning(
            "Transit failed, %d events stored with plaintext details "
            "(OPENBAO_PLAINTEXT_FALLBACK): %s",
            events,
            error,
            extra={"error": error.kind},
        )
    else:
        logger.error(
            "Transit failed, %d events will be retried: %s",
            events,
            error,
            extra={"error": error.kind},
        )
