"""The application shell: lazy resources across lifespans (Mangum runs one per invocation), the
cheap import Vercel pays on every cold start, the docs, and the error shape of unknown routes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
from fastapi import FastAPI

from jobqueue.engine import JobQueue
from jobqueue.registry import Registry
from jobqueue.settings import Settings
from jobqueue.web.app import create_app

from .conftest import APP_SETTINGS, AUTH

# What `import api.index` must not pull in: a request that does not need them must not pay.
LAZY_MODULES = [
    "asyncpg",
    "redis",
    "upstash_redis",
    "httpx",
    "jwt",
    "qstash",
    "jinja2",
    "jobqueue.engine",
    "jobqueue.store",
    "jobqueue.transports",
    "handlers",
    "jobqueue.builtins",
]


def test_import_api_index_stays_lazy() -> None:
    code = f"import sys, api.index; print([m for m in {LAZY_MODULES!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


async def test_engine_is_built_on_first_use_and_closed_at_shutdown(
    database_url: str, redis_server: str, prefix: str, registry: Registry, make_client: Callable[[FastAPI], Any]
) -> None:
    settings = Settings(DATABASE_URL=database_url, REDIS_URL=redis_server, JOBQUEUE_PREFIX=prefix, **APP_SETTINGS)
    app = create_app(settings, registry=registry)
    res = app.state.resources
    for _ in range(2):  # two invocations, as Mangum runs them: startup, request, shutdown
        async with app.router.lifespan_context(app):
            assert res.built is None
            async with make_client(app) as c:
                assert (await c.get("/api/health")).status_code == 200
                r = await c.post("/api/jobs", json={"type": "strict", "payload": {"n": 1}}, headers=AUTH)
                assert r.status_code == 201, r.text
            assert res.built is not None and res.built.registry is registry
        assert res.built is None
    async with make_client(app) as c:
        jobs = (await c.get("/api/jobs", headers=AUTH)).json()["jobs"]
    assert [j["type"] for j in jobs] == ["strict", "strict"]
    await res.close()


async def test_registry_defaults_to_the_settings_spec(
    database_url: str, redis_server: str, prefix: str, make_client: Callable[[FastAPI], Any]
) -> None:
    settings = Settings(DATABASE_URL=database_url, REDIS_URL=redis_server, JOBQUEUE_PREFIX=prefix, **APP_SETTINGS)
    app = create_app(settings)
    async with app.router.lifespan_context(app), make_client(app) as c:
        assert (await c.post("/api/jobs", json={"type": "echo", "payload": {}}, headers=AUTH)).status_code == 201
        r = await c.post("/api/jobs", json={"type": "strict", "payload": {"n": 1}}, headers=AUTH)
        assert r.status_code == 422  # "strict" is a test type, not in handlers:default_registry


async def test_an_injected_engine_is_left_open(jq: JobQueue, app: FastAPI, make_client: Any) -> None:
    async with app.router.lifespan_context(app):
        pass
    assert app.state.resources.built is jq
    assert await jq.list_jobs() == ([], None)  # still usable


async def test_docs_and_openapi(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/api/openapi.json")).json()  # no credentials: the docs need it
    assert spec["info"]["title"] == "jobqueue"
    enqueue = spec["paths"]["/api/jobs"]["post"]
    assert set(enqueue["responses"]) == {"200", "201", "401", "403", "413", "422", "429", "503"}
    body = enqueue["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/EnqueueRequest"}  # named (tests/api/test_openapi.py)
    assert "$defs" not in str(spec)
    assert (await client.get("/api/docs")).status_code == 200


async def test_unknown_routes_and_methods_answer_the_error_shape(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/nope", headers=AUTH)
    assert (r.status_code, r.json()) == (404, {"error": {"code": "not_found", "message": "Not Found"}})
    r = await client.put("/api/jobs", headers=AUTH)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in r.headers["allow"]
