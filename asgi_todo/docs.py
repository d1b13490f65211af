"""Swagger UI at /docs and ReDoc at /redoc, every asset served by this app from files vendored
in the package (asgi_todo/static): the npm packages swagger-ui-dist and redoc at the versions
static/manifest.json names, with their licences and each file's sha256 (tests/test_docs.py
checks them; tests/tools/vendor_ui.py re-vendors them; docs: Configuration, The vendored Swagger UI and ReDoc files).

The pages load nothing from another origin, and their Content-Security-Policy says so: scripts
only from files of this origin (the start-up scripts are files, not inline), styles from this
origin plus inline ones (both set style attributes as they render), images also as data: URIs
(their icons), requests only to this origin; ReDoc's page also allows workers from blob: URLs
(its search). ReDoc 2.5 always asks for the Redocly logo from a CDN: the policy blocks it, and
ReDoc then leaves the image out.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# ReDoc's search runs in a worker that it makes from a blob: URL.
_REDOC_HEADERS = {**_HEADERS, "Content-Security-Policy": f"{CONTENT_SECURITY_POLICY}; worker-src blob:"}

ASSETS = Path(__file__).with_name("static")
MANIFEST = "manifest.json"


@dataclass(frozen=True, slots=True)
class Vendored:
    """One npm package's files in ASSETS / directory: name -> sha256."""

    version: str
    integrity: str  # the npm tarball's, as `npm pack` checked it
    directory: str
    files: Mapping[str, str]


@cache
def read_manifest() -> dict[str, Vendored]:
    entries = json.loads((ASSETS / MANIFEST).read_text(encoding="utf-8"))
    return {package: Vendored(**entry) for package, entry in entries.items()}


# URLs are relative to /docs, so the page also works when the app is mounted under a path.
_PAGE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>asgi_todo - Swagger UI</title>
<link rel="stylesheet" href="docs/static/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/static/favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="docs/static/favicon-16x16.png" sizes="16x16">
</head>
<body>
<div id="swagger-ui" data-openapi-url="openapi.json"></div>
<script src="docs/static/swagger-ui-bundle.js"></script>
<script src="docs/swagger-ui-init.js"></script>
</body>
</html>
"""

_INIT = """\
"use strict";
(function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    domNode: root,
    deepLinking: true,
    persistAuthorization: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
    layout: "BaseLayout"
  });
})();
"""


_REDOC_PAGE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>asgi_todo - ReDoc</title>
</head>
<body>
<div id="redoc" data-openapi-url="openapi.json"></div>
<script src="redoc/static/redoc.standalone.js"></script>
<script src="redoc/redoc-init.js"></script>
</body>
</html>
"""

_REDOC_INIT = """\
"use strict";
(function () {
  var root = document.getElementById("redoc");
  Redoc.init(root.dataset.openapiUrl, {}, root);
})();
"""


class _Assets(StaticFiles):
    """A vendored package's directory, of which only the files in the manifest are served."""

    def __init__(self, package: str) -> None:
        vendored = read_manifest()[package]
        super().__init__(directory=ASSETS / vendored.directory)
        self.served = frozenset(vendored.files)

    async def get_response(self, path: str, scope: Scope) -> Response:
        if path not in self.served:
            raise HTTPException(404)
        response = await super().get_response(path, scope)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def _text(content: str, media_type: str, headers: dict[str, str]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return Response(content, media_type=media_type, headers=headers)

    return endpoint


def routes() -> list[BaseRoute]:
    return [
        Route("/docs", _text(_PAGE, "text/html", _HEADERS), methods=["GET"], name="docs"),
        Route("/docs/swagger-ui-init.js", _text(_INIT, "text/javascript", _HEADERS), methods=["GET"], name="docs-init"),
        Mount("/docs/static", app=_Assets("swagger-ui-dist"), name="docs-static"),
        Route("/redoc", _text(_REDOC_PAGE, "text/html", _REDOC_HEADERS), methods=["GET"], name="redoc"),
        Route(
            "/redoc/redoc-init.js",
            _text(_REDOC_INIT, "text/javascript", _REDOC_HEADERS),
            methods=["GET"],
            name="redoc-init",
        ),
        Mount("/redoc/static", app=_Assets("redoc"), name="redoc-static"),
    ]
