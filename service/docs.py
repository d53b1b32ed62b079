"""The AsyncAPI document and its HTML page, served without reaching the internet."""

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from faststream.asgi import AsgiResponse, get
from faststream.asgi.handlers import GetHandler
from faststream.asgi.response import JSONResponse
from faststream.asgi.types import Scope
from faststream.specification import AsyncAPI
from faststream.specification.asyncapi.site import get_asyncapi_html
from faststream.specification.base import SpecificationFactory

from service.deadletters import letters as dlq
from service.events import Refusal

STATIC = Path(__file__).resolve().parent / "static" / "asyncapi"
SESSION_ID = {
    "description": (
        "UUID of the SSH session, lower case: the subject's last token, equal to the "
        "payload's session_id (a message where they differ is dead-lettered)."
    ),
    "examples": ["5f0c7c1e-8a47-4a4b-9a53-2f1d7d0b6e11"],
}
DEAD_LETTER_HEADERS = {
    "type": "object",
    "properties": {
        dlq.REASON: {
            "type": "string",
            "enum": [reason.value for reason in Refusal],
            "description": "Why the message could not become a row.",
        },
        dlq.DETAIL: {"type": "string", "description": "Which field failed and why."},
        dlq.ORIGINAL_SUBJECT: {"type": "string", "description": "Subject it was published on."},
        dlq.ORIGINAL_STREAM: {"type": "string", "description": "Stream it was stored in."},
        dlq.ORIGINAL_SEQUENCE: {"type": "string", "description": "Its sequence in that stream."},
        dlq.DELIVERIES: {"type": "string", "description": "How often it had been delivered."},
        dlq.FAILED_AT: {"type": "string", "format": "date-time", "description": "When."},
        dlq.MSG_ID: {"type": "string", "description": "dlq:<stream>:<sequence>, for dedupe."},
    },
    "required": [dlq.REASON, dlq.DETAIL, dlq.ORIGINAL_SUBJECT],
}
ASSETS = "/docs/asyncapi/static"
_ICON_LINK = re.compile(r"^\s*<link rel=\"icon\"[^>]*>\n", re.M)


class AsyncAPIDocument:
    """FastStream's AsyncAPI 3.0 document, completed with what FastStream cannot say."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    @property
    def title(self) -> str:
        """The document's title."""
        return str(self._data["info"]["title"])

    def to_jsonable(self) -> dict[str, Any]:
        """The document as JSON-ready data."""
        return self._data

    def to_json(self) -> str:
        """The document as JSON."""
        return json.dumps(self._data)

    def to_yaml(self) -> str:
        """The document as YAML, keys in AsyncAPI's order."""
        return yaml.safe_dump(self._data, sort_keys=False, allow_unicode=True, width=100)


class SessionAuditAsyncAPI(AsyncAPI):
    """The AsyncAPI factory, adding channel parameters, contact and dead-letter headers."""

    def to_specification(self) -> AsyncAPIDocument:
        """Build the document from the broker, then complete it."""
        data = super().to_specification().to_jsonable()
        data["info"]["contact"] = {"name": "Network-management platform team"}
        for name, channel in data["channels"].items():
            if "{session_id}" in name:
                channel["parameters"] = {"session_id": SESSION_ID}
        for name, message in data["components"]["messages"].items():
            if name.startswith("audit.dlq."):
                message["headers"] = DEAD_LETTER_HEADERS
            else:  # the relay sends no headers, so no correlation id either
                message.pop("correlationId", None)
        return AsyncAPIDocument(data)


def asyncapi_routes(specification: SpecificationFactory) -> list[tuple[str, GetHandler]]:
    """Routes of the docs page, the document as JSON and YAML, and the page's own assets."""

    @cache
    def page() -> bytes:
        html = get_asyncapi_html(
            specification.to_specification(),
            asyncapi_js_url=f"{ASSETS}/index.js",
            asyncapi_css_url=f"{ASSETS}/default.min.css",
            # The "try it" publisher would let a browser publish onto the broker.
            try_it_out_path=None,
        )
        # The favicons sit on asyncapi.com; an air-gapped browser would only wait for them.
        return _ICON_LINK.sub("", html).encode()

    @get(include_in_schema=False)
    async def docs(scope: Scope) -> AsgiResponse:
        return AsgiResponse(page(), 200, {"Content-Type": "text/html; charset=utf-8"})

    @get(include_in_schema=False)
    async def as_json(scope: Scope) -> AsgiResponse:
        return JSONResponse(specification.to_specification().to_jsonable(), 200)

    @get(include_in_schema=False)
    async def as_yaml(scope: Scope) -> AsgiResponse:
        document = specification.to_specification().to_yaml().encode()
        return AsgiResponse(document, 200, {"Content-Type": "application/yaml"})

    return [
        ("/docs/asyncapi", docs),
        ("/docs/asyncapi.json", as_json),
        ("/docs/asyncapi.yaml", as_yaml),
        (f"{ASSETS}/index.js", _asset("index.js", "text/javascript; charset=utf-8")),
        (f"{ASSETS}/default.min.css", _asset("default.min.css", "text/css; charset=utf-8")),
    ]


def _asset(name: str, content_type: str) -> GetHandler:
    body = (STATIC / name).read_bytes()

    @get(include_in_schema=False)
    async def asset(scope: Scope) -> AsgiResponse:
        return AsgiResponse(
            body, 200, {"Content-Type": content_type, "Cache-Control": "public, max-age=86400"}
        )

    return asset
