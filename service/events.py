"""What arrives on the wire: the session-end event, and how a message becomes one or is refused."""

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_validator,
)

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})",
)
_TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# Far outside any real SSH session; such a time is a publisher bug, not an audit fact.
_EARLIEST, _LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


def _rfc3339(value: Any) -> Any:
    # pydantic's own datetime parsing also takes Unix numbers and times without an
    # offset; an audit time must say which instant it is, so only RFC 3339 passes on
    # to it (it then parses the string, quicker than Python would).
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        msg = "must be an RFC 3339 time with an offset, e.g. 2026-03-12T16:07:10-05:00"
        raise ValueError(msg)
    return value


def _plausible(value: datetime) -> datetime:
    if not _EARLIEST <= value < _LATEST:
        msg = "must lie between the years 2000 and 2099"
        raise ValueError(msg)
    return value


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else value


def _raw_source(value: Any) -> Any:
    if value is None:
        return ""
    # jsonb cannot hold U+0000; everything else of the raw value is kept as sent.
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def _reason_token(value: Any) -> Any:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        msg = "must be a short token of letters, digits and _ . : - (at most 64)"
        raise ValueError(msg)
    return value


Rfc3339Time = Annotated[datetime, BeforeValidator(_rfc3339), AfterValidator(_plausible)]

_EXAMPLE: dict[str, Any] = {
    "session_id": "5f0c7c1e-8a47-4a4b-9a53-2f1d7d0b6e11",
    "user_id": "9b2d4a36-3c1e-4f7a-8d55-0e6f1a2b3c4d",
    "tenant_id": "0e8f6a1c-2b3d-4e5f-8a9b-1c2d3e4f5a6b",
    "device_id": "c4d5e6f7-a8b9-4c0d-9e1f-2a3b4c5d6e7f",
    "start_time": "2026-03-12T16:07:10-05:00",
    "end_time": "2026-03-12T16:42:55-05:00",
    "source_ip": "203.0.113.7:51514",
    "reason": "normal",
}


_AS_SENT = ("session_id", "start_time", "end_time", "source_ip", "reason")


class SessionEndEvent(BaseModel):
    """An SSH session through the relay has ended."""

    model_config = ConfigDict(frozen=True, json_schema_extra={"examples": [_EXAMPLE]})

    session_id: UUID = Field(
        description="UUID of the SSH session; equals the last token of the subject.",
        examples=[_EXAMPLE["session_id"]],
    )
    user_id: Annotated[UUID | None, BeforeValidator(_empty_is_none)] = Field(
        None,
        description='UUID of the user; "", null or absent when there is none.',
        examples=[_EXAMPLE["user_id"], ""],
    )
    tenant_id: UUID = Field(
        description="UUID of the tenant that owns the device.",
        examples=[_EXAMPLE["tenant_id"]],
    )
    device_id: UUID = Field(
        description="UUID of the device the session reached.",
        examples=[_EXAMPLE["device_id"]],
    )
    start_time: Rfc3339Time = Field(
        description="Session start, RFC 3339 with an offset (Z or ±hh:mm).",
        examples=[_EXAMPLE["start_time"], "2026-03-12T21:07:10Z"],
    )
    end_time: Rfc3339Time = Field(
        description="Session end, RFC 3339 with an offset; not before start_time.",
        examples=[_EXAMPLE["end_time"], "2026-03-12T21:42:55Z"],
    )
    source_ip: Annotated[str, BeforeValidator(_raw_source)] = Field(
        "",
        description=(
            "Client address: ip, ip:port or [ipv6]:port. The bare address is stored; "
            "a value that is no address (or null) is kept as sent and does not block the row."
        ),
        examples=[_EXAMPLE["source_ip"], "[2001:db8::1]:443", "198.51.100.23"],
    )
    reason: Annotated[str | None, BeforeValidator(_reason_token)] = Field(
        None,
        description=(
            "Why the session ended: normal, idle_timeout or shutdown today; "
            "other short tokens are stored as sent."
        ),
        examples=["normal", "idle_timeout", "shutdown"],
    )
    # The fields of `details` as the relay sent them: the old consumer stored them so, and
    # the platform's audit API shows them so.
    _sent: dict[str, Any] | None = PrivateAttr(None)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_as_sent(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        event = handler(data)
        if isinstance(data, dict):
            event._sent = {name: data.get(name) for name in _AS_SENT}
        return event

    @model_validator(mode="after")
    def _ends_after_start(self) -> "SessionEndEvent":
        if self.end_time < self.start_time:
            msg = "end_time is before start_time"
            raise ValueError(msg)
        return self

    @property
    def ip_address(self) -> str | None:
        """The bare client address from source_ip, or None when it holds none."""
        return bare_address(self.source_ip)

    @property
    def duration_seconds(self) -> int:
        """Whole seconds between start and end."""
        return int((self.end_time - self.start_time).total_seconds())

    def details(self) -> dict[str, Any]:
        """The row's `details` as the old consumer had the platform's audit service write
        them: these keys in this order, each as the relay sent it (absent: null), and the
        whole seconds between start and end. An event built in Python has UTC times."""
        sent = self._sent or {
            "session_id": str(self.session_id),
            "start_time": utc_text(self.start_time),
            "end_time": utc_text(self.end_time),
            "source_ip": self.source_ip,
            "reason": self.reason,
        }
        return {
            "session_id": sent["session_id"],
            "start_time": sent["start_time"],
            "end_time": sent["end_time"],
            "duration_seconds": self.duration_seconds,
            # As sent, but for a U+0000, which jsonb cannot hold (see _raw_source).
            "source_ip": None if sent["source_ip"] is None else self.source_ip,
            "reason": sent["reason"],
        }


def utc_text(moment: datetime) -> str:
    """RFC 3339 in UTC; a zero fraction is dropped, so whole seconds read as the relay sent them."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")


def bare_address(source: str) -> str | None:
    """The address in `ip`, `ip:port` or `[v6]:port`, or None if there is none."""
    text = source.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    # PostgreSQL's inet has no room for an IPv6 zone (fe80::1%eth0).
    text = text.split("%", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


class Refusal(StrEnum):
    """Why a message could not become an audit row; a bounded set, fit for metric labels."""

    TOO_LARGE = "too_large"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    INVALID_FIELD = "invalid_field"
    SUBJECT_MISMATCH = "subject_mismatch"
    DATABASE_REFUSED = "database_refused"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that is no valid session-end event, with a reason a person can act on."""

    reason: Refusal
    detail: str


def parse_session_end(subject: str, data: bytes, *, max_bytes: int) -> SessionEndEvent | Rejected:
    """Validate one message against the wire contract; never raises."""
    if len(data) > max_bytes:
        return Rejected(Refusal.TOO_LARGE, f"payload is {len(data)} bytes, limit {max_bytes}")
    try:
        event = SessionEndEvent.model_validate_json(data)
    except ValidationError as error:
        return _rejection(error)
    token = subject.rsplit(".", 1)[-1]
    if token != str(event.session_id) and _as_uuid(token) != event.session_id:
        return Rejected(
            Refusal.SUBJECT_MISMATCH,
            f"subject token {token[:64]!r} differs from session_id {event.session_id}",
        )
    return event


_BATCH = TypeAdapter(list[SessionEndEvent])


def parse_session_ends(
    messages: Sequence[tuple[str, bytes]], *, max_bytes: int
) -> list[SessionEndEvent | Rejected]:
    """Validate a batch of (subject, payload) at once; the same answers as one by one.

    One pydantic call over the payloads joined into one JSON array costs less than one
    call each. Any failure falls back to validating each message alone, which names the
    bad ones with today's reasons; so does anything that could make the joined array
    misalign payloads and events (a payload that is not one object).
    """
    if len(messages) > 1 and all(_one_object(data, max_bytes) for _, data in messages):
        try:
            events = _BATCH.validate_json(b"[" + b",".join(data for _, data in messages) + b"]")
        except ValidationError:
            events = []
        if len(events) == len(messages) and all(
            _subject_token(subject) == str(event.session_id)
            for (subject, _), event in zip(messages, events, strict=True)
        ):
            return list(events)
    return [parse_session_end(subject, data, max_bytes=max_bytes) for subject, data in messages]


def _one_object(data: bytes, max_bytes: int) -> bool:
    # A cheap screen, not proof of one object: `{..},{..}` passes. With the checks after
    # the call (as many events as payloads, each event's session_id its subject's), a
    # misaligned batch takes payloads crafted together so that one leaves an array open
    # and another closes it: only a publisher can do that, and every event it gets
    # written that way is one it could have published valid, under its own subject.
    text = data.strip()
    return len(data) <= max_bytes and text[:1] == b"{" and text[-1:] == b"}"


def _subject_token(subject: str) -> str:
    return subject.rsplit(".", 1)[-1]


def _as_uuid(token: str) -> UUID | None:
    try:
        return UUID(token)
    except ValueError:
        return None


def _rejection(error: ValidationError) -> Rejected:
    first = error.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return Rejected(Refusal.INVALID_JSON, f"not JSON: {first['msg']}")
    if not first["loc"] and first["type"] in {"model_type", "model_attributes_type"}:
        kind = type(first["input"]).__name__
        return Rejected(Refusal.NOT_AN_OBJECT, f"payload is a JSON {kind}, not an object")
    problems = [
        f"{'.'.join(map(str, item['loc'])) or 'payload'}: {item['msg']}"
        f" (got {_short(item['input'])})"
        for item in error.errors(include_url=False)
    ]
    return Rejected(Refusal.INVALID_FIELD, "; ".join(problems))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
