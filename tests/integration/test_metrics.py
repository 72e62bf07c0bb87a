"""Metrics: exact values for known jobs (run through the engine on a FakeClock, and crafted rows
with known durations), flow control's view (limits, running and parked jobs, the busiest parked
scopes), the Prometheus exposition, the cost (two Redis requests side by side, a third only when
jobs are parked, and two statements, whatever the table size), the HTTP routes, and the per-job /
per-drain JSON log lines."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue
from jobqueue.keys import type_tag
from jobqueue.metrics import collect, prometheus_text
from jobqueue.models import Backoff, QueueSettings
from jobqueue.registry import JobContext, Registry
from jobqueue.settings import Settings
from jobqueue.web.app import create_app
from jobqueue.web.routes_metrics import router

FIXED_1S = Backoff(type="fixed", delay_ms=1000)


@pytest.fixture
def types(registry: Registry) -> None:
    @registry.job("ok")
    async def ok(payload: dict[str, Any], ctx: JobContext) -> None:
        return None

    @registry.job("boom", max_attempts=2, backoff=FIXED_1S)
    async def boom(payload: dict[str, Any], ctx: JobContext) -> None:
        raise ValueError("boom")

    @registry.job("flaky", queue="mail", max_attempts=3, backoff=FIXED_1S)
    async def flaky(payload: dict[str, Any], ctx: JobContext) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("not yet")
        return "sent"


async def insert(database_url: str, rows: list[dict[str, Any]]) -> None:
    """Crafted rows, straight into Postgres (history as a JSON list)."""
    conn = await asyncpg.connect(database_url)
    try:
        for r in rows:
            cols = ["queue", "type", "status", *(k for k in r if k not in ("queue", "type", "status"))]
            vals = [r.get("queue", "crafted"), r.get("type", "echo"), r["status"]]
            vals += [json.dumps(r[k]) if k == "history" else r[k] for k in cols[3:]]
            marks = [f"${i + 1}" + ("::jsonb" if c == "history" else "") for i, c in enumerate(cols)]
            await conn.execute(f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join(marks)})", *vals)
    finally:
        await conn.close()


def finished(
    now: datetime, ago: timedelta, status: str, *, exec_ms: int | None = None, wait_s: float = 0, attempts: int = 1
) -> dict[str, Any]:
    """A finished row: started 5 s before it finished, after waiting wait_s; its last attempt ran exec_ms."""
    fin = now - ago
    start = fin - timedelta(seconds=5)
    entry: dict[str, Any] = {"attempt": attempts, "started_at": start.isoformat(), "outcome": status}
    if exec_ms is not None:
        entry["duration_ms"] = exec_ms
    return {
        "status": status,
        "attempts": attempts,
        "history": [entry],
        "created_at": start - timedelta(seconds=wait_s),
        "started_at": start,
        "finished_at": fin,
        "run_at": start - timedelta(seconds=wait_s),
    }


async def test_metrics_of_jobs_run_by_the_engine(make_jq: Any, types: None, clock: FakeClock) -> None:
    jq: JobQueue = make_jq(transport="redis")
    t0 = clock.now()
    await jq.enqueue_many([{"type": "ok", "payload": {}}] * 3 + [{"type": "boom", "payload": {}}])
    await jq.enqueue({"type": "flaky", "payload": {}})
    clock.advance(seconds=30)  # every job waits 30 s before its first start
    r1 = await jq.drain(5)
    assert (r1.completed, r1.retried) == (3, 2)
    clock.advance(seconds=60)
    r2 = await jq.drain(5)
    assert (r2.completed, r2.failed) == (1, 1)
    await jq.enqueue({"type": "ok", "payload": {}})  # pending since t0 + 90 s
    later, _ = await jq.enqueue({"type": "ok", "payload": {}, "delay_ms": 3_600_000})  # scheduled, not due
    await jq.enqueue({"type": "ok", "payload": {}, "depends_on": [later["id"]]})  # waiting
    cancelled, _ = await jq.enqueue({"type": "ok", "payload": {}, "delay_ms": 60_000})
    await jq.cancel(cancelled["id"])
    clock.advance(seconds=45)  # now = t0 + 135 s

    m = await collect(jq)
    assert m["generated_at"] == (t0 + timedelta(seconds=135)).isoformat().replace("+00:00", "Z")
    assert set(m["queues"]) == {"default", "mail"}
    d, mail = m["queues"]["default"], m["queues"]["mail"]
    assert d["jobs"] == {"waiting": 1, "pending": 1, "scheduled": 1, "processing": 0, "failed": 1, "cancelled": 1}
    assert d["ready"] == {str(p): (1 if p == 5 else 0) for p in range(9, -1, -1)}
    assert list(d["ready"]) == [str(p) for p in range(9, -1, -1)]
    # cancel removed the cancelled job's delayed entry at once
    assert d["redis"] == {"ready": 1, "delayed": 1, "processing": 0}
    assert d["oldest_pending_age_s"] == 45.0
    assert mail["oldest_pending_age_s"] == 0.0
    assert d["paused"] is False

    hour = d["last_hour"]
    assert (hour["completed"], hour["failed"], hour["success_rate"]) == (3, 1, 0.75)
    assert hour["wait_ms"] == {"count": 4, "mean": 30_000.0, "p95": 30_000.0}
    assert hour["execution_ms"]["count"] == 4
    conn = await asyncpg.connect(jq.settings.database_url)
    sql = "SELECT (history -> -1 ->> 'duration_ms')::int FROM jobs WHERE queue = 'default' AND status = ANY($1)"
    durations = [r[0] for r in await conn.fetch(sql, ["completed", "failed"])]
    await conn.close()
    assert hour["execution_ms"]["mean"] == round(sum(durations) / 4, 3)
    # the three "ok" jobs finished 105 s before now (minute 1), flaky 45 s before (minute 0)
    assert hour["throughput_per_minute"] == [0] * 58 + [3, 0]
    assert mail["last_hour"]["throughput_per_minute"] == [0] * 59 + [1]
    assert d["last_day"] == {
        "completed": 3,
        "failed": 1,
        "success_rate": 0.75,
        "attempts": {"completed": {"1": 3}, "failed": {"2": 1}},
    }
    assert mail["last_day"]["attempts"] == {"completed": {"2": 1}, "failed": {}}
    assert mail["last_hour"]["wait_ms"] == {"count": 1, "mean": 30_000.0, "p95": 30_000.0}

    clock.advance(seconds=3600)  # everything finished is now older than an hour, younger than a day
    later = (await collect(jq))["queues"]["default"]
    assert (later["last_hour"]["completed"], later["last_hour"]["success_rate"]) == (0, None)
    assert later["last_hour"]["execution_ms"] == {"count": 0, "mean": None, "p50": None, "p95": None}
    assert later["last_hour"]["throughput_per_minute"] == [0] * 60
    assert (later["last_day"]["completed"], later["last_day"]["failed"]) == (3, 1)
    assert later["oldest_pending_age_s"] == 45.0 + 3600


@pytest.fixture
async def crafted(make_jq: Any, clock: FakeClock, database_url: str) -> JobQueue:
    """Known durations and windows. Execution 100..1000 ms (mean 550, p50 550, p95 955); waits
    1..10 s plus one 0 s (mean 5000, p95 9500); rows on each window boundary."""
    jq: JobQueue = make_jq(transport="redis")
    now = clock.now()
    rows = [
        finished(now, timedelta(minutes=10), "completed", exec_ms=100 * i, wait_s=i, attempts=1 if i <= 7 else i - 6)
        for i in range(1, 11)
    ]  # attempts: seven 1s, then 2, 3, 4
    rows += [
        finished(now, timedelta(minutes=30), "failed", attempts=3),  # lost lease: no duration
        finished(now, timedelta(hours=1), "completed"),  # on the hour's edge: day only
        finished(now, timedelta(hours=23, minutes=59), "completed", attempts=2),
        finished(now, timedelta(days=1), "completed"),  # on the day's edge: out
        finished(now, timedelta(days=2), "failed", attempts=3),  # only in the DLQ size
        {"status": "cancelled", "finished_at": now - timedelta(minutes=5), "created_at": now - timedelta(hours=1)},
        {"status": "pending", "created_at": now - timedelta(days=3), "run_at": now - timedelta(seconds=90)},
        {"status": "scheduled", "created_at": now - timedelta(days=3), "run_at": now - timedelta(seconds=30)},
        {"status": "processing", "created_at": now, "run_at": now, "started_at": now},
    ]
    await insert(database_url, rows)
    return jq


async def test_metrics_exact_for_crafted_rows(crafted: JobQueue) -> None:
    q = (await collect(crafted))["queues"]["crafted"]
    assert q["jobs"] == {"waiting": 0, "pending": 1, "scheduled": 1, "processing": 1, "failed": 2, "cancelled": 1}
    # run_at, not created_at: a replayed or retried job is as old as its turn, not its row
    assert q["oldest_pending_age_s"] == 90.0
    assert q["last_hour"] == {
        "completed": 10,
        "failed": 1,
        "success_rate": 10 / 11,
        "execution_ms": {"count": 10, "mean": 550.0, "p50": 550.0, "p95": 955.0},
        "wait_ms": {"count": 11, "mean": 5000.0, "p95": 9500.0},
        "throughput_per_minute": [0] * 49 + [10] + [0] * 10,
    }
    assert q["last_day"] == {
        "completed": 12,
        "failed": 1,
        "success_rate": 12 / 13,
        "attempts": {"completed": {"1": 8, "2": 2, "3": 1, "4": 1}, "failed": {"3": 1}},
    }
    assert q["redis"] == {"ready": 0, "delayed": 0, "processing": 0}  # crafted rows were never pushed


async def test_prometheus_text_parses_and_carries_the_values(crafted: JobQueue) -> None:
    await crafted.set_paused("crafted", True)
    text = prometheus_text(await collect(crafted)).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }

    def v(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"queue": "crafted", **labels}.items())))]

    assert v("jobqueue_jobs", status="failed") == 2
    assert v("jobqueue_jobs", status="pending") == 1
    assert v("jobqueue_ready_jobs", priority="9") == 0
    assert v("jobqueue_indexed_jobs", set="delayed") == 0
    assert v("jobqueue_queue_paused") == 1
    assert v("jobqueue_oldest_pending_age_seconds") == 90
    assert v("jobqueue_finished_jobs", status="completed", window="1h") == 10
    assert v("jobqueue_finished_jobs", status="completed", window="24h") == 12
    assert v("jobqueue_success_ratio", window="1h") == pytest.approx(10 / 11)
    assert v("jobqueue_execution_seconds", quantile="0.5") == 0.55
    assert v("jobqueue_execution_seconds", quantile="0.95") == 0.955
    assert v("jobqueue_execution_mean_seconds") == 0.55
    assert v("jobqueue_queue_wait_seconds", quantile="0.95") == 9.5
    assert v("jobqueue_queue_wait_mean_seconds") == 5.0
    assert v("jobqueue_throughput_jobs_per_minute") == pytest.approx(10 / 60)
    assert v("jobqueue_attempts_jobs", status="completed", attempts="1") == 8
    assert v("jobqueue_attempts_jobs", status="failed", attempts="3") == 1
    # the default queue finished nothing: no made-up ratio or quantile for it
    assert not any(k[0] == "jobqueue_success_ratio" and ("queue", "default") in k[1] for k in samples)
    assert not any(k[0] == "jobqueue_execution_seconds" and ("queue", "default") in k[1] for k in samples)


@pytest.mark.parametrize("n", [10, 10_000])
async def test_collect_costs_two_redis_requests_and_two_statements(make_jq: Any, database_url: str, n: int) -> None:
    jq: JobQueue = make_jq(transport="redis")
    conn = await asyncpg.connect(database_url)
    statuses = "ARRAY['completed','completed','completed','failed','cancelled','pending','scheduled','processing']"
    await conn.execute(
        f"""INSERT INTO jobs (queue, type, status, attempts, created_at, run_at, started_at, finished_at, history)
        SELECT 'q' || (i % 7), 'echo', s, 1, $1::timestamptz - interval '1 second' * i, $1::timestamptz,
               $1::timestamptz, CASE WHEN s IN ('completed','failed','cancelled') THEN $1::timestamptz END,
               '[{{"duration_ms": 5}}]'::jsonb
        FROM generate_series(1, $2::int) i, LATERAL (SELECT ({statuses})[1 + i % 8] AS s) x""",
        jq.clock.now(),
        n,
    )
    await conn.close()
    jq.redis.requests = jq.store.statements = 0
    m = await collect(jq)
    assert (jq.redis.requests, jq.store.statements) == (2, 2)  # nothing parked: no third request
    total = sum(sum(q["jobs"].values()) + q["last_day"]["completed"] for q in m["queues"].values())
    assert total == n
    assert len(m["queues"]) == min(n, 7) + 1  # q0..q6 and the registry's default


def _group_scope(group: str) -> str:
    return "g:" + hashlib.sha256(group.encode()).hexdigest()[:12]


async def test_flow_control_metrics_limits_running_and_parked_scopes(
    make_jq: Any, registry: Registry, clock: FakeClock
) -> None:
    """Three groups of one queue under a per-group concurrency of 1, held mid-run: the metrics show
    the limits, the jobs running (one per group and the ungrouped one), those parked, and the
    scopes with the most parked, busiest first; once the jobs finish nothing is running or parked."""
    gate = asyncio.Event()

    @registry.job("hold", timeout_ms=30_000)
    async def hold(payload: dict[str, Any], ctx: JobContext) -> None:
        await gate.wait()

    worker: JobQueue = make_jq(transport="redis")
    observer: JobQueue = make_jq(transport="redis")  # its request counter sees only collect()
    await worker.set_queue_settings(
        "default",
        {"concurrency": 8, "group_concurrency": 1, "rate": {"limit": 50, "period_ms": 1000, "burst": 20}},
    )
    await worker.set_queue_settings("default", {"aging_ms": 60_000, "defaults": {"max_attempts": 4}})
    groups = ["acme"] * 4 + ["globex"] * 2 + ["initech"] + [None]
    await worker.enqueue_many([{"type": "hold", "payload": {"i": i}, "group": g} for i, g in enumerate(groups)])
    drain = asyncio.create_task(worker.drain(20))
    try:
        for _ in range(500):
            m = (await collect(observer))["queues"]["default"]
            if m["flow"]["running"] == 4 and m["flow"]["parked"] == 4:
                break
            await asyncio.sleep(0.01)
        assert m["flow"] == {
            "running": 4,
            "parked": 4,
            "top_parked": [
                {"scope": _group_scope("acme"), "type": None, "group_hash": _group_scope("acme")[2:], "parked": 3},
                {"scope": _group_scope("globex"), "type": None, "group_hash": _group_scope("globex")[2:], "parked": 1},
            ],
            "gated_s": 0.0,  # gated since the claim that parked them, on the engine's clock
            "gated_since": clock.now().isoformat().replace("+00:00", "Z"),
        }
        clock.advance(2500)
        assert (await collect(observer))["queues"]["default"]["flow"]["gated_s"] == 2.5
        assert m["settings"] == QueueSettings.model_validate(
            {
                "concurrency": 8,
                "group_concurrency": 1,
                "rate": {"limit": 50, "period_ms": 1000, "burst": 20},
                "aging_ms": 60_000,
                "defaults": {"max_attempts": 4},
            }
        ).model_dump(mode="json")
        observer.redis.requests = observer.store.statements = 0
        snapshot = await collect(observer)
        assert (observer.redis.requests, observer.store.statements) == (3, 2)  # the parked scopes' counts
        text = prometheus_text(snapshot).decode()
    finally:
        gate.set()
        done = (await drain).completed
    for _ in range(5):  # a drain may end while the rest waits on a slot: the next ones take it
        done += 0 if done == 8 else (await worker.drain(5)).completed
    assert done == 8
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if dict(s.labels).get("queue") == "default"
    }

    def v(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"queue": "default", **labels}.items())))]

    assert v("jobqueue_queue_concurrency_limit", scope="queue") == 8
    assert v("jobqueue_queue_concurrency_limit", scope="group") == 1
    assert v("jobqueue_queue_rate_limit_per_second", scope="queue") == 50
    assert v("jobqueue_queue_rate_burst", scope="queue") == 20
    assert v("jobqueue_queue_aging_seconds") == 60
    assert not any(k[0] == "jobqueue_queue_rate_burst" and ("scope", "group") in k[1] for k in samples)
    assert (v("jobqueue_running_jobs"), v("jobqueue_parked_jobs")) == (4, 4)
    assert v("jobqueue_parked_scope_jobs", scope=_group_scope("acme"), type="") == 3
    after = (await collect(observer))["queues"]["default"]["flow"]
    # Nothing waits any more: the gated period ended and counts in the total.
    assert after == {"running": 0, "parked": 0, "top_parked": [], "gated_s": 2.5, "gated_since": None}


async def test_a_parked_scope_of_a_limited_type_names_the_type(make_jq: Any, registry: Registry) -> None:
    gate = asyncio.Event()

    @registry.job("sync.crm", concurrency=1, timeout_ms=30_000)
    async def sync_crm(payload: dict[str, Any], ctx: JobContext) -> None:
        await gate.wait()

    worker: JobQueue = make_jq(transport="redis")
    await worker.enqueue_many([{"type": "sync.crm", "payload": {"i": i}} for i in range(3)])
    drain = asyncio.create_task(worker.drain(20))
    try:
        for _ in range(500):
            flow = (await collect(worker))["queues"]["default"]["flow"]
            if flow["parked"] == 2:
                break
            await asyncio.sleep(0.01)
        tag = type_tag("sync.crm")
        assert flow == {
            "running": 1,
            "parked": 2,
            "top_parked": [{"scope": f"t:{tag}", "type": "sync.crm", "group_hash": None, "parked": 2}],
            "gated_s": 0.0,
            "gated_since": worker.clock.now().isoformat().replace("+00:00", "Z"),
        }
    finally:
        gate.set()
        done = (await drain).completed
    for _ in range(5):
        done += 0 if done == 3 else (await worker.drain(5)).completed
    assert done == 3


async def test_metrics_routes_need_the_token_and_answer_json_and_prometheus(crafted: JobQueue) -> None:
    app = create_app(Settings(JOBS_API_TOKEN="metrics-token"), jq=crafted)
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://jq.test") as client:
        for path in ("/api/metrics", "/api/metrics/prometheus"):
            denied = await client.get(path)
            assert denied.status_code == 401
            assert denied.json()["error"]["code"] == "unauthorized"
            assert (await client.get(path, headers={"authorization": "Bearer nope"})).status_code == 401
        auth = {"authorization": "Bearer metrics-token"}
        body = (await client.get("/api/metrics", headers=auth)).json()
        assert body["queues"]["crafted"]["last_hour"]["execution_ms"]["p95"] == 955.0
        assert body["queues"]["crafted"]["jobs"]["failed"] == 2
        prom = await client.get("/api/metrics/prometheus", headers=auth)
    assert prom.status_code == 200
    assert prom.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    names = {f.name for f in text_string_to_metric_families(prom.text)}
    assert {"jobqueue_jobs", "jobqueue_ready_jobs", "jobqueue_success_ratio", "jobqueue_execution_seconds"} <= names


# --- logs ---------------------------------------------------------------------------------------

PAYLOAD_SECRET = "4242-4242-PAYLOAD-SECRET"
SETTINGS_SECRETS = {
    "JOBS_API_TOKEN": "api-token-SECRET",
    "WORKER_SECRET": "worker-SECRET",
    "CRON_SECRET": "cron-SECRET",
}


async def test_job_and_drain_log_lines_carry_the_fields_and_no_secrets(
    make_jq: Any, registry: Registry, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    @registry.job("charge", max_attempts=2, backoff=FIXED_1S)
    async def charge(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        if ctx.attempt == 1:
            raise ValueError("card declined\nTraceback (most recent call last): more lines")
        return {"charged": payload["card"]}  # the result carries the secret too: it must not be logged

    jq: JobQueue = make_jq(transport="redis", **SETTINGS_SECRETS)
    row, _ = await jq.enqueue({"type": "charge", "queue": "billing", "payload": {"card": PAYLOAD_SECRET}})
    with caplog.at_level(logging.INFO, logger="jobqueue"):
        await jq.drain(5)
        clock.advance(1000)
        await jq.drain(5)

    jobs = [json.loads(r.getMessage()) for r in caplog.records if r.name == "jobqueue.jobs"]
    assert [(j["outcome"], j["attempt"]) for j in jobs] == [("retried", 1), ("completed", 2)]
    for j in jobs:
        assert set(j) == {"event", "id", "type", "queue", "attempt", "duration_ms", "outcome", "error"}
        assert (j["event"], j["id"], j["type"], j["queue"]) == ("job", row["id"], "charge", "billing")
        assert isinstance(j["duration_ms"], int) and j["duration_ms"] >= 0
    assert jobs[0]["error"] == "ValueError: card declined"  # the first line only
    assert jobs[1]["error"] is None
    drains = [json.loads(r.getMessage()) for r in caplog.records if r.name == "jobqueue.drain"]
    assert [(d["event"], d["claimed"], d["retried"], d["completed"]) for d in drains] == [
        ("drain", 1, 1, 0),
        ("drain", 1, 0, 1),
    ]
    assert all("dead" not in d and isinstance(d["duration_ms"], int) for d in drains)
    for secret in (PAYLOAD_SECRET, *SETTINGS_SECRETS.values(), jq.settings.database_url or "-"):
        assert secret not in caplog.text
