"""Request plumbing shared by the routes: the lazily built engine, `Annotated` dependency aliases,
bounded body reading, strict JSON, and paging (the cursor codec itself is jobqueue.validation's).

The engine is built on first use, not at import or startup: Vercel imports `api/index.py` on
every cold start and Mangum runs lifespan on every invocation, so nothing that connects (or
imports asyncpg and the Redis clients) may happen before a request needs it.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import Depends, Query, Request
from pydantic import AfterValidator, BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobqueue.errors import PayloadTooLarge, Unavailable
from jobqueue.models import Status
from jobqueue.settings import Settings

# Re-exported: the routes and the dashboard page with them.
from jobqueue.validation import MAX_ID as MAX_ID
from jobqueue.validation import decode_cursor as decode_cursor
from jobqueue.validation import encode_cursor as encode_cursor

from .http_errors import InvalidRequest

if TYPE_CHECKING:
    from jobqueue.engine import JobQueue
    from jobqueue.registry import Registry, RegistrySource

Kicker = Callable[[], Awaitable[None]]

M = TypeVar("M", bound=BaseModel)


class Resources:
    """What the app holds across requests: settings, and the engine once something needs it."""

    def __init__(self, settings: Settings, jq: JobQueue | None, registry: RegistrySource | None) -> None:
        self.settings = settings
        self.registry = registry
        self._jq = jq
        self._owned = jq is None  # an engine handed in belongs to the caller, who closes it
        self._registry: Registry | None = None
        self.kicker: Kicker | None = None

    @property
    def built(self) -> JobQueue | None:
        return self._jq

    def jq(self) -> JobQueue:
        if self._jq is None:
            # No await between the check and the assignment: concurrent requests cannot build two.
            self._jq = self._build()
        if self._jq.kicker is None and self.kicker is not None:
            self._jq.kicker = self.kicker
        return self._jq

    def _build(self) -> JobQueue:
        s = self.settings
        # Checked here so a missing setting answers 503 naming the dependency, not a 500.
        if not s.database_url:
            raise Unavailable("postgres", "DATABASE_URL is not set")
        if not (s.upstash_url and s.upstash_token) and not s.redis_url:
            raise Unavailable("redis", "neither UPSTASH_REDIS_REST_URL/TOKEN nor REDIS_URL is set")
        from jobqueue.engine import JobQueue

        return JobQueue.from_settings(s, self.job_types())

    def job_types(self) -> Registry:
        """The registry, resolved once (on first use): the engine's, or the source's. Needs no
        connection, so the OpenAPI document can describe each type's payload without one."""
        if self._jq is not None:
            return self._jq.registry
        if self._registry is None:
            from jobqueue.registry import load_registry, resolve_registry

            source = self.registry
            self._registry = resolve_registry(source) if source is not None else load_registry(self.settings.registry)
        return self._registry

    async def close(self) -> None:
        """Close what this app built; the next request builds afresh (Mangum shuts down per call)."""
        if self._owned and self._jq is not None:
            jq, self._jq = self._jq, None
            await jq.close()
        http = sys.modules.get("jobqueue.builtins.http")
        if http is not None:  # only if a webhook was delivered here: never imported just to close
            await http.aclose_clients()


# Where a mounted `jobqueue.web.router()` leaves its Resources for the request (see BindResources).
REQUEST_STATE_KEY = "jobqueue_resources"


class BindResources:
    """A router-level dependency of `jobqueue.web.router()`: puts that router's Resources on
    `request.state` before any route dependency runs (FastAPI solves a route's dependencies in
    order, the router's first), so the routes work inside an app that has no
    `app.state.resources` of its own, or one with several jobqueue routers."""

    def __init__(self, res: Resources) -> None:
        self.resources = res

    async def __call__(self, request: Request) -> None:
        setattr(request.state, REQUEST_STATE_KEY, self.resources)


def resources(request: Request) -> Resources:
    """The Resources bound by the router that matched (a mounted router), else the app's own
    (`create_app()`, and the dashboard's sub-application)."""
    res: Resources | None = getattr(request.state, REQUEST_STATE_KEY, None)
    if res is None:
        res = request.app.state.resources
    return res


# The dependencies are `async def` although they never wait: FastAPI runs a plain `def` dependency
# in its thread pool, and the two hand-offs per request were a measurable part of an enqueue's
# own time (bench/http_floor.py).


async def get_settings(request: Request) -> Settings:
    return resources(request).settings


async def get_jq(request: Request) -> JobQueue:
    return resources(request).jq()


SettingsDep = Annotated[Settings, Depends(get_settings)]
if TYPE_CHECKING:
    JQ = Annotated[JobQueue, Depends(get_jq)]
else:
    # FastAPI evaluates annotations at runtime; `Any` here keeps jobqueue.engine (asyncpg, httpx,
    # the Redis clients) out of `import api.index`. mypy sees the real type above.
    JQ = Annotated[Any, Depends(get_jq)]


# --- bodies -----------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it is known to exceed `limit` bytes: first by
    Content-Length (nothing read), then while streaming (a chunked or lying client)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {int(declared)} bytes; the limit is {limit}")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return bytes(buf)


class BodyLimit:
    """ASGI middleware: no route reads a body past its path's limit (`limit_for(path)`), however
    it parses it. FastAPI parses a `Form(...)` body whole before any dependency runs, so without
    this a 50 MB form POST to the login or an action was read to the end before its 401/403/303.
    A declared Content-Length over the limit is answered 413 at once, nothing read; a chunked or
    lying body is cut at the limit: 413 is answered, and the app sees the client disconnect (its
    own response is dropped). Routes keep their own, tighter checks (`read_body`)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(route_path(scope))
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(send, f"request body is {int(declared)} bytes; the limit is {limit}")
            return
        seen = 0
        answered = False

        async def bounded_receive() -> Message:
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    if not answered:
                        answered = True
                        await _too_large(send, f"request body exceeds the limit of {limit} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not answered:
                await send(message)

        await self.app(scope, bounded_receive, guarded_send)


def route_path(scope: Scope) -> str:
    """The path below the ASGI `root_path` (what routes match; ASGI's `path` includes it)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :]
    return path


async def _too_large(send: Send, message: str) -> None:
    body = json.dumps({"error": {"code": "payload_too_large", "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    # close: the rest of the body is never read, so the connection cannot carry another request.
    await send({"type": "http.response.start", "status": 413, "headers": [*headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_text(value: Any) -> None:
    # Postgres jsonb refuses NUL characters and lone surrogates; catching them here keeps a bad
    # payload a 422 instead of a failed INSERT.
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str):
            if "\x00" in v:
                raise ValueError("strings may not contain NUL (\\u0000)")
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("strings may not contain unpaired surrogates") from None
        elif isinstance(v, float) and not math.isfinite(v):
            raise ValueError("numbers must be finite")


def _storable(value: str) -> str:
    _check_text(value)
    return value


# A string Postgres can take as a text parameter (no NUL, no lone surrogate): filters and names
# that reach a query must be refused as a 422 rather than fail inside the driver.
StorableStr = Annotated[str, AfterValidator(_storable)]
QUEUE_PATTERN = r"^[A-Za-z0-9_.-]+$"  # as JobRequest.queue: no other queue can exist


# What _check_text looks for can only come from these in the raw body: a NUL or a lone surrogate
# only as a \u escape (JSON forbids raw control characters, and a raw surrogate is not UTF-8), an
# infinite float only from an exponent or a very long number; a NUL byte means a UTF-16/32 body,
# which is checked in full. Walking a 1000-job batch costs 1 ms; this scan, microseconds.
_MAY_NEED_CHECK = re.compile(rb"\\u|[0-9][eE]|[0-9]{300}|\x00")


def parse_json(raw: bytes) -> Any:
    """Strict JSON: malformed text, NaN/Infinity and text Postgres cannot store are a 422."""
    try:
        data = json.loads(raw, parse_constant=_no_constant)
        if _MAY_NEED_CHECK.search(raw):
            _check_text(data)
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})", field="body") from None
    except (ValueError, RecursionError) as e:
        # ValueError also covers undecodable bytes and integers past Python's digit limit.
        raise InvalidRequest(f"malformed JSON: {e}", field="body") from None
    return data


def require_object(data: Any, what: str = "request body") -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidRequest(f"{what} must be a JSON object, got {type(data).__name__}", field="body")
    return data


def parse_model(model: type[M], data: Any) -> M:
    """Validate a parsed body; the 422 names the first bad field (dotted) and why."""
    from jobqueue.validation import parse_model as validate

    return validate(model, data, InvalidRequest)


# --- OpenAPI for bodies the routes read themselves ---------------------------------------------


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Resolve pydantic's local `$defs` refs in place: in an OpenAPI document `#/$defs/...` would
    point at the document root, not at this schema."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.removeprefix("#/$defs/")]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` documenting a required JSON body that FastAPI itself does not parse."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# --- listing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    limit: int
    cursor: int | None
    queue: str | None
    type: str | None


async def page_params(  # async: see get_settings
    queue: Annotated[str | None, Query(max_length=100, pattern=QUEUE_PATTERN, description="only this queue")] = None,
    type: Annotated[StorableStr | None, Query(max_length=200, description="only this job type")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="page size")] = 50,
    cursor: Annotated[str | None, Query(max_length=100, description="`next_cursor` of the previous page")] = None,
) -> Page:
    return Page(limit=limit, cursor=decode_cursor(cursor), queue=queue, type=type)


PageDep = Annotated[Page, Depends(page_params)]
StatusFilter = Annotated[Status | None, Query(description="only jobs in this state")]
