"""Service settings: the only place that reads the environment."""

import re
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, FilePath, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
# A mount may be nested (team/transit); no dots, so it cannot climb out of /v1/.
_MOUNT_PATTERN = r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"


class Settings(BaseSettings):
    """Everything the service can be told, each from one environment variable."""

    # An empty variable counts as unset, so .env.example can list every one of them.
    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", frozen=True
    )

    nats_url: str = Field(
        "nats://127.0.0.1:4222",
        description="NATS server URL(s), comma-separated for a cluster.",
    )
    nats_user: str | None = Field(None, description="NATS user, with NATS_PASSWORD.")
    nats_password: SecretStr | None = Field(None, description="NATS password of NATS_USER.")
    nats_token: SecretStr | None = Field(None, description="NATS authentication token.")
    nats_nkey_seed_file: FilePath | None = Field(
        None, description="File holding the NKey seed (SU…) to authenticate with."
    )
    nats_creds_file: FilePath | None = Field(
        None, description="NATS credentials file (user JWT and NKey seed, from nsc)."
    )
    nats_tls_ca_file: FilePath | None = Field(
        None, description="CA bundle that verifies the NATS server; turns TLS on."
    )
    nats_tls_cert_file: FilePath | None = Field(
        None, description="Client certificate for NATS mutual TLS (with NATS_TLS_KEY_FILE)."
    )
    nats_tls_key_file: FilePath | None = Field(
        None, description="Private key of NATS_TLS_CERT_FILE."
    )
    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
        description="SQLAlchemy URL of the PostgreSQL database (asyncpg driver).",
    )
    database_sslmode: Literal["disable", "require", "verify-ca", "verify-full"] = Field(
        "disable",
        description="TLS to PostgreSQL: disable, require, verify-ca or verify-full.",
    )
    database_ssl_root_cert: FilePath | None = Field(
        None, description="CA bundle that verifies PostgreSQL (verify-ca, verify-full)."
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
        250,
        # A pull request expiring sooner may never see the first message of a new
        # durable over a large backlog (seen at 20 ms over 100k events).
        ge=100,
        le=60_000,
        description=(
            "Longest a fetch waits while no event is waiting; an event that arrives ends "
            "the wait at once, so this adds no latency."
        ),
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
    openbao_addr: str | None = Field(
        None,
        description=(
            "OpenBao URL (http:// or https://); set, details are encrypted with Transit as "
            "the platform does; unset, encryption is off."
        ),
    )
    openbao_token_file: FilePath | None = Field(
        None, description="File holding the OpenBao token (preferred over OPENBAO_TOKEN)."
    )
    openbao_token: SecretStr | None = Field(
        None, description="OpenBao token, when it cannot be given as OPENBAO_TOKEN_FILE."
    )
    openbao_transit_mount: Annotated[str, Field(pattern=_MOUNT_PATTERN)] = Field(
        "transit", description="Mount path of the Transit engine holding the tenant data keys."
    )
    openbao_ca_file: FilePath | None = Field(
        None, description="CA bundle that verifies an https:// OPENBAO_ADDR."
    )
    openbao_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Longest wait for one OpenBao request, in seconds."
    )
    openbao_plaintext_fallback: bool = Field(
        False,
        description=(
            "true: when Transit fails, store the details in plaintext, as the platform does; "
            "false: never store plaintext details while OPENBAO_ADDR is set."
        ),
    )
    trail_signing_key_file: FilePath | None = Field(
        None,
        description=(
            "File holding the nkeys seed (SN…) that signs each seal of the audit trail; "
            "`trail keygen FILE` makes one."
        ),
    )
    trail_allow_unsigned: bool = Field(
        False,
        description=(
            "true: write seals unsigned when TRAIL_SIGNING_KEY_FILE is unset, and let "
            "`trail verify` accept unsigned seals; false: refuse both."
        ),
    )
    trail_trusted_keys: str = Field(
        "",
        description=(
            "Comma-separated nkeys public keys (N…) whose seal signatures `trail verify` "
            "accepts; list old keys too after a rotation."
        ),
    )
    trail_anchor_stream: Annotated[str, Field(pattern=_NAME_PATTERN)] = Field(
        "AUDIT_SEALS",
        description="JetStream stream each seal's hash is published to; created if absent.",
    )
    trail_anchor_max_age_days: int = Field(
        3650, ge=1, le=36_500, description="How long seal anchors are kept, in days."
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

    @field_validator("openbao_addr")
    @classmethod
    def _openbao_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            msg = "must start with http:// or https://"
            raise ValueError(msg)
        return value if value is None else value.rstrip("/")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            msg = "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
            raise ValueError(msg)
        return level

    @model_validator(mode="after")
    def _one_nats_authentication(self) -> "Settings":
        chosen = [
            name
            for name, value in (
                ("NATS_USER", self.nats_user),
                ("NATS_TOKEN", self.nats_token),
                ("NATS_NKEY_SEED_FILE", self.nats_nkey_seed_file),
                ("NATS_CREDS_FILE", self.nats_creds_file),
            )
            if value is not None
        ]
        if len(chosen) > 1:
            msg = f"choose one NATS authentication, not {' and '.join(chosen)}"
            raise ValueError(msg)
        if (self.nats_user is None) != (self.nats_password is None):
            msg = "NATS_USER and NATS_PASSWORD go together"
            raise ValueError(msg)
        if (self.nats_tls_cert_file is None) != (self.nats_tls_key_file is None):
            msg = "NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE go together"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _one_openbao_token(self) -> "Settings":
        tokens = (self.openbao_token_file is not None) + (self.openbao_token is not None)
        if self.openbao_addr is None:
            # A token without an address would leave details unencrypted while looking set up.
            if tokens:
                msg = "OPENBAO_TOKEN_FILE or OPENBAO_TOKEN is set but OPENBAO_ADDR is not"
                raise ValueError(msg)
            return self
        if tokens != 1:
            msg = "OPENBAO_ADDR needs exactly one of OPENBAO_TOKEN_FILE and OPENBAO_TOKEN"
            raise ValueError(msg)
        if self.openbao_ca_file is not None and not self.openbao_addr.startswith("https://"):
            msg = "OPENBAO_CA_FILE needs an https:// OPENBAO_ADDR"
            raise ValueError(msg)
        return self

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
        if not item["loc"]:  # a rule across settings; its message names them
            problems.append(item["msg"].removeprefix("Value error, "))
            continue
        name = str(item["loc"][0]).upper()
        shown = "" if name in _SECRETS else f" (got {redact(repr(item['input']))})"
        problems.append(f"{name}: {item['msg']}{shown}")
    return "configuration error: " + "; ".join(problems)


_SECRETS = {"NATS_PASSWORD", "NATS_TOKEN", "OPENBAO_TOKEN"}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Load and validate settings once, or stop with a line that names the bad variable."""
    try:
        return Settings()
    except ValidationError as error:
        raise ConfigurationError(describe(error)) from None
