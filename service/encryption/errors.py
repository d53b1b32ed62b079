"""The one error of the encryption wing, and how OpenBao's answers become it."""

from typing import Any, Literal
from uuid import UUID

import httpx

# Bounded, so that it can label a metric and pick a runbook entry.
FailureKind = Literal[
    "unreachable",  # no connection, or OpenBao answered it cannot serve (5xx other than sealed)
    "timeout",  # no answer within OPENBAO_TIMEOUT_S
    "sealed",  # OpenBao is sealed: nothing works until an operator unseals it
    "permission_denied",  # the token is refused: expired, revoked, or its policy lacks the path
    "key_not_found",  # the tenant's data key does not exist (the platform creates it)
    "unsafe_token",  # the token could create keys, which this service must never do
    "bad_response",  # an answer we cannot use: per-item errors, missing fields, other statuses
]


class EncryptionUnavailable(Exception):
    """Transit could not encrypt: kind says which failure, the message what to do about it."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        key: str | None = None,
        tenant_id: UUID | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
        self.key = key
        self.tenant_id = tenant_id


def data_key_name(tenant_id: UUID) -> str:
    """Name of the platform's Transit key for a tenant's audit details, reports and backups."""
    return f"tenant_{tenant_id}_data"


def json_of(response: httpx.Response) -> dict[str, Any]:
    """The JSON object OpenBao answered, or an empty one."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def server_errors(response: httpx.Response) -> str:
    """OpenBao's own error text, on one line and short; it never echoes plaintext or tokens."""
    errors = json_of(response).get("errors") or []
    # Policy denials arrive as go-multierror text: "1 error occurred:\n\t* permission denied\n\n".
    text = "; ".join(
        " ".join(line.strip(" \t*") for line in str(e).splitlines() if "error occurred" not in line)
        for e in errors
    )
    text = " ".join(text.split())
    return text[:200] + "…" if len(text) > 200 else text


def transport_failure(
    error: httpx.TransportError, url: str, timeout_s: float, what: str
) -> EncryptionUnavailable:
    """The connection-level failure of one request (what) to OpenBao at url."""
    if isinstance(error, httpx.TimeoutException):
        return EncryptionUnavailable(
            "timeout",
            f"OpenBao at {url} did not answer {what} within {timeout_s:g} s "
            f"({type(error).__name__}); check its load and OPENBAO_TIMEOUT_S",
        )
    return EncryptionUnavailable(
        "unreachable",
        f"OpenBao at {url} is unreachable for {what} ({type(error).__name__}: {error}); "
        "check OPENBAO_ADDR and that OpenBao is running",
    )


def status_failure(response: httpx.Response, url: str, what: str) -> EncryptionUnavailable:
    """The failure an unexpected status of OpenBao stands for; what names the request."""
    status, said = response.status_code, server_errors(response) or "no error text"
    if status == 503 and "sealed" in said.lower():
        return EncryptionUnavailable(
            "sealed", f"OpenBao at {url} is sealed ({what}); an operator must unseal it"
        )
    if status in {429, 502, 503, 504}:
        return EncryptionUnavailable(
            "unreachable", f"OpenBao at {url} cannot serve {what} now: HTTP {status}: {said}"
        )
    if status == 403:
        return EncryptionUnavailable(
            "permission_denied",
            f"OpenBao at {url} refused the token for {what} ({said}): it is expired or revoked, "
            "or its policy lacks the path; see deploy/openbao/session-audit.hcl",
        )
    return EncryptionUnavailable(
        "bad_response", f"OpenBao at {url} answered {what} with HTTP {status}: {said}"
    )
