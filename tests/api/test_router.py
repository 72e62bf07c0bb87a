"""`jobqueue.web.router()` included in an app of the user's own, under a prefix: the API and the
worker route find their engine without `app.state`, keep their error shape (and leave the host's
alone), two routers keep their own settings; the dashboard's links, cookie, redirects, assets and
actions follow the prefix; QStash signatures and kicks use the prefix's public URL; and the
router's lifespan (or `close()`) closes what it built."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import APIRouter, FastAPI

import jobqueue.web
from jobqueue.client import enqueue as enqueue_in_process
from jobqueue.engine import JobQueue
from jobqueue.registry import Registry
from jobqueue.settings import Settings
from jobqueue.web.kick import qstash_kicker

from .conftest import API_TOKEN, APP_SETTINGS, AUTH, WORKER_AUTH, sign_qstash

ORIGIN = {"Origin": "http://testserver"}


def host_with(*routers: tuple[str, APIRouter]) -> FastAPI:
    host = FastAPI(title="my app")

    @host.get("/")
    async def home() -> dict[str, str]:
        return {"hello": "world"}

    for prefix, r in routers:
        host.include_router(r, prefix=prefix)
    return host


@pytest.fixture
async def mounted(jq: JobQueue) -> AsyncIterator[httpx.AsyncClient]:
    host = host_with(("/jobs", jobqueue.web.router(jq=jq)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=host), base_url="http://testserver") as c:
        yield c


async def test_the_api_works_under_a_prefix_with_its_error_shape(mounted: httpx.AsyncClient, jq: JobQueue) -> None:
    r = await mounted.post(
        "/jobs/api/jobs", json={"type": "strict", "payload": {"n": 3}, "priority": "high"}, headers=AUTH
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["priority"] == 7
    drained = await mounted.post("/jobs/api/workers", headers=WORKER_AUTH)
    assert drained.status_code == 200 and drained.json()["completed"] == 1
    r = await mounted.get(f"/jobs/api/jobs/{job['id']}", headers=AUTH)
    assert (r.json()["status"], r.json()["result"]) == ("completed", 3)
    assert (await mounted.get("/jobs/api/health")).json()["status"] == "ok"
    # Our errors keep their shape in an app that installed none of our handlers...
    r = await mounted.get("/jobs/api/jobs/999", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    r = await mounted.get("/jobs/api/jobs?limit=0", headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["field"] == "limit"
    r = await mounted.post("/jobs/api/jobs", json={"type": "nope"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"] == {
        "code": "invalid_job",
        "message": "unknown job type 'nope'",
        "field": "type",
    }
    r = await mounted.get("/jobs/api/queues")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    # ... and leave the host's own routes and errors alone.
    assert (await mounted.get("/")).json() == {"hello": "world"}
    assert (await mounted.get("/nope")).json() == {"detail": "Not Found"}


async def test_two_routers_in_one_app_keep_their_own_settings(make_jq: Callable[..., JobQueue]) -> None:
    other_token = "another-api-token-0123456789abcdef"
    a = jobqueue.web.router(jq=make_jq(**APP_SETTINGS))
    b = jobqueue.web.router(jq=make_jq(**{**APP_SETTINGS, "JOBS_API_TOKEN": other_token}))
    host = host_with(("/a", a), ("/b", b))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=host), base_url="http://testserver") as c:
        assert (await c.get("/a/api/jobs", headers=AUTH)).status_code == 200
        assert (await c.get("/b/api/jobs", headers=AUTH)).status_code == 401
        assert (await c.get("/b/api/jobs", headers={"Authorization": f"Bearer {other_token}"})).status_code == 200


async def test_in_process_enqueue_through_the_router(jq: JobQueue) -> None:
    jobs = jobqueue.web.router(jq=jq)
    job = await enqueue_in_process(jobs, "echo", {"n": 1}, priority="low")
    assert (job["type"], job["priority"]) == ("echo", 2)


def _links(page: str) -> list[str]:
    return re.findall(r'(?:href|action|src)="([^"]+)"', page)


async def test_the_dashboard_works_under_a_prefix(mounted: httpx.AsyncClient, jq: JobQueue) -> None:
    failed = (await mounted.post("/jobs/api/jobs", json={"type": "boom", "payload": {}}, headers=AUTH)).json()["id"]
    await jq.drain(5)
    r = await mounted.get("/jobs/dashboard/dlq")
    assert (r.status_code, r.headers["location"]) == (303, "/jobs/dashboard/login?next=%2Fjobs%2Fdashboard%2Fdlq")
    page = (await mounted.get(r.headers["location"])).text
    assert 'action="/jobs/dashboard/login"' in page
    css = next(u for u in _links(page) if "dashboard.css" in u)
    assert css.startswith("/jobs/dashboard/static/") and (await mounted.get(css)).status_code == 200

    # Log in, following `next` within the mounted dashboard only.
    r = await mounted.post("/jobs/dashboard/login", data={"token": API_TOKEN, "next": "/dashboard/dlq"})
    assert (r.status_code, r.headers["location"]) == (303, "/jobs/dashboard")  # not the unprefixed path
    r = await mounted.post("/jobs/dashboard/login", data={"token": API_TOKEN, "next": "/jobs/dashboard/dlq"})
    assert (r.status_code, r.headers["location"]) == (303, "/jobs/dashboard/dlq")
    assert "Path=/jobs/dashboard;" in r.headers["set-cookie"] or r.headers["set-cookie"].endswith(
        "Path=/jobs/dashboard"
    )

    # A page: every link, form and asset stays under the prefix.
    page = (await mounted.get("/jobs/dashboard/dlq")).text
    links = [u for u in _links(page) if u != "data:,"]
    assert links and all(u.startswith("/jobs/dashboard") for u in links), links
    assert f'href="/jobs/dashboard/jobs/{failed}"' in page
    csrf = re.findall(r'name="csrf" value="([^"]+)"', page)[0]

    # Actions: a confirmation, then the action and its redirect, all under the prefix.
    r = await mounted.post(f"/jobs/dashboard/jobs/{failed}/retry", data={"csrf": csrf}, headers=ORIGIN)
    assert r.status_code == 200 and f'action="/jobs/dashboard/jobs/{failed}/retry"' in r.text
    assert f'href="/jobs/dashboard/jobs/{failed}"' in r.text  # "Go back"
    r = await mounted.post(
        f"/jobs/dashboard/jobs/{failed}/retry", data={"csrf": csrf, "confirm": "yes"}, headers=ORIGIN
    )
    assert (r.status_code, r.headers["location"]) == (303, f"/jobs/dashboard/jobs/{failed}?msg=retried")
    assert (await jq.get(failed))["status"] == "pending"
    r = await mounted.post("/jobs/dashboard/queues/default/pause", data={"csrf": csrf}, headers=ORIGIN)
    assert (r.status_code, r.headers["location"]) == (303, "/jobs/dashboard?msg=paused&q=default")
    overview = await mounted.get(r.headers["location"])
    assert overview.status_code == 200 and "Queue default is paused" in overview.text
    assert await jq.broker.paused() == {"default"}

    # Logging out clears the prefixed cookie.
    r = await mounted.post("/jobs/dashboard/logout", data={"csrf": csrf}, headers=ORIGIN)
    assert (r.status_code, r.headers["location"]) == (303, "/jobs/dashboard/login?msg=loggedout")
    assert "Path=/jobs/dashboard" in r.headers["set-cookie"] and "Max-Age=0" in r.headers["set-cookie"]
    assert (await mounted.get("/jobs/dashboard/jobs")).status_code == 303


async def test_the_mounted_dashboard_bounds_bodies(mounted: httpx.AsyncClient) -> None:
    r = await mounted.post(
        "/jobs/dashboard/login", content=b"x", headers={"Content-Length": str(50 * 1024 * 1024), **ORIGIN}
    )
    assert r.status_code == 413


async def test_a_mounted_worker_route_checks_qstash_against_the_prefix_url(make_jq: Callable[..., JobQueue]) -> None:
    public = "https://myapp.example.test/jobs"  # JOBQUEUE_PUBLIC_URL: where the router is mounted
    settings = {**APP_SETTINGS, "JOBQUEUE_PUBLIC_URL": public, "QSTASH_TOKEN": "qstash-token"}
    jq = make_jq(**settings)
    host = host_with(("/jobs", jobqueue.web.router(jq=jq)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=host), base_url="http://testserver") as c:
        r = await c.post("/jobs/api/workers", headers={"Upstash-Signature": sign_qstash(url=f"{public}/api/workers")})
        assert r.status_code == 200, r.text
        r = await c.post("/jobs/api/workers", headers={"Upstash-Signature": sign_qstash(url=f"{public}/x/api/workers")})
        assert r.status_code == 401
    kicker = qstash_kicker(Settings(**settings))
    assert kicker is not None and getattr(kicker, "target_url", None) == f"{public}/api/workers"  # the same URL


async def test_the_router_closes_what_it_built(
    database_url: str, redis_server: str, prefix: str, registry: Registry
) -> None:
    settings = Settings(DATABASE_URL=database_url, REDIS_URL=redis_server, JOBQUEUE_PREFIX=prefix, **APP_SETTINGS)
    jobs = jobqueue.web.router(settings, registry=registry)
    host = host_with(("/jobs", jobs))

    async def enqueue(app: FastAPI) -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
            r = await c.post("/jobs/api/jobs", json={"type": "echo", "payload": {}}, headers=AUTH)
            assert r.status_code == 201, r.text

    # include_router merged the router's lifespan into the host's: shutdown closes the engine.
    async with host.router.lifespan_context(host):
        await enqueue(host)
        assert jobs.resources.built is not None
    assert jobs.resources.built is None
    # Without a lifespan: close() explicitly (twice is harmless).
    await enqueue(host)
    assert jobs.resources.built is not None
    await jobqueue.web.close(jobs)
    await jobqueue.web.close(jobs)
    assert jobs.resources.built is None
    # Or as the app's own lifespan.
    own = FastAPI(lifespan=jobs.lifespan)
    async with own.router.lifespan_context(own):
        await enqueue(host)
    assert jobs.resources.built is None
    with pytest.raises(TypeError, match="router\\(\\) answered"):
        await jobqueue.web.close(APIRouter())


async def test_an_injected_engine_is_left_open(jq: JobQueue) -> None:
    jobs = jobqueue.web.router(jq=jq)
    host = host_with(("/jobs", jobs))
    async with host.router.lifespan_context(host):
        pass
    await jobqueue.web.close(jobs)
    assert jobs.resources.built is jq and await jq.list_jobs() == ([], None)
