"""Rendering for the dashboard: the Jinja2 environment (built on first render, so `import api.index`
never imports Jinja2), the filters templates use, the security headers every dashboard response
carries, and the route class that turns errors into HTML pages instead of the API's JSON.

Everything a template prints is escaped (autoescape is on for every template and `|safe` is never
used): payloads, results, errors and even queue names come from callers we do not trust.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute

from jobqueue.errors import JobQueueError, Unavailable

from .dashboard_auth import COOKIE, CsrfRefused, LoginRequired, base_path, same_origin, verify_session
from .deps import resources
from .http_errors import retry_after_headers

if TYPE_CHECKING:
    import jinja2

log = logging.getLogger("jobqueue.api")

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
STATIC_TYPES = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8"}

# No inline script or style anywhere (charts are SVG attributes, the one script is a file), so the
# policy can forbid both; the script may fetch only this origin's pages (the auto-refresh); forms
# may only post here; nothing may frame the dashboard.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Same-origin: our own POSTs carry a Referer for the origin check; job URLs never leak out.
    "Referrer-Policy": "same-origin",
    # Pages show job data: keep them out of shared caches and the back-button cache of a shared machine.
    "Cache-Control": "no-store",
}


@functools.cache
def environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every template, whatever its extension
        undefined=jinja2.StrictUndefined,  # a misspelt variable fails the test, not silently blank
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(dt=fmt_time, pretty=pretty_json, first_line=first_line, pct=pct, duration=fmt_duration)
    env.globals.update(static=static_url)
    return env


def render(
    request: Request, name: str, status_code: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> HTMLResponse:
    context.setdefault("session", None)
    context.setdefault("nav", "")
    context.setdefault("notice", None)
    context.setdefault("refresh_s", None)  # pages that refresh themselves (dashboard.js) say how often
    context.setdefault("base", base_path(request))  # every link in a template starts with it
    html = environment().get_template(name).render(**context)
    return HTMLResponse(html, status_code=status_code, headers=headers)


# --- filters -----------------------------------------------------------------------------------


def fmt_time(value: datetime | str | None) -> str:
    """UTC, to the second: the one zone every operator and log line shares."""
    if value is None:
        return "—"
    if isinstance(value, str):  # times inside the history are ISO strings from jsonb
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value
        return fmt_time(parsed)
    if value.tzinfo is not None:  # jsonb keeps the session's offset; show every time in UTC
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = abs(seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 90:
        return f"{s:.2g} s" if s < 10 else f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def first_line(text: str | None, limit: int = 140) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def pct(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f}%"


@functools.cache
def _asset_version(name: str) -> str:
    # Content-addressed URLs: a deploy that changes the CSS changes the URL, so it may be cached long.
    return hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]


def static_url(name: str) -> str:
    """An asset's URL below the dashboard's base (templates write `{{ base }}{{ static(...) }}`)."""
    return f"/static/{name}?v={_asset_version(name)}"


def asset(name: str) -> Response:
    if name not in STATIC_TYPES:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(
        (STATIC / name).read_bytes(),
        media_type=STATIC_TYPES[name],
        headers={"Cache-Control": "public, max-age=86400"},
    )


# --- errors as pages ---------------------------------------------------------------------------


def login_redirect(request: Request) -> RedirectResponse:
    base = base_path(request)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    query = "" if request.method != "GET" or target == base else "?" + urlencode({"next": target})
    return RedirectResponse(f"{base}/login{query}", status_code=303)


def error_page(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    return render(request, "error.html", status_code=status, title=title, message=message)


def _page_for(request: Request, exc: Exception) -> Response | None:
    if isinstance(exc, LoginRequired):
        return login_redirect(request)
    if isinstance(exc, CsrfRefused):
        return error_page(request, 403, "Request refused", str(exc))
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return error_page(request, 422, "Invalid request", f"{field}: {first.get('msg', 'invalid')}")
    if isinstance(exc, Unavailable):
        # As in _errors.py: the engine's message can hold hosts; log it, show only the name.
        log.warning("%s %s: %s unavailable: %s", request.method, request.url.path, exc.dependency, exc.message)
        return error_page(request, 503, "Service unavailable", f"{exc.dependency} is unavailable; try again shortly")
    if isinstance(exc, JobQueueError):
        if exc.status_code >= 500:
            log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc.message)
            return error_page(request, exc.status_code, "Internal error", "internal error")
        titles = {404: "Not found", 409: "Not allowed in this state", 422: "Invalid request", 429: "Too many attempts"}
        page = error_page(request, exc.status_code, titles.get(exc.status_code, "Error"), exc.message)
        page.headers.update(retry_after_headers(exc))
        return page
    return None


def precheck(request: Request) -> None:
    """What require_csrf checks without the body: the origin, and a valid session."""
    settings = resources(request).settings
    if not same_origin(request, settings.public_url):
        raise CsrfRefused("the request came from another site")
    if verify_session(request.cookies.get(COOKIE), settings.api_token) is None:
        raise LoginRequired()


class DashboardRoute(APIRoute):
    """Dashboard routes answer HTML: errors become pages (a redirect to login, a 403, a 404 ...)
    rather than the API's JSON, and every response carries the security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        # FastAPI parses a form body before any dependency runs: refuse a POST from another site
        # or without a session first, so such a body is never read (the login is the exception:
        # it is where a session comes from, and its body is capped small by BodyLimit).
        guarded = self.body_field is not None and not self.path.endswith("/login")

        async def run(request: Request) -> Response:
            try:
                if guarded:
                    precheck(request)
                response = await handler(request)
            except Exception as exc:
                page = _page_for(request, exc)
                if page is None:
                    raise  # unexpected: the app's handler answers 500 and the traceback is logged
                response = page
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return run
