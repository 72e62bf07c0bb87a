"""`/api/workers` and kicks: the drain report, QStash kicks after enqueue, and the continuation
published when a drain runs out of budget with work left."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
import respx
from fastapi import FastAPI

from jobqueue.engine import JobQueue
from jobqueue.registry import JobContext, Registry
from jobqueue.settings import Settings
from jobqueue.web.app import create_app
from jobqueue.web.kick import QStashKicker, install_kicker, qstash_kicker

from .conftest import APP_SETTINGS, AUTH, WORKER_AUTH

REPORT_KEYS = {
    "claimed",
    "completed",
    "retried",
    "failed",
    "released",
    "recovered",
    "duration_ms",
    "more",
    "gated_until",
}
QSTASH = {"QSTASH_TOKEN": "qstash-test-token", "QSTASH_URL": "https://qstash.test"}
PUBLISH = "https://qstash.test/v2/publish/https://jobs.example.test/api/workers"


async def test_drain_answers_exactly_the_report(client: httpx.AsyncClient, jq: JobQueue) -> None:
    ok = [
        (await client.post("/api/jobs", json={"type": "echo", "payload": {"i": i}}, headers=AUTH)).json()["id"]
        for i in range(3)
    ]
    dead = (await client.post("/api/jobs", json={"type": "boom", "payload": {}}, headers=AUTH)).json()["id"]
    r = await client.post("/api/workers", headers=WORKER_AUTH)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == REPORT_KEYS
    assert isinstance(body["duration_ms"], int) and body["duration_ms"] >= 0
    assert {k: v for k, v in body.items() if k != "duration_ms"} == {
        "claimed": 4,
        "completed": 3,
        "retried": 0,
        "failed": 1,
        "released": 0,
        "recovered": 0,
        "more": False,
        "gated_until": None,  # nothing waits on a flow-control limit
    }
    assert {(await jq.get(i))["status"] for i in ok} == {"completed"}
    assert (await jq.get(dead))["status"] == "failed"
    # An idle tick: nothing to do, same shape.
    idle = (await client.get("/api/workers", headers=WORKER_AUTH)).json()
    counts = {k: v for k, v in idle.items() if k not in ("duration_ms", "more", "gated_until")}
    assert counts == dict.fromkeys(REPORT_KEYS - {"duration_ms", "more", "gated_until"}, 0)
    assert idle["more"] is False and idle["gated_until"] is None


@pytest.fixture
def qstash_app(make_jq: Callable[..., JobQueue]) -> Callable[..., FastAPI]:
    def make(**settings: Any) -> FastAPI:
        return create_app(jq=make_jq(**APP_SETTINGS, **QSTASH, **settings))

    return make


async def test_enqueue_kicks_qstash_once_per_interval(
    qstash_app: Callable[..., FastAPI], make_client: Callable[[FastAPI], httpx.AsyncClient]
) -> None:
    app = qstash_app(JOBQUEUE_KICK_INTERVAL_MS=60_000)
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(PUBLISH).respond(201, json={"messageId": "msg_1"})
        async with make_client(app) as c:
            for i in range(3):
                r = await c.post("/api/jobs", json={"type": "echo", "payload": {"i": i}}, headers=AUTH)
                assert r.status_code == 201
            # A delayed job does not kick: nothing is ready to run.
            await c.post("/api/jobs", json={"type": "echo", "payload": {}, "delay_ms": 5000}, headers=AUTH)
    assert route.call_count == 1
    sent = route.calls[0].request
    assert sent.headers["authorization"] == "Bearer qstash-test-token"
    assert sent.content == b""


async def test_a_failing_kick_never_fails_the_enqueue(
    qstash_app: Callable[..., FastAPI], make_client: Callable[[FastAPI], httpx.AsyncClient], jq: JobQueue
) -> None:
    app = qstash_app()
    with respx.mock() as mock:
        route = mock.post(PUBLISH).mock(side_effect=httpx.ConnectError("refused"))
        async with make_client(app) as c:
            r = await c.post("/api/jobs", json={"type": "echo", "payload": {}}, headers=AUTH)
        assert r.status_code == 201 and route.call_count == 1
        route.mock(return_value=httpx.Response(500, text="secret-ish body"))
        await QStashKicker("t", "https://jobs.example.test/api/workers", "https://qstash.test/")()  # logs only
        assert route.call_count == 2


@pytest.fixture
def slow_registry(registry: Registry) -> Registry:
    @registry.job("slow", timeout_ms=5000)
    async def slow(payload: dict[str, Any], ctx: JobContext) -> None:
        await asyncio.sleep(0.3)

    return registry


async def test_a_drain_with_work_left_publishes_the_next_one(
    make_jq: Callable[..., JobQueue], slow_registry: Registry, make_client: Callable[[FastAPI], httpx.AsyncClient]
) -> None:
    # budget_s = max(1, 1.5 - 1) = 1 s; one job at a time at 0.3 s each leaves work behind.
    jq = make_jq(
        slow_registry,
        **APP_SETTINGS,
        **QSTASH,
        JOBQUEUE_MAX_DURATION_S=1.5,
        JOBQUEUE_BUDGET_MARGIN_S=1,
        JOBQUEUE_BATCH_SIZE=1,
        JOBQUEUE_CONCURRENCY=1,
        JOBQUEUE_KICK_INTERVAL_MS=1,
    )
    app = create_app(jq=jq)
    with respx.mock() as mock:
        route = mock.post(PUBLISH).respond(201, json={"messageId": "m"})
        async with make_client(app) as c:
            r = await c.post("/api/jobs/batch", json={"jobs": [{"type": "slow", "payload": {}}] * 8}, headers=AUTH)
            assert r.status_code == 201
            kicks_after_enqueue = route.call_count
            jq.clock.advance(ms=1)  # type: ignore[attr-defined]  # the 1 ms debounce lapses (engine clock)
            r = await c.post("/api/workers", headers=WORKER_AUTH)
        assert r.status_code == 200 and r.json()["more"] is True
        assert 0 < r.json()["completed"] < 8
        assert (kicks_after_enqueue, route.call_count) == (1, 2)


async def test_install_kicker_replaces_qstash(
    qstash_app: Callable[..., FastAPI], make_client: Callable[[FastAPI], httpx.AsyncClient]
) -> None:
    app = qstash_app(JOBQUEUE_KICK_INTERVAL_MS=1)
    woken: list[int] = []

    async def local_kick() -> None:
        woken.append(1)

    install_kicker(app, local_kick)
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(PUBLISH).respond(201)
        async with make_client(app) as c:
            await c.post("/api/jobs", json={"type": "echo", "payload": {}}, headers=AUTH)
            install_kicker(app, None)  # also reaches an engine that is already built
            app.state.resources.built.clock.advance(ms=1)  # the debounce lapses (engine clock)
            await c.post("/api/jobs", json={"type": "echo", "payload": {}}, headers=AUTH)
    assert woken == [1] and route.call_count == 0


def test_qstash_kicker_needs_a_token_and_a_public_url() -> None:
    assert qstash_kicker(Settings(QSTASH_TOKEN=None)) is None
    assert qstash_kicker(Settings(QSTASH_TOKEN="t", JOBQUEUE_PUBLIC_URL=None)) is None
    k = qstash_kicker(Settings(QSTASH_TOKEN="t", JOBQUEUE_PUBLIC_URL="https://a.test/"))
    assert isinstance(k, QStashKicker)
    assert k.publish_url == "https://qstash.upstash.io/v2/publish/https://a.test/api/workers"


async def test_a_gated_drain_publishes_one_delayed_kick_for_when_the_gate_opens(
    make_jq: Callable[..., JobQueue], make_client: Callable[[FastAPI], httpx.AsyncClient]
) -> None:
    # One start per 10 s: the first drain runs one job and ends gated until the rate allows the next.
    jq = make_jq(**APP_SETTINGS, **QSTASH, JOBQUEUE_KICK_INTERVAL_MS=60_000)
    await jq.set_queue_settings("default", {"rate": {"limit": 1, "period_ms": 10_000, "burst": 1}})
    app = create_app(jq=jq)
    with respx.mock() as mock:
        route = mock.post(PUBLISH).respond(201, json={"messageId": "m"})
        async with make_client(app) as c:
            r = await c.post("/api/jobs/batch", json={"jobs": [{"type": "echo", "payload": {}}] * 2}, headers=AUTH)
            assert r.status_code == 201
            first = (await c.post("/api/workers", headers=WORKER_AUTH)).json()
            again = (await c.post("/api/workers", headers=WORKER_AUTH)).json()
    assert (first["completed"], again["completed"]) == (1, 0)
    assert first["gated_until"] is not None and first["gated_until"] == again["gated_until"]
    delayed = [call.request for call in route.calls if "upstash-not-before" in call.request.headers]
    assert len(delayed) == 1  # one kick per due time, however many drains see the gate
    opens_s = datetime.fromisoformat(first["gated_until"]).timestamp()
    assert int(delayed[0].headers["upstash-not-before"]) == math.ceil(opens_s)
