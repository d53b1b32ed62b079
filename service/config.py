"""Service settings: the only place that reads the environment."""

import re
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_NAME_PATTERN = r"^[A-Za-z0-9_-]+$"


class Settings(BaseSettings):
    """Everything the service can be told, each from one environment variable."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    nats_url: str = Field(
        "nats://127.0.0.1:4222",
        description="NATS server URL(s), comma-separated for a cluster.",
    )
    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
        description="SQLAlchemy URL of the PostgreSQL database (asyncpg driver).",
    )
    stream: Annotated[str, Field(pattern=_NAME_PATTERN)] = Field(
        "DEVICE_EVENTS",
        description="JetStream stream the publisher writes to; bound, never created.",
    )
    durable: Annotated[str, Field(pattern=_NAME_PATTERN)] = Field(
        "session-audit-writer", description="Durable pull consumer name."
    )
    dlq_stream: Annotated[str, Field(pattern=_NAME_PATTERN)] = Field(
        "AUDIT_DLQ", description="JetStream stream for dead letters; created if absent."
    )
    dlq_max_age_days: int = Field(
        30, ge=1, le=3650, description="How long dead letters are kept, in days."
    )
    batch_size: int = Field(500, ge=1, le=10_000, description="Most events per fetch.")
    batch_wait_ms: int = Field(
        20,
        ge=1,
        le=60_000,
        description="Longest wait for a batch to fill before handling what has arrived.",
    )
    ack_wait_s: int = Field(
        60,
        ge=5,
        le=3600,
        description="Seconds JetStream waits for an ack before redelivering (new consumers).",
    )
    max_ack_pending: int = Field(
        5_000,
        ge=1,
        le=1_000_000,
        description="Most unacknowledged events in flight on the consumer (new consumers).",
    )
    max_payload_bytes: int = Field(
        16_384, ge=512, le=1_048_576, description="Events larger than this are dead-lettered."
    )
    http_host: str = Field("127.0.0.1", description="Address the HTTP endpoints listen on.")
    http_port: int = Field(8000, ge=1, le=65_535, description="Port of the HTTP endpoints.")
    log_level: str = Field("INFO", description="Logging level of the service.")
    log_format: Literal["text", "json"] = Field(
        "text", description="text: plain lines; json: one JSON object per line."
    )
    graceful_timeout_s: float = Field(
        15.0, gt=0, le=600, description="Longest wait for in-flight batches on shutdown."
    )

    @field_validator("database_url")
    @classmethod
    def _asyncpg_url(cls, value: str) -> str:
        if not value.startswith("postgresql+asyncpg://"):
            msg = "must start with postgresql+asyncpg://"
            raise ValueError(msg)
        return value

    @field_validator("nats_url")
    @classmethod
    def _nats_scheme(cls, value: str) -> str:
        for server in value.split(","):
            if not server.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
                msg = "each server must start with nats://, tls://, ws:// or wss://"
                raise ValueError(msg)
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            msg = "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
            raise ValueError(msg)
        return level

    @property
    def subject(self) -> str:
        """Subject pattern of the session-end events, one token per session."""
        return "audit.session.end.*"

    @property
    def dlq_subject_prefix(self) -> str:
        """Prefix of dead-letter subjects; the original session token follows."""
        return "audit.dlq.session.end"


class ConfigurationError(SystemExit):
    """A bad setting: stops start-up with one line that names the variable."""


_URL_PASSWORD = re.compile(r"(?<=://)([^:/@]*):[^@/]*@")


def redact(text: str) -> str:
    """Hide the password of every URL in text, so that no log line carries one."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


def without_credentials(url: str) -> str:
    """The URL without its user:password@ part."""
    return re.sub(r"(?<=://)[^/@]*@", "", url)


def describe(error: ValidationError) -> str:
    """One line naming each bad variable as it is set in the environment."""
    problems = []
    for item in error.errors():
        name = str(item["loc"][0]).upper() if item["loc"] else "settings"
        problems.append(f"{name}: {item['msg']} (got {redact(repr(item['input']))})")
    return "configuration error: " + "; ".join(problems)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Load and validate settings once, or stop with a line that names the bad variable."""
    try:
        return Settings()
    except ValidationError as error:
        raise ConfigurationError(describe(error)) from None
