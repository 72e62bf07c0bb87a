"""`create_app()`: the FastAPI application over one JobQueue.

Resources are lazy (see `_deps.Resources`): the engine is built by the first request that needs
it and closed at lifespan shutdown. That suits both hosts: Vercel runs uvicorn with
`lifespan="auto"` (startup once per instance, shutdown at exit), and Mangum runs startup and
shutdown around every invocation, so a per-invocation engine is simply rebuilt on demand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from jobqueue.settings import Settings

from . import routes_admin, routes_jobs, routes_metrics, routes_workers
from .auth import WORKER_BODY_LIMIT
from .deps import BodyLimit, Resources
from .http_errors import install_error_handlers
from .kick import qstash_kicker

if TYPE_CHECKING:
    from jobqueue.engine import JobQueue
    from jobqueue.registry import RegistrySource

API_VERSION = "1.0"
DESCRIPTION = """A durable job queue: Postgres is the truth, Redis dispatches, `/api/workers` drains.

**Credentials** (`Authorization: Bearer ...`; use *Authorize*):

| credential | may call |
|---|---|
| `JOBS_API_TOKEN` (`ApiToken`) | every API route |
| `JOBS_ENQUEUE_TOKEN` (`EnqueueToken`) | `POST /api/jobs`, `POST /api/jobs/batch`, `GET /api/jobs/{id}` |
| `JOBS_METRICS_TOKEN` (`MetricsToken`) | `GET /api/metrics`, `GET /api/metrics/prometheus` |
| `WORKER_SECRET` or `CRON_SECRET` (`WorkerSecret`), or a QStash `Upstash-Signature` | `/api/workers` |

A missing or wrong credential answers 401 (and, repeated, 429 with `Retry-After`); a scoped token
outside its scope answers 403. `/api/health`, this document and `/api/docs` are open.

**Priorities**: 0-9, 9 runs first, 0 last, default 5; also by name: `low` (2), `normal` (5),
`high` (7), `urgent` (9).

Errors answer `{"error": {"code", "message", "field"?, "dependency"?}}`."""


class LazyDashboard:
    """An ASGI app that builds the dashboard (a FastAPI app sharing this app's resources) the
    first time a /dashboard path is requested, then hands every such request to it."""

    def __init__(self, parent: FastAPI) -> None:
        self._parent = parent
        self._app: FastAPI | None = None

    def build(self) -> FastAPI:
        if self._app is None:
            from . import dashboard

            sub = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
            sub.state.resources = self._parent.state.resources
            sub.include_router(dashboard.router)
            self._app = sub
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.build()(scope, receive, send)


def create_app(
    settings: Settings | None = None, *, jq: JobQueue | None = None, registry: RegistrySource | None = None
) -> FastAPI:
    """Build the app. `jq`, when given, is used as is and left open (its owner closes it);
    otherwise one is built from `settings` (default: the environment) on first use, with
    `registry` or the one JOBQUEUE_REGISTRY names (default `jobqueue.builtins:default_registry`);
    `registry` may be a function that builds it, called on first use."""
    if settings is None:
        settings = jq.settings if jq is not None else Settings()
    res = Resources(settings, jq, registry)
    res.kicker = qstash_kicker(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await res.close()

    app = FastAPI(
        title="jobqueue",
        version=API_VERSION,
        description=DESCRIPTION,
        docs_url="/api/docs",
        swagger_ui_oauth2_redirect_url="/api/docs/oauth2-redirect",
        redoc_url=None,
        openapi_url="/api/openapi.json",
        lifespan=lifespan,
    )
    app.state.resources = res
    install_error_handlers(app)
    app.include_router(routes_jobs.enqueue_router)
    app.include_router(routes_jobs.router)
    app.include_router(routes_workers.router)
    app.include_router(routes_admin.dlq)
    app.include_router(routes_admin.queues)
    app.include_router(routes_admin.health)
    app.include_router(routes_metrics.router)
    # The dashboard is built on its first request: its routes (and Jinja2) are a fifth of a cold
    # start, and API calls, the bulk of all invocations, never need them.
    app.router.routes.append(Route("/dashboard{rest:path}", LazyDashboard(app), include_in_schema=False))
    app.add_middleware(BodyLimit, limit_for=body_limits(settings))
    return app


def body_limits(settings: Settings) -> Callable[[str], int]:
    """The most any route on a path reads; each route still applies its own limit."""
    api = max(routes_jobs.batch_body_limit(settings), routes_admin.REPLAY_BODY_LIMIT)

    def limit_for(path: str) -> int:
        if path == "/dashboard/login":
            return 4096  # a token and a `next` path, 1000 characters each at most
        if path.startswith("/dashboard"):
            return 64 * 1024  # the largest form is a replay of 500 ids
        if path.startswith("/api/workers"):
            return WORKER_BODY_LIMIT
        return api

    return limit_for
