"""`/api/docs`: Swagger UI, served by the app itself, so the page works offline and behind a
firewall (FastAPI's default page loads Swagger from a CDN, and shows nothing without one).

The files are the ones the `fastapi-offline` package vendors (swagger-ui 5.x:
`swagger-ui-bundle.js`, `swagger-ui.css`, a favicon), located without importing that package and
served from `/api/docs/{name}` with a versioned, long-cached URL (gzip when the client takes it).
The page is FastAPI's own `get_swagger_ui_html()` pointed at them. It carries a
Content-Security-Policy of its own: Swagger's one inline script (the `SwaggerUIBundle({...})`
call) is allowed by its SHA-256 hash, everything else must come from this origin, and the
spec validator (validator.swagger.io, which Swagger UI calls by default) is switched off.

The page and `/api/openapi.json` need no credentials; the operations do: the Authorize button
takes the bearer tokens (and the QStash signature header) the document declares.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata
import importlib.util
import re
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from jobqueue.errors import ConfigurationError

DOCS_PATH = "/api/docs"
OPENAPI_PATH = "/api/openapi.json"
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
SWAGGER_PARAMETERS = {
    "validatorUrl": None,  # Swagger UI would send the document to validator.swagger.io
    "persistAuthorization": False,  # a token typed into Authorize is not kept in localStorage
    "displayRequestDuration": True,
}

router = APIRouter(include_in_schema=False)


@functools.cache
def asset_dir() -> Path:
    """fastapi_offline/static, found without importing the package (nothing runs at import)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError("the fastapi-offline package (Swagger UI's files) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@functools.cache
def assets_version() -> str:
    return importlib.metadata.version("fastapi-offline")


@functools.cache
def _asset(name: str, compressed: bool) -> bytes:
    import gzip  # the docs' assets are the only thing here that compresses

    data = (asset_dir() / name).read_bytes()
    return gzip.compress(data, compresslevel=6, mtime=0) if compressed else data


def script_hashes(html: str) -> list[str]:
    """CSP sources for the page's inline scripts (hash of each, exactly as it stands)."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in INLINE_SCRIPT.findall(html)
    ]


def page_csp(html: str) -> str:
    # Swagger UI sets its inline styles through the DOM (which CSP allows), so styles too can be
    # held to this origin; its images are data: URLs in the CSS; "Try it out" fetches this origin.
    return (
        f"default-src 'none'; script-src 'self' {' '.join(script_hashes(html))}; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


@router.get(DOCS_PATH)
async def docs_page(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    version = assets_version()
    page = get_swagger_ui_html(
        openapi_url=f"{root}{OPENAPI_PATH}",
        title="jobqueue API",
        swagger_js_url=f"{root}{DOCS_PATH}/swagger-ui-bundle.js?v={version}",
        swagger_css_url=f"{root}{DOCS_PATH}/swagger-ui.css?v={version}",
        swagger_favicon_url=f"{root}{DOCS_PATH}/favicon.png?v={version}",
        swagger_ui_parameters=SWAGGER_PARAMETERS,
    )
    html = bytes(page.body).decode()
    headers = {
        "Content-Security-Policy": page_csp(html),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return HTMLResponse(html, headers=headers)


@router.get(DOCS_PATH + "/{name}")
async def docs_asset(request: Request, name: str) -> Response:
    if name not in ASSETS:
        return Response("not found", status_code=404, media_type="text/plain")
    # Compress text only; a PNG is compressed already.
    compressed = not name.endswith(".png") and "gzip" in request.headers.get("accept-encoding", "").lower()
    versioned = request.query_params.get("v") == assets_version()
    headers = {
        "Cache-Control": "public, max-age=31536000, immutable" if versioned else "public, max-age=3600",
        "X-Content-Type-Options": "nosniff",
        "Vary": "Accept-Encoding",
    }
    if compressed:
        headers["Content-Encoding"] = "gzip"
    return Response(_asset(name, compressed), media_type=ASSETS[name], headers=headers)
