"""Errors at the HTTP boundary: every failure answers `{"error": {"code", "message", ...}}`.

The engine raises one hierarchy (`JobQueueError`, each class with its `status_code`); this module
is the only place that turns it into HTTP, so routes never catch anything. FastAPI's own
request validation and Starlette's 404/405 are reshaped the same way, so a client parses one
error format. Nothing here echoes a secret, a DSN or a traceback: a 503 names the dependency
only (the detail goes to the log), and an unexpected error answers a fixed message.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from jobqueue.errors import InvalidRequest as InvalidRequest  # raised by the routes; defined with the rest
from jobqueue.errors import JobQueueError, Unauthorized, Unavailable

log = logging.getLogger("jobqueue.api")

# Parameter sources FastAPI puts first in a validation error's `loc`; the field is what follows.
_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})
_HTTP_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


class TooManyAttempts(JobQueueError):
    """Too many failed credentials; try again later."""

    status_code = 429

    def __init__(self, retry_after_s: int, message: str | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s


class TokenInUse(JobQueueError):
    """This Upstash-Signature is in use by a drain that is still running."""

    status_code = 409

    def __init__(self, retry_after_s: int, message: str | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s


def retry_after_headers(exc: JobQueueError) -> dict[str, str]:
    """`Retry-After` (whole seconds, at least 1) for errors that say when to come back."""
    seconds = exc.details.get("retry_after_s")
    return {"Retry-After": str(max(1, int(seconds)))} if seconds is not None else {}


class ErrorDetail(BaseModel):
    code: str = Field(
        description="`unauthorized`, `forbidden`, `too_many_attempts`, `not_found`, `invalid_state`, "
        "`payload_too_large`, `invalid_job`, `invalid_request`, `unavailable`, ..."
    )
    message: str = Field(description="what went wrong, for a person; never a secret")
    field: str | None = Field(default=None, description="the offending field, dotted (`jobs.3.payload.url`)")
    dependency: str | None = Field(default=None, description="`postgres` or `redis` (503 only)")


class ErrorBody(BaseModel):
    """Every error answers this shape."""

    error: ErrorDetail


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: "Missing or wrong credentials",
        403: "A valid credential that may not call this route (JOBS_ENQUEUE_TOKEN or JOBS_METRICS_TOKEN "
        "outside its scope)",
        429: "Too many failed credentials from this address (or in all); `Retry-After` says when to retry",
        404: "No such job",
        409: "The job's state does not allow this",
        413: "The request body is too large",
        422: "Validation failed; `field` names the offending field",
        503: "Postgres or Redis is unreachable; `dependency` says which",
    }
    return {c: {"model": ErrorBody, "description": described[c]} for c in codes}


# The errors every authenticated route can answer (documented so clients and schemathesis know them).
COMMON_ERRORS = _responses(401, 403, 422, 429, 503)
NOT_FOUND = _responses(404)
CONFLICT = _responses(404, 409)
TOO_LARGE = _responses(413)
TOKEN_IN_USE: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "This Upstash-Signature is in use by a drain still running; `Retry-After`"}
}


def error_code(exc: JobQueueError) -> str:
    """`InvalidJob` -> `invalid_job`; every `Unavailable` is `unavailable` (with `dependency`)."""
    if isinstance(exc, Unavailable):
        return "unavailable"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: str | None
) -> JSONResponse:
    detail: dict[str, Any] = {"code": code, "message": message}
    detail.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse({"error": detail}, status_code=status, headers=headers)


async def _jobqueue_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JobQueueError)
    status = exc.status_code
    if isinstance(exc, Unavailable):
        # The engine's message can carry hosts and driver text: log it, answer only the name.
        log.warning("%s %s: %s unavailable: %s", request.method, request.url.path, exc.dependency, exc.message)
        return error_response(503, "unavailable", f"{exc.dependency} is unavailable", dependency=exc.dependency)
    if status >= 500:
        log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc.message)
        return error_response(status, error_code(exc), "internal error")
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else {}
    headers.update(retry_after_headers(exc))
    field = exc.details.get("field") or None
    return error_response(status, error_code(exc), exc.message, headers, field=field)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first: dict[str, Any] = dict(errors[0]) if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        # FastAPI puts the parser's offset where the field would be; the field is the body.
        ctx = first.get("ctx")
        reason = ctx.get("error", "JSON decode error") if isinstance(ctx, dict) else "JSON decode error"
        return error_response(422, "invalid_request", f"malformed JSON: {reason}", field="body")
    loc = [str(p) for p in first.get("loc", ())]
    if loc and loc[0] in _SOURCES:
        loc = loc[1:]
    field = ".".join(loc) or "body"
    return error_response(422, "invalid_request", f"{field}: {first.get('msg', 'invalid')}", field=field)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's "There was an error parsing the body" (bytes that are not JSON text): the
        # contract answers malformed bodies with 422, as the enqueue routes do.
        message = f"malformed JSON: {exc.detail}" if isinstance(exc.detail, str) else "malformed JSON"
        return error_response(422, "invalid_request", message, field="body")
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after this answers, so the traceback still reaches the server log.
    return error_response(500, "internal_error", "internal error")


# What our routes answer errors with, wherever they are mounted (see ApiRoute).
ROUTE_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    JobQueueError: _jobqueue_error,
    RequestValidationError: _validation_error,
    StarletteHTTPException: _http_error,
}
_HANDLERS_KEY = "starlette.exception_handlers"  # where Starlette's ExceptionMiddleware puts its map


def install_error_handlers(app: FastAPI) -> None:
    for exc_class, handler in ROUTE_HANDLERS.items():
        app.add_exception_handler(exc_class, handler)
    app.add_exception_handler(Exception, _unexpected)


class ApiRoute(APIRoute):
    """The API's routes answer `{"error": ...}` in any app, not only in `create_app()`'s: a
    `jobqueue.web.router()` mounted into an app of your own brings its error shape along.

    The handlers are put into the request's exception-handler map (the one Starlette's
    ExceptionMiddleware consults when a route raises) for this route only, so they run where an
    app-level handler would: after the route's dependencies have seen the exception (the worker
    route's QStash token relies on that), and never for the host's own routes."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handlers, status_handlers = scope.get(_HANDLERS_KEY) or ({}, {})
            scope[_HANDLERS_KEY] = ({**handlers, **ROUTE_HANDLERS}, status_handlers)
        await super().handle(scope, receive, send)
