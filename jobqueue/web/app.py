"""`create_app()`: the FastAPI application over one JobQueue (this repository's `api/index.py`).

The same routes as `router()` (web/mount.py), included into the app directly (the app's state
holds the Resources, so no binding dependency is needed; and FastAPI builds a nested router's
routes once more at include time, which a cold start would pay for), plus what a whole app adds:
the error handlers for paths no route matched, the body-size middleware, and the documentation
(`/api/openapi.json`, completed by web/openapi.py, and Swagger UI at `/api/docs`, served from the
app itself by web/docs.py).

Resources are lazy (see `deps.Resources`): the engine is built by the first request that needs
it and closed at lifespan shutdown. That suits both hosts: Vercel runs uvicorn with
`lifespan="auto"` (startup once per instance, shutdown at exit), and Mangum runs startup and
shutdown around every invocation, so a per-invocation engine is simply rebuilt on demand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

from fastapi import FastAPI

from jobqueue.settings import Settings

from . import docs, routes_admin, routes_jobs
from .auth import WORKER_BODY_LIMIT, WORKERS_PATH
from .dashboard_auth import COOKIE_PATH
from .deps import BodyLimit, Resources
from .http_errors import install_error_handlers
from .kick import qstash_kicker
from .mount import API_ROUTERS, DASHBOARD_ROUTE, LazyDashboard, dashboard_body_limit
from .openapi import install_openapi

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
        docs_url=None,  # docs.router serves Swagger UI from the app, not from a CDN
        redoc_url=None,
        openapi_url=docs.OPENAPI_PATH,
        lifespan=lifespan,
    )
    app.state.resources = res
    install_error_handlers(app)
    for sub in API_ROUTERS:
        app.include_router(sub)
    # The dashboard is built on its first request (see mount.LazyDashboard).
    app.add_route(DASHBOARD_ROUTE, cast(Any, LazyDashboard(res)), include_in_schema=False)
    app.include_router(docs.router)
    install_openapi(app, res)
    app.add_middleware(BodyLimit, limit_for=body_limits(settings))
    return app


def body_limits(settings: Settings) -> Callable[[str], int]:
    """The most any route on a path reads; each route still applies its own limit."""
    api = max(routes_jobs.batch_body_limit(settings), routes_admin.REPLAY_BODY_LIMIT)

    def limit_for(path: str) -> int:
        if path.startswith(COOKIE_PATH):
            return dashboard_body_limit(path)
        if path.startswith(WORKERS_PATH):
            return WORKER_BODY_LIMIT
        return api

    return limit_for
