"""The AsyncAPI document and its HTML page, served without reaching the internet."""

import re
from functools import cache
from pathlib import Path

from faststream.asgi import AsgiResponse, get
from faststream.asgi.handlers import GetHandler
from faststream.asgi.response import JSONResponse
from faststream.asgi.types import Scope
from faststream.specification.asyncapi.site import get_asyncapi_html
from faststream.specification.base import SpecificationFactory

STATIC = Path(__file__).resolve().parent / "static" / "asyncapi"
ASSETS = "/docs/asyncapi/static"
_ICON_LINK = re.compile(r"^\s*<link rel=\"icon\"[^>]*>\n", re.M)


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
