"""GET /api/jobs/{id}?wait_s=N: answers as soon as the job ends (within 100 ms: in the drain's own
process through the in-process signal, in any other through the Redis done set), or after N seconds
with the job's current view; never a Postgres query per poll; N must be in (0, 25]."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from jobqueue.engine import JobQueue
from jobqueue.registry import JobContext, Registry
from jobqueue.web.app import create_app

from .conftest import APP_SETTINGS, AUTH


@pytest.fixture
def gate(registry: Registry) -> dict[str, Any]:
    """A job type that runs until released; records when its handler returned (monotonic)."""
    state: dict[str, Any] = {"go": asyncio.Event(), "started": asyncio.Event(), "returned_at": None}

    @registry.job("gated")
    async def gated(payload: dict[str, Any], ctx: JobContext) -> str:
        await ctx.progress(25, "waiting for the gate")
        state["started"].set()
        await state["go"].wait()
        state["returned_at"] = time.monotonic()
        return "through"

    return state


async def _wait_and_finish(
    waiting: httpx.AsyncClient, jq: JobQueue, gate: dict[str, Any], job_id: int
) -> tuple[httpx.Response, float]:
    drain = asyncio.create_task(jq.drain(10))
    await gate["started"].wait()
    call = asyncio.create_task(waiting.get(f"/api/jobs/{job_id}", params={"wait_s": 10}, headers=AUTH))
    await asyncio.sleep(0.3)  # the caller is waiting now
    assert not call.done()
    gate["go"].set()
    r = await call
    answered = time.monotonic()
    await drain
    return r, answered - gate["returned_at"]


async def test_wait_answers_within_100_ms_of_completion_in_the_drains_process(
    client: httpx.AsyncClient, jq: JobQueue, gate: dict[str, Any]
) -> None:
    row, _ = await jq.enqueue({"type": "gated"})
    r, latency = await _wait_and_finish(client, jq, gate, row["id"])
    assert r.status_code == 200
    assert r.json()["status"] == "completed" and r.json()["result"] == "through"
    assert r.json()["progress"]["message"] == "waiting for the gate"
    assert latency < 0.1, latency


async def test_wait_answers_within_100_ms_of_completion_in_another_process(
    make_jq: Callable[..., JobQueue],
    make_client: Callable[[FastAPI], httpx.AsyncClient],
    jq: JobQueue,
    gate: dict[str, Any],
) -> None:
    # Another engine: its waiters hear nothing from this drain but the Redis done set.
    other = make_jq(**APP_SETTINGS)
    row, _ = await jq.enqueue({"type": "gated"})
    async with make_client(create_app(jq=other)) as waiting:
        s0 = other.store.statements
        r, latency = await _wait_and_finish(waiting, jq, gate, row["id"])
    assert r.status_code == 200 and r.json()["status"] == "completed"
    assert latency < 0.1, latency
    assert other.store.statements - s0 == 2  # one read before waiting, one after the signal
    assert other.waiters.polls >= 5  # it polled Redis meanwhile (every 50 ms), not Postgres


async def test_wait_times_out_with_the_current_view(client: httpx.AsyncClient, jq: JobQueue) -> None:
    row, _ = await jq.enqueue({"type": "echo", "payload": {"a": 1}})
    s0 = jq.store.statements
    t0 = time.monotonic()
    r = await client.get(f"/api/jobs/{row['id']}", params={"wait_s": 0.5}, headers=AUTH)
    elapsed = time.monotonic() - t0
    assert r.status_code == 200
    assert r.json()["status"] == "pending" and r.json()["payload"] == {"a": 1}
    assert 0.5 <= elapsed < 0.9
    assert jq.store.statements - s0 == 2  # the first read and the last, nothing in between
    assert 5 <= jq.waiters.polls <= 12  # one ZMSCORE per 50 ms for this process's waiters


async def test_a_running_job_times_out_with_its_live_progress(
    client: httpx.AsyncClient, make_jq: Callable[..., JobQueue], gate: dict[str, Any]
) -> None:
    jq = make_jq(**APP_SETTINGS, JOBQUEUE_HEARTBEAT_MS=20)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(jq=jq)), base_url="http://t") as c:
        row, _ = await jq.enqueue({"type": "gated"})
        drain = asyncio.create_task(jq.drain(10))
        await gate["started"].wait()
        await asyncio.sleep(0.1)  # a heartbeat writes the report
        r = await c.get(f"/api/jobs/{row['id']}", params={"wait_s": 0.2}, headers=AUTH)
        gate["go"].set()
        await drain
    assert r.json()["status"] == "processing"
    assert r.json()["progress"]["percent"] == 25 and r.json()["progress"]["message"] == "waiting for the gate"


async def test_a_finished_job_answers_at_once(client: httpx.AsyncClient, jq: JobQueue) -> None:
    row, _ = await jq.enqueue({"type": "echo"})
    await jq.drain(5)
    # The app's first request builds what it lazily needs (a cold start's cost, not a wait's).
    assert (await client.get(f"/api/jobs/{row['id']}", headers=AUTH)).status_code == 200
    t0 = time.monotonic()
    r = await client.get(f"/api/jobs/{row['id']}", params={"wait_s": 25}, headers=AUTH)
    assert r.json()["status"] == "completed" and time.monotonic() - t0 < 0.2


async def test_cancel_answers_waiters(client: httpx.AsyncClient, jq: JobQueue) -> None:
    row, _ = await jq.enqueue({"type": "echo", "delay_ms": 60_000})
    call = asyncio.create_task(client.get(f"/api/jobs/{row['id']}", params={"wait_s": 10}, headers=AUTH))
    await asyncio.sleep(0.2)
    t0 = time.monotonic()
    await jq.cancel(row["id"])
    r = await call
    assert r.json()["status"] == "cancelled" and time.monotonic() - t0 < 0.1


@pytest.mark.parametrize("wait_s", ["0", "-1", "25.5", "26", "soon", "nan"])
async def test_wait_s_out_of_range_is_422(client: httpx.AsyncClient, jq: JobQueue, wait_s: str) -> None:
    row, _ = await jq.enqueue({"type": "echo"})
    r = await client.get(f"/api/jobs/{row['id']}", params={"wait_s": wait_s}, headers=AUTH)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "wait_s"


async def test_wait_on_a_missing_job_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/jobs/999999", params={"wait_s": 1}, headers=AUTH)
    assert r.status_code == 404
