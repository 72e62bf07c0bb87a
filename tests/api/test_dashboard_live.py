"""The dashboard keeps up: progress bars (a native <progress>, no inline style) on the job page and
the jobs list, live while the job runs and kept after it; a follow-up links to the job that made
it; hostile progress text renders as text; the overview, jobs and job pages say how often they
refresh themselves (dashboard.js), with the toggle, and the CSP lets the script fetch only us."""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from jobqueue.engine import JobQueue
from jobqueue.registry import JobContext, Registry
from jobqueue.web.app import create_app
from jobqueue.web.dashboard_render import CSP

from .conftest import APP_SETTINGS
from .test_dashboard import XSS, login, with_dashboard

CALLBACK = "https://cb.invalid/?q=<script>alert(1)</script>"
ESCAPED = html.escape(XSS, quote=True).replace("&#x27;", "&#39;").replace("&quot;", "&#34;")


@pytest.fixture
def jq(make_jq: Callable[..., JobQueue]) -> JobQueue:
    return make_jq(**APP_SETTINGS, JOBQUEUE_HEARTBEAT_MS=20)


@pytest.fixture
def gate(registry: Registry) -> dict[str, asyncio.Event]:
    state = {"go": asyncio.Event(), "reported": asyncio.Event()}

    @registry.job("report")
    async def report(payload: dict[str, Any], ctx: JobContext) -> str:
        await ctx.progress(42, XSS, {XSS: [XSS]})
        state["reported"].set()
        await state["go"].wait()
        await ctx.progress(100, "done")
        return "ok"

    @registry.job("parent")
    async def parent(payload: dict[str, Any], ctx: JobContext) -> int:
        return (await ctx.enqueue({"type": "echo", "callback_url": CALLBACK})).id

    return state


@pytest.fixture
async def dash(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=with_dashboard(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        await login(c)
        yield c


def bar(page: str) -> list[str]:
    return re.findall(r'<progress max="100" value="([^"]+)">', page)


async def test_progress_bars_move_and_hostile_text_renders_as_text(
    dash: httpx.AsyncClient, jq: JobQueue, gate: dict[str, asyncio.Event]
) -> None:
    row, _ = await jq.enqueue({"type": "report"})
    drain = asyncio.create_task(jq.drain(10))
    await gate["reported"].wait()
    await asyncio.sleep(0.15)  # heartbeats write the report to Redis
    running = (await dash.get(f"/dashboard/jobs/{row['id']}")).text
    listed = (await dash.get("/dashboard/jobs")).text
    gate["go"].set()
    await drain
    finished = (await dash.get(f"/dashboard/jobs/{row['id']}")).text

    assert bar(running) == ["42"] and bar(listed) == ["42"]
    assert "while it runs" in running
    assert bar(finished) == ["100"] and 'data-field="progress-message">done<' in finished
    for page in (running, listed):
        assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert f'data-field="progress-message">{ESCAPED}<' in running
    data = re.search(r'data-field="progress-data">(.*?)</pre>', running, re.S)
    assert data is not None and json.loads(html.unescape(data.group(1))) == {XSS: [XSS]}
    assert " style=" not in running and "<script>" not in running.replace(
        '<script src="/dashboard/static/dashboard.js', ""
    )


async def test_a_follow_up_links_to_the_job_that_created_it(
    dash: httpx.AsyncClient, jq: JobQueue, gate: dict[str, asyncio.Event]
) -> None:
    row, _ = await jq.enqueue({"type": "parent"})
    await jq.drain(5)
    child = (await jq.get(row["id"]))["result"]
    page = (await dash.get(f"/dashboard/jobs/{child}")).text
    assert f'data-field="created-by" href="/dashboard/jobs/{row["id"]}">#{row["id"]}</a>' in page
    assert 'data-field="callback-url">https://cb.invalid/?q=&lt;script&gt;alert(1)&lt;/script&gt;<' in page
    assert "<script>alert(1)" not in page
    listed = (await dash.get("/dashboard/jobs")).text
    assert f'from <a href="/dashboard/jobs/{row["id"]}">#{row["id"]}</a>' in listed
    parent_page = (await dash.get(f"/dashboard/jobs/{row['id']}")).text
    assert 'data-field="created-by"' not in parent_page


async def test_pages_that_refresh_themselves_say_so(dash: httpx.AsyncClient, jq: JobQueue) -> None:
    row, _ = await jq.enqueue({"type": "echo"})
    for path in ("/dashboard", "/dashboard/jobs", f"/dashboard/jobs/{row['id']}"):
        r = await dash.get(path)
        assert '<main class="page" data-refresh="5">' in r.text, path
        assert "data-refresh-toggle" in r.text and 'aria-pressed="true" hidden>' in r.text, path
    for path in ("/dashboard/dlq", "/dashboard/schedules"):
        r = await dash.get(path)
        assert "data-refresh" not in r.text, path
    assert "connect-src 'self'" in CSP and r.headers["content-security-policy"] == CSP
    js = (await dash.get("/dashboard/static/dashboard.js")).text
    assert "data-refresh-toggle" in js and "localStorage" in js


async def test_refresh_can_be_turned_off_in_the_settings(
    make_jq: Callable[..., JobQueue], make_client: Callable[[FastAPI], httpx.AsyncClient]
) -> None:
    jq = make_jq(**APP_SETTINGS, JOBQUEUE_DASHBOARD_REFRESH_S=0)
    async with make_client(with_dashboard(create_app(jq=jq))) as c:
        await login(c)
        page = (await c.get("/dashboard")).text
    assert '<main class="page">' in page and "data-refresh" not in page
