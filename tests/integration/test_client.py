"""`jobqueue.client` against the real app (`create_app(jq=...)` over the real Postgres and Redis,
in-process): both HTTP clients across the whole API, and `enqueue()` in-process through a
JobQueue, the app, or a Request.

The async client runs over httpx's ASGI transport. The sync client cannot (that transport is
async only, and the engine's connection pool belongs to the test's event loop), so it runs in a
worker thread and each of its requests is handed to the ASGI transport on the test's loop
(`LoopTransport`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from jobqueue import PermanentError
from jobqueue.builtins import default_registry
from jobqueue.client import APIError, AsyncClient, Client, Job, enqueue
from jobqueue.client import models as m
from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue
from jobqueue.errors import InvalidJob
from jobqueue.registry import JobContext, Registry
from jobqueue.web.app import create_app
from tests.conftest import MakeJQ

API_TOKEN = "client-test-token-0123456789abcdef"
BASE = "http://jobqueue.test"
OnLoop = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture
def registry() -> Registry:
    reg = default_registry()

    @reg.job("boom", max_attempts=1)
    async def boom(payload: dict[str, Any], ctx: JobContext) -> None:
        raise PermanentError("boom")

    return reg


@pytest.fixture
def api_jq(make_jq: MakeJQ) -> JobQueue:
    return make_jq(JOBS_API_TOKEN=API_TOKEN)


@pytest.fixture
def app(api_jq: JobQueue) -> FastAPI:
    return create_app(jq=api_jq)


class LoopTransport(httpx.BaseTransport):
    """A sync transport that runs each request through the app on `loop` (from another thread)."""

    def __init__(self, app: FastAPI, loop: asyncio.AbstractEventLoop) -> None:
        self.asgi = httpx.ASGITransport(app=app)
        self.loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def run() -> httpx.Response:
            copy = httpx.Request(
                request.method,
                request.url,
                headers=request.headers,
                content=request.read(),
                extensions=request.extensions,
            )
            resp = await self.asgi.handle_async_request(copy)
            return httpx.Response(resp.status_code, headers=resp.headers, content=await resp.aread())

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=60)


async def in_thread(scenario: Callable[[OnLoop], None]) -> None:
    """Run a blocking scenario in a thread; it runs coroutines (drains) on this loop with `on_loop`."""
    loop = asyncio.get_running_loop()

    def on_loop(coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)

    await asyncio.to_thread(scenario, on_loop)


async def drain_soon(jq: JobQueue, delay_s: float = 0.3) -> int:
    await asyncio.sleep(delay_s)
    return (await jq.drain(5)).completed


# --- the async client ----------------------------------------------------------------------------


async def test_async_client_flow_of_children_and_parent(app: FastAPI, api_jq: JobQueue) -> None:
    async with AsyncClient(BASE, API_TOKEN, transport=httpx.ASGITransport(app=app)) as jobs:
        flow = await jobs.enqueue_many(
            [
                {"type": "echo", "payload": {"child": 0}},
                {"type": "echo", "payload": {"child": 1}},
                {"type": "echo", "payload": {"parent": 1}, "depends_on": [{"index": 0}, {"index": 1}]},
            ]
        )
        parent = flow[-1]
        assert (parent.status, parent.on_dependency_failure) == ("waiting", "fail")
        got = await jobs.get(parent.id)
        assert got.dependency_ids == [flow[0].id, flow[1].id]
        assert [d["status"] for d in got.depends_on] == ["pending", "pending"]
        assert (await jobs.get(flow[0].id)).dependent_ids == [parent.id]
        fl = await jobs.flow({"type": "echo", "payload": {"p": 2}}, [{"type": "echo", "payload": {"c": 9}}])
        assert [j.status for j in fl] == ["pending", "waiting"] and fl[1].dependency_ids == []
        assert (await jobs.get(fl[1].id)).dependency_ids == [fl[0].id]
        after = await jobs.enqueue("echo", {}, depends_on=[parent.id], on_dependency_failure="ignore")
        assert after.status == "waiting"
        await api_jq.drain(5)
        assert (await jobs.get(after.id)).status == "completed"
        with pytest.raises(APIError) as info:
            await jobs.enqueue("echo", {}, depends_on=[10**9])
        assert (info.value.status_code, info.value.code) == (422, "invalid_job")


async def test_async_client_jobs(app: FastAPI, api_jq: JobQueue) -> None:
    async with AsyncClient(BASE, API_TOKEN, transport=httpx.ASGITransport(app=app)) as jobs:
        one = await jobs.enqueue("echo", {"n": 1}, queue="emails", priority=8, idempotency_key="k1")
        assert isinstance(one, Job)
        assert (one.status, one.queue, one.priority, one.idempotency_key) == ("pending", "emails", 8, "k1")
        again = await jobs.enqueue("echo", {"n": 2}, queue="emails", idempotency_key="k1")
        assert (again.id, again.payload) == (one.id, {"n": 1})

        batch = await jobs.enqueue_many([{"type": "echo", "payload": {"i": i}, "priority": i} for i in range(3)])
        assert [(j.status, j.priority) for j in batch] == [("pending", 0), ("pending", 1), ("pending", 2)]
        later = await jobs.enqueue("echo", {}, delay_ms=3_600_000)
        assert later.status == "scheduled" and later.run_at is not None
        assert (await jobs.cancel(later.id)).status == "cancelled"
        with pytest.raises(APIError) as info:
            await jobs.cancel(later.id)
        assert (info.value.status_code, info.value.code) == (409, "invalid_state")

        # wait() long-polls while a drain runs beside it
        waiting = asyncio.create_task(jobs.wait(one.id, timeout=10))
        assert await drain_soon(api_jq) == 4
        done = await waiting
        assert (done.status, done.result, done.attempts, done.terminal) == ("completed", {"n": 1}, 1, True)
        assert done.history[0]["outcome"] == "completed" and done.finished_at is not None
        assert (await jobs.get(later.id)).status == "cancelled"

        rerun = await jobs.retry(later.id)
        assert (rerun.status, rerun.attempts) == ("pending", 0)
        with pytest.raises(APIError) as info:
            await jobs.retry(one.id)
        assert (info.value.status_code, info.value.code) == (409, "invalid_state")

        ids = sorted([one.id, later.id, *(j.id for j in batch)], reverse=True)
        page = await jobs.list_jobs(limit=2)
        assert [j.id for j in page.jobs] == ids[:2] and page.next_cursor is not None
        following = await jobs.list_jobs(limit=2, cursor=page.next_cursor)
        assert [j.id for j in following.jobs] == ids[2:4]
        assert [j.id async for j in jobs.iter_jobs(limit=2)] == ids
        assert [j.id async for j in jobs.iter_jobs(status="completed", queue="default")] == ids[1:4]
        assert [j.id async for j in jobs.iter_jobs(type="no.such.type")] == []

        with pytest.raises(APIError) as info:
            await jobs.enqueue("no.such.type", {})
        assert (info.value.status_code, info.value.code, info.value.field) == (422, "invalid_job", "type")
        with pytest.raises(APIError) as info:
            await jobs.get(999_999)
        assert (info.value.status_code, info.value.code) == (404, "job_not_found")
        with pytest.raises(APIError) as info:
            await jobs.list_jobs(cursor="not-ours")
        assert (info.value.status_code, info.value.field) == (422, "cursor")

    async with AsyncClient(BASE, "wrong-token", transport=httpx.ASGITransport(app=app)) as anon:
        with pytest.raises(APIError) as info:
            await anon.get(one.id)
        assert (info.value.status_code, info.value.code) == (401, "unauthorized")
        assert (await anon.health()).ok  # the one route without auth


async def test_async_client_dlq_queues_metrics_and_health(app: FastAPI, api_jq: JobQueue, clock: FakeClock) -> None:
    async with AsyncClient(BASE, API_TOKEN, transport=httpx.ASGITransport(app=app)) as jobs:
        health = await jobs.health()
        assert (health.ok, health.postgres, health.redis) == (True, "ok", "ok")
        boom = [await jobs.enqueue("boom", {"i": i}, queue="risky") for i in range(3)]
        await jobs.enqueue("echo", {})
        assert (await api_jq.drain(5)).failed == 3

        dead = await jobs.list_dlq(queue="risky", limit=2)
        assert [j.id for j in dead.jobs] == [boom[2].id, boom[1].id]
        assert all(j.status == "failed" and j.error and "boom" in j.error for j in dead.jobs)
        assert [j.id async for j in jobs.iter_dlq(limit=2)] == [b.id for b in reversed(boom)]
        assert [j.id async for j in jobs.iter_dlq(type="echo")] == []

        with pytest.raises(ValueError, match="give ids, or a queue"):
            await jobs.replay_dlq()
        assert await jobs.replay_dlq([boom[0].id]) == 1
        assert (await jobs.get(boom[0].id)).status == "pending"
        assert await jobs.replay_dlq(queue="risky", type="boom") == 2
        assert [j.id async for j in jobs.iter_dlq()] == []
        assert (await api_jq.drain(5)).failed == 3

        queues = {q.name: q for q in await jobs.list_queues()}
        assert isinstance(queues["risky"], m.QueueInfo)
        assert (queues["risky"].paused, queues["risky"].counts["failed"]) == (False, 3)
        assert queues["default"].counts["completed"] == 1
        assert await jobs.pause_queue("risky") == m.QueueState(name="risky", paused=True)
        assert {q.name: q.paused for q in await jobs.list_queues()}["risky"] is True
        assert (await jobs.resume_queue("risky")).paused is False
        risky_q = await jobs.set_queue("risky", concurrency=2, rate={"limit": 5, "period_ms": 1000})
        assert (risky_q.name, risky_q.counts["failed"], risky_q.settings.concurrency) == ("risky", 3, 2)
        assert risky_q.settings.rate == m.Rate(limit=5, period_ms=1000, burst=1)
        assert (await jobs.set_queue("risky", rate=None)).settings.rate is None
        with pytest.raises(APIError) as refused:
            await jobs.set_queue("risky", group_concurrency=-1)
        assert (refused.value.status_code, refused.value.field) == (422, "group_concurrency")
        assert {q.name: q for q in await jobs.list_queues()}["risky"].settings.concurrency == 2

        metrics = await jobs.metrics()
        risky = metrics.queues["risky"]
        assert (risky.settings.concurrency, risky.flow.running, risky.flow.parked) == (2, 0, 0)
        assert (risky.jobs["failed"], risky.last_hour.failed, risky.last_hour.success_rate) == (3, 3, 0.0)
        assert metrics.queues["default"].last_hour.completed == 1
        assert "risky" in await jobs.metrics_text()

        assert await jobs.purge_dlq(1) == 0  # they failed just now
        clock.advance(seconds=2 * 86_400)
        assert await jobs.purge_dlq(1) == 3
        assert (await jobs.list_dlq()).jobs == []


# --- the sync client -------------------------------------------------------------------------------


async def test_wait_is_one_long_poll_that_the_server_answers_when_the_job_ends(app: FastAPI, api_jq: JobQueue) -> None:
    sent: list[str | None] = []

    class Counting(httpx.ASGITransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            sent.append(request.url.params.get("wait_s"))
            return await super().handle_async_request(request)

    async with AsyncClient(BASE, API_TOKEN, transport=Counting(app=app)) as jobs:
        job = await jobs.enqueue("echo", {"n": 1}, callback_url="https://callback.invalid/hook")
        assert job.callback_url == "https://callback.invalid/hook" and job.progress is None and job.created_by is None
        sent.clear()
        waiting = asyncio.create_task(jobs.wait(job.id, timeout=60))
        assert await drain_soon(api_jq, 0.5) == 1
        done = await waiting
    assert (done.status, done.result) == ("completed", {"n": 1})
    assert sent == ["25"]  # one request, held by the server until the job ended


async def test_sync_client_over_the_whole_api(app: FastAPI, api_jq: JobQueue) -> None:
    loop = asyncio.get_running_loop()

    def scenario(on_loop: OnLoop) -> None:
        with Client(BASE, API_TOKEN, transport=LoopTransport(app, loop)) as jobs:
            assert jobs.health().ok
            one = jobs.enqueue("echo", {"n": 1})
            bad = jobs.enqueue_many([{"type": "boom"}, {"type": "echo", "payload": {"n": 2}}])
            later = jobs.enqueue("echo", {}, delay_ms=60_000)
            assert jobs.cancel(later.id).status == "cancelled"

            # a drain starts while wait() polls
            drained = asyncio.run_coroutine_threadsafe(drain_soon(api_jq), loop)
            done = jobs.wait(one.id, timeout=10)
            assert (done.status, done.result) == ("completed", {"n": 1})
            assert drained.result(timeout=10) == 2
            assert jobs.wait(later.id, timeout=1).status == "cancelled"  # terminal: no polling

            ids = [j.id for j in jobs.iter_jobs(limit=1)]
            assert ids == sorted([one.id, later.id, *(j.id for j in bad)], reverse=True)
            assert [j.id for j in jobs.list_dlq().jobs] == [bad[0].id]
            assert [j.id for j in jobs.iter_dlq(queue="default", type="boom")] == [bad[0].id]
            assert jobs.replay_dlq(type="boom") == 1
            assert jobs.retry(later.id).status == "pending"
            assert on_loop(api_jq.drain(5)).completed == 1

            assert jobs.pause_queue("default").paused is True
            assert [q.paused for q in jobs.list_queues() if q.name == "default"] == [True]
            assert jobs.resume_queue("default").paused is False
            assert jobs.metrics().queues["default"].last_hour.completed == 3
            assert jobs.purge_dlq(0) == 0
            with pytest.raises(APIError) as info:
                jobs.get(999_999)
            assert (info.value.status_code, info.value.code) == (404, "job_not_found")

    await in_thread(scenario)


# --- in-process enqueue ------------------------------------------------------------------------------


async def test_enqueue_through_the_engine_renders_the_job_as_the_api_does(jq: JobQueue) -> None:
    job = await enqueue(jq, "echo", {"n": 1}, priority=8, idempotency_key="k1")
    assert {k: job[k] for k in ("type", "payload", "status", "priority", "idempotency_key")} == {
        "type": "echo",
        "payload": {"n": 1},
        "status": "pending",
        "priority": 8,
        "idempotency_key": "k1",
    }
    assert Job.model_validate(job).id == job["id"]  # the same shape the HTTP client reads
    again = await enqueue(jq, "echo", {"n": 2}, idempotency_key="k1")
    assert again["id"] == job["id"] and again["payload"] == {"n": 1}
    report = await jq.drain(5)
    assert report.completed == 1
    assert (await jq.get(job["id"]))["result"] == {"n": 1}


async def test_enqueue_through_the_app_and_from_inside_a_route(jq: JobQueue) -> None:
    app = create_app(jq=jq)

    @app.post("/signup")
    async def signup(request: Request) -> dict[str, Any]:
        return await enqueue(request, "echo", {"welcome": True}, delay_ms=60_000)

    direct = await enqueue(app, "echo", {"from": "app"})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        via_route = (await c.post("/signup")).json()
    assert direct["status"] == "pending"
    assert via_route["status"] == "scheduled" and via_route["payload"] == {"welcome": True}
    rows, _ = await jq.list_jobs()
    assert sorted(r["id"] for r in rows) == sorted([direct["id"], via_route["id"]])


async def test_bad_input_raises_invalid_job_and_stores_nothing(jq: JobQueue) -> None:
    with pytest.raises(InvalidJob, match="unknown job type"):
        await enqueue(jq, "no.such.type", {})
    with pytest.raises(InvalidJob) as info:
        await enqueue(jq, "echo", {}, priority=42)
    assert info.value.field == "priority"
    assert (await jq.list_jobs())[0] == []
