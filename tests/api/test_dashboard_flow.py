"""The dashboard's flow-control and schedule surfaces over the real engine: each queue card's
limits with its running and parked jobs, the settings form (saves, clears, keeps what it does not
send, refuses a bad value naming it and changing nothing), and the Schedules page (timing, next and
last run, the last job linked with its status, pause, resume, and trigger through its
confirmation), with hostile ids, payloads and queue names shown as text. The CSRF and origin
refusals of these forms are in test_dashboard.py's action matrix."""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue
from jobqueue.registry import JobContext, Registry

from .test_dashboard import XSS, enqueue, field, login, metric, with_dashboard

ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"


@pytest.fixture
async def dash(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=with_dashboard(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def inputs(page: str, queue: str) -> dict[str, str]:
    """The settings form's prefilled values for one queue."""
    found = re.findall(rf'id="{re.escape(queue)}-([a-z_]+)" name="\1" value="([^"]*)"', page)
    return {name: html.unescape(value) for name, value in found}


async def test_a_queue_card_shows_limits_running_and_parked_jobs(
    dash: httpx.AsyncClient, jq: JobQueue, registry: Registry
) -> None:
    gate = asyncio.Event()

    @registry.job("hold", timeout_ms=30_000)
    async def hold(payload: dict[str, Any], ctx: JobContext) -> None:
        await gate.wait()

    await jq.set_queue_settings(
        "default",
        {"concurrency": 6, "rate": {"limit": 20, "period_ms": 1000, "burst": 5}, "group_concurrency": 1},
    )
    await jq.enqueue_many([{"type": "hold", "payload": {}, "group": g} for g in ("acme", "acme", "acme", "globex")])
    await login(dash)
    page = (await dash.get("/dashboard")).text
    assert metric(page, "queue:default:running") == "0 / 6" and metric(page, "queue:default:parked") == "0"
    assert metric(page, "queue:default:rate") == "20 per 1 s, burst 5"
    assert metric(page, "queue:default:group") == "1 at once"
    drain = asyncio.create_task(jq.drain(20))
    try:
        for _ in range(500):
            page = (await dash.get("/dashboard")).text
            if metric(page, "queue:default:parked") == "2":
                break
            await asyncio.sleep(0.01)
        assert metric(page, "queue:default:running") == "2 / 6"
        acme = "g:" + hashlib.sha256(b"acme").hexdigest()[:12]
        assert metric(page, f"queue:default:parked:{acme}") == "2"
        assert f"group {acme[2:]}" in page and "Waiting on a limit" in page
        assert metric(page, "queue:default:gated") == "— (now)"  # gated since this instant
        jq.clock.advance(1500)  # type: ignore[attr-defined]  # (within the leases: nothing is recovered)
        page = (await dash.get("/dashboard")).text
        assert metric(page, "queue:default:gated").endswith("(now)")
        assert metric(page, "queue:default:gated") != "— (now)"
    finally:
        gate.set()
        done = (await drain).completed
    while done < 4:
        done += (await jq.drain(5)).completed
    page = (await dash.get("/dashboard")).text
    assert metric(page, "queue:default:parked") == "0" and "Waiting on a limit" not in page
    assert not metric(page, "queue:default:gated").endswith("(now)")


async def test_the_settings_form_saves_clears_keeps_and_refuses(dash: httpx.AsyncClient, jq: JobQueue) -> None:
    await jq.set_queue_settings(
        "default",
        {
            "defaults": {"max_attempts": 4, "backoff": {"type": "fixed", "delay_ms": 50}},
            "retention": {"completed": {"age_days": 2, "count": 500}},
        },
    )
    csrf = await login(dash)
    page = (await dash.get("/dashboard")).text
    shown = inputs(page, "default")
    assert shown == {
        "concurrency": "",
        "rate": "",
        "group_concurrency": "",
        "group_rate": "",
        "aging_ms": "",
        "max_attempts": "4",
        "timeout_ms": "",
        "retain_completed_days": "2",
        "retain_failed_days": "",
    }
    form = shown | {"concurrency": "5", "rate": "10/1000/3", "group_rate": "2/60000", "timeout_ms": "9000"}
    r = await dash.post("/dashboard/queues/default/settings", data={**form, "csrf": csrf})
    assert (r.status_code, r.headers["location"]) == (303, "/dashboard?msg=settings&q=default")
    saved = await jq.queue_settings("default")
    assert saved.model_dump(mode="json", exclude_none=True) == {
        "concurrency": 5,
        "rate": {"limit": 10, "period_ms": 1000, "burst": 3},
        "group_rate": {"limit": 2, "period_ms": 60000, "burst": 1},
        # what the form does not show (the backoff, the retention count) is kept
        "defaults": {
            "max_attempts": 4,
            "timeout_ms": 9000,
            "backoff": {"type": "fixed", "delay_ms": 50, "max_delay_ms": 3_600_000, "jitter": 0.0},
        },
        "retention": {"completed": {"age_days": 2.0, "count": 500}},
    }
    page = (await dash.get(r.headers["location"])).text
    assert "Queue default&#39;s settings are saved" in page
    assert (
        metric(page, "queue:default:running") == "0 / 5" and metric(page, "queue:default:rate") == "10 per 1 s, burst 3"
    )
    assert inputs(page, "default")["rate"] == "10/1000/3"

    # An empty field clears; a field left out of the post keeps its value.
    r = await dash.post("/dashboard/queues/default/settings", data={"csrf": csrf, "rate": "", "max_attempts": ""})
    assert r.status_code == 303
    saved = await jq.queue_settings("default")
    assert (saved.rate, saved.concurrency, saved.defaults and saved.defaults.max_attempts) == (None, 5, None)

    before = saved
    for bad, name in (
        ({"concurrency": "-1"}, "concurrency"),
        ({"concurrency": "lots"}, "concurrency"),
        ({"rate": "10/0"}, "rate.period_ms"),
        ({"group_rate": "fast"}, "group_rate"),
        ({"max_attempts": "500"}, "defaults.max_attempts"),
        ({"retain_failed_days": "-3"}, "retention.failed.age_days"),
        ({"concurrency": "4", "aging_ms": "0"}, "aging_ms"),
    ):
        r = await dash.post("/dashboard/queues/default/settings", data={"csrf": csrf, **bad})
        assert r.status_code == 422 and "Invalid request" in r.text, bad
        assert f"{name}:" in html.unescape(r.text), (bad, r.text)
        assert await jq.queue_settings("default") == before, bad
    r = await dash.post("/dashboard/queues/a b/settings", data={"csrf": csrf, "concurrency": "1"})
    assert r.status_code == 422


async def test_the_schedules_page_shows_timing_runs_and_the_last_job(
    dash: httpx.AsyncClient, jq: JobQueue, clock: FakeClock
) -> None:
    await jq.schedules.put("hourly-sync", {"type": "echo", "every_ms": 3_600_000, "payload": {"full": True}})
    await jq.schedules.put(
        "nightly-report", {"type": "echo", "cron": "30 2 * * *", "tz": "Europe/Lisbon", "queue": "reports"}
    )
    await jq.schedules.put("dormant", {"type": "echo", "every_ms": 60_000, "paused": True})
    await login(dash)
    page = (await dash.get("/dashboard/schedules")).text
    assert 'aria-current="page">Schedules<' in page and metric(page, "schedules:total") == "3"
    assert re.findall(r'data-schedule-id="([^"]+)"', page) == ["dormant", "hourly-sync", "nightly-report"]
    assert metric(page, "schedule:dormant:state") == "paused" and metric(page, "schedule:hourly-sync:state") == "active"
    assert "every 60 min" in page and "cron 30 2 * * * (Europe/Lisbon)" in page and "queue reports" in page
    assert "none yet" in page and "{&#34;full&#34;: true}" in page
    nightly = await jq.schedules.get("nightly-report")
    assert nightly.next_run_at.strftime("%Y-%m-%d %H:%M:%S UTC") in page

    # a tick fires: its job is the last job, linked with its status, and the last run is shown
    clock.advance(seconds=3600)
    await jq.drain(5)
    await jq.drain(5)
    hourly = await jq.schedules.get("hourly-sync")
    assert hourly.last_job_id is not None and hourly.last_run_at is not None
    page = (await dash.get("/dashboard/schedules")).text
    row = re.search(r'data-schedule-id="hourly-sync">(.*?)</tr>', page, re.DOTALL)
    assert row is not None
    assert f'href="/dashboard/jobs/{hourly.last_job_id}" data-field="last_job">#{hourly.last_job_id}</a>' in row[1]
    assert 'class="badge badge-completed">completed<' in row[1]
    assert hourly.last_run_at.strftime("%Y-%m-%d %H:%M:%S UTC") in row[1]


async def test_schedule_pause_resume_and_trigger_from_the_dashboard(dash: httpx.AsyncClient, jq: JobQueue) -> None:
    await jq.schedules.put("hourly-sync", {"type": "echo", "every_ms": 3_600_000, "queue": "sync"})
    next_tick = (await jq.schedules.get("hourly-sync")).next_run_at
    csrf = await login(dash)
    page = (await dash.get("/dashboard/schedules")).text
    assert 'action="/dashboard/schedules/hourly-sync/pause"' in page
    assert 'action="/dashboard/schedules/hourly-sync/trigger"' in page

    r = await dash.post("/dashboard/schedules/hourly-sync/pause", data={"csrf": csrf})
    assert (r.status_code, r.headers["location"]) == (303, "/dashboard/schedules?msg=schedule_paused&s=hourly-sync")
    assert (await jq.schedules.get("hourly-sync")).paused is True
    page = (await dash.get(r.headers["location"])).text
    assert "Schedule hourly-sync is paused" in page and metric(page, "schedule:hourly-sync:state") == "paused"
    assert 'action="/dashboard/schedules/hourly-sync/resume"' in page
    r = await dash.post("/dashboard/schedules/hourly-sync/resume", data={"csrf": csrf})
    assert r.headers["location"] == "/dashboard/schedules?msg=schedule_resumed&s=hourly-sync"
    assert (await jq.schedules.get("hourly-sync")).paused is False

    r = await dash.post("/dashboard/schedules/hourly-sync/trigger", data={"csrf": csrf})
    assert r.status_code == 200 and "Run schedule hourly-sync now?" in r.text and "queue sync" in r.text
    assert '<input type="hidden" name="confirm" value="yes">' in r.text
    assert (await jq.list_jobs(schedule_id="hourly-sync"))[0] == []  # nothing ran yet
    r = await dash.post("/dashboard/schedules/hourly-sync/trigger", data={"csrf": csrf, "confirm": "yes"})
    [job], _ = await jq.list_jobs(schedule_id="hourly-sync")
    assert (r.status_code, r.headers["location"]) == (303, f"/dashboard/jobs/{job['id']}?msg=triggered&s=hourly-sync")
    assert (job["queue"], job["status"]) == ("sync", "pending")
    page = (await dash.get(r.headers["location"])).text
    assert "Schedule hourly-sync enqueued this job now" in page
    assert (await jq.schedules.get("hourly-sync")).next_run_at == next_tick  # the tick is unchanged

    for action in ("pause", "resume", "trigger"):
        r = await dash.post(f"/dashboard/schedules/nope/{action}", data={"csrf": csrf, "confirm": "yes"})
        assert r.status_code == 404 and "schedule &#39;nope&#39; not found" in r.text, action
    r = await dash.post("/dashboard/schedules/bad id/pause", data={"csrf": csrf})
    assert r.status_code == 422
    assert "Schedule ? is paused" in (await dash.get("/dashboard/schedules?msg=schedule_paused&s=<b>")).text


async def test_hostile_schedule_ids_payloads_and_queue_names_render_as_text(
    dash: httpx.AsyncClient, jq: JobQueue, clock: FakeClock
) -> None:
    await jq.schedules.put("xss", {"type": "echo", "every_ms": 60_000, "payload": {"html": XSS, XSS: XSS}})
    # Names the API refuses, written straight into Postgres (another tool, an older version); a
    # schedule's queue is checked again when it is read, so only its id and type can be hostile.
    conn = await asyncpg.connect(jq.settings.database_url)
    try:
        await conn.execute(
            "INSERT INTO schedules (id, type, payload, every_ms, next_run_at) VALUES ($1, $2, $3::jsonb, 60000, $4)",
            XSS,
            XSS,
            json.dumps({"k": XSS}),
            clock.now() + timedelta(minutes=1),
        )
        await conn.execute(
            "INSERT INTO queues (name, settings) VALUES ($1, $2::jsonb)", XSS, json.dumps({"concurrency": 2})
        )
    finally:
        await conn.close()
    await enqueue(dash, payload={"x": XSS})
    await login(dash)
    for path in ("/dashboard/schedules", "/dashboard"):
        page = (await dash.get(path)).text
        assert "<script>alert(1)" not in page and "<img src=x" not in page, path
        assert ESCAPED in page, path
    page = (await dash.get("/dashboard/schedules")).text
    assert page.count(ESCAPED) >= 4  # the id, the type, the payloads
    assert html.unescape(field(page, "timing")) in ("every 60 s", "every 1 min")
