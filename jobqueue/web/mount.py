"""`router()`: every jobqueue route (the API, `/api/workers`, `/api/health` and the dashboard) as
one APIRouter, to include in a FastAPI app you already have, under a prefix or not:

    jobs = jobqueue.web.router(registry="myapp.jobs:registry")
    app.include_router(jobs, prefix="/jobs")  # /jobs/api/jobs, /jobs/api/workers, /jobs/dashboard

How the routes find their engine without `app.state`: the router's first dependency
(`deps.BindResources`) puts its Resources on `request.state`, and `deps.resources()` looks there
first; FastAPI solves a route's dependencies in order, the router's before the routes' own (the
credential checks). Errors keep their `{"error": ...}` shape through `http_errors.ApiRoute`.

The dashboard is one catch-all route, `/dashboard{rest:path}`, handed to a small FastAPI app
built on its first request (its routes and Jinja2 are a fifth of a cold start, and API calls, the
bulk of all invocations, never need them). It is told where it is mounted through the ASGI
`root_path` (the prefix is appended), and builds its links, redirects, cookie path and asset URLs
from that (`dashboard_auth.base_path`).

Closing: the router has a lifespan that closes the engine it built, and FastAPI merges an
included router's lifespan into the app's, so `app.include_router(jobs)` wires it in. An app that
runs no lifespan (or wants its own order) calls `await jobqueue.web.close(jobs)` at shutdown;
`jobs.lifespan` also works as `FastAPI(lifespan=jobs.lifespan)`. Closing twice is harmless.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

from fastapi import APIRouter, Depends, FastAPI
from starlette.datastructures import State
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from jobqueue.settings import Settings

from . import routes_admin, routes_jobs, routes_metrics, routes_schedules, routes_workers
from .dashboard_auth import COOKIE_PATH
from .deps import BindResources, BodyLimit, Resources, route_path
from .kick import qstash_kicker

if TYPE_CHECKING:
    from jobqueue.engine import JobQueue
    from jobqueue.registry import RegistrySource

DASHBOARD_ROUTE = COOKIE_PATH + "{rest:path}"
# Every API router, in matching order (create_app() includes the same ones).
API_ROUTERS: tuple[APIRouter, ...] = (
    routes_jobs.enqueue_router,
    routes_jobs.router,
    routes_workers.router,
    routes_admin.dlq,
    routes_admin.queues,
    routes_admin.health,
    routes_metrics.router,
    routes_schedules.router,
)


def dashboard_body_limit(path: str) -> int:
    if path == f"{COOKIE_PATH}/login":
        return 4096  # a token and a `next` path, 1000 characters each at most
    return 64 * 1024  # the largest form is a replay of 500 ids


class LazyDashboard:
    """An ASGI app that builds the dashboard (a FastAPI app over these Resources) the first time
    a dashboard path is requested, then hands every such request to it, with `root_path`
    extended by the prefix the route was mounted under."""

    def __init__(self, res: Resources) -> None:
        self._res = res
        self._app: ASGIApp | None = None

    def build(self) -> ASGIApp:
        if self._app is None:
            from . import dashboard

            sub = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
            sub.state.resources = self._res
            sub.include_router(dashboard.router)
            # Forms are parsed before any dependency runs: bound them here, wherever this is mounted.
            self._app = BodyLimit(sub, limit_for=dashboard_body_limit)
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.build()
        if scope["type"] == "http":
            rest = str(scope.get("path_params", {}).get("rest", ""))
            path = route_path(scope)
            # What the catch-all matched before its `{rest}`, less "/dashboard": the prefix.
            prefix = path[: len(path) - len(rest)].removesuffix(COOKIE_PATH)
            if prefix:
                scope = {**scope, "root_path": scope.get("root_path", "") + prefix}
        await app(scope, receive, send)


class JobQueueRouter(APIRouter):
    """The APIRouter `router()` answers: the routes, plus what the caller may need of them."""

    resources: Resources
    # `state.resources`, as on the app create_app() builds: `jobqueue.client.enqueue(router, ...)`
    # enqueues in-process through this router's engine.
    state: State
    lifespan: Any

    async def close(self) -> None:
        await self.resources.close()


def build_router(res: Resources) -> JobQueueRouter:
    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await res.close()

    r = JobQueueRouter(dependencies=[Depends(BindResources(res))], lifespan=lifespan)
    r.resources = res
    r.state = State({"resources": res})
    r.lifespan = lifespan
    for sub in API_ROUTERS:
        r.include_router(sub)
    r.add_route(DASHBOARD_ROUTE, cast(Any, LazyDashboard(res)), include_in_schema=False)
    return r


def router(
    settings: Settings | None = None, *, jq: JobQueue | None = None, registry: RegistrySource | None = None
) -> JobQueueRouter:
    """Every jobqueue route, to `app.include_router(...)` (with a prefix or not).

    As `create_app()`: `jq`, when given, is used as is and left open (its owner closes it);
    otherwise one is built from `settings` (default: the environment) on first use, with
    `registry` (a Registry, a function returning one, or its "module:callable" name) or the one
    JOBQUEUE_REGISTRY names. Under a prefix, set JOBQUEUE_PUBLIC_URL to the prefix's public URL
    (`https://myapp.example/jobs`): QStash kicks go to its `/api/workers`, and signatures are
    checked against it."""
    if settings is None:
        settings = jq.settings if jq is not None else Settings()
    res = Resources(settings, jq, registry)
    res.kicker = qstash_kicker(settings)
    return build_router(res)


def effective_routes(routes: Sequence[BaseRoute]) -> Iterable[Any]:
    """Every route an app serves, with its full path: FastAPI 0.165 keeps an included router as
    one entry (its routes are reached through `iter_route_contexts`); older ones copy the routes."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - FastAPI before 0.165
        return routes
    return iter_route_contexts(routes)


async def close(router: APIRouter) -> None:
    """Close the engine a `router()` built (a no-op for an engine handed in, or already closed)."""
    if not isinstance(router, JobQueueRouter):
        raise TypeError(f"close() takes the router jobqueue.web.router() answered, not {type(router).__name__}")
    await router.close()
