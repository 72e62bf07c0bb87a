"""`jobqueue.client.enqueue()`: in-process enqueue through a JobQueue, the app, or a Request,
against the real Postgres and Redis."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import Request

from jobqueue.client import enqueue
from jobqueue.engine import JobQueue
from jobqueue.errors import InvalidJob
from jobqueue.web.app import create_app


async def test_enqueue_through_the_engine_renders_the_job_as_the_api_does(jq: JobQueue) -> None:
    job = await enqueue(jq, "echo", {"n": 1}, priority=8, idempotency_key="k1")
    assert {k: job[k] for k in ("type", "payload", "status", "priority", "idempotency_key")} == {
        "type": "echo",
        "payload": {"n": 1},
        "status": "pending",
        "priority": 8,
        "idempotency_key": "k1",
    }
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
