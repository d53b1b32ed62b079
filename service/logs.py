"""Logging set-up: plain lines for people, or one JSON object per line for collectors."""

import json
import logging
from datetime import UTC, datetime
from typing import Any

from service.config import redact

# Fields a log call may attach with extra={...}; they become JSON keys as they are.
FIELDS = ("subject", "stream_sequence", "session_id", "reason", "batch_size", "error")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the same keys every time they apply."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as JSON, passwords in URLs hidden."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class RedactingFormatter(logging.Formatter):
    """The plain format, passwords in URLs hidden."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as text, passwords in URLs hidden."""
        return redact(super().format(record))


def _not_task_bookkeeping(record: logging.LogRecord) -> bool:
    # FastStream's subscriber supervisor says "callback for Task-N is being executed..."
    # at INFO whenever a consumer task ends, e.g. at every shutdown: noise to an operator.
    return not record.getMessage().endswith("is being executed...")


def configure(level: str, fmt: str) -> None:
    """Send every logger, FastStream's and uvicorn's included, through one root handler."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    handler.addFilter(_not_task_bookkeeping)
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "faststream"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # httpx logs every OpenBao request at INFO: one line per tenant per batch. Failures
    # are logged by the service itself, with what they mean.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
