"""The guarantees: recovery of dead workers, one runner per lease, nothing lost to Redis."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue
from jobqueue.registry import JobContext, Registry


class WorkerKilled(BaseException):
    """Stands in for the process dying mid-job (OOM, the platform's timeout): nothing after it runs."""


@pytest.fixture
def counting(registry: Registry) -> Counter[int]:
    runs: Counter[int] = Counter()

    @registry.job("count", timeout_ms=5000)
    async def count(payload: dict[str, Any], ctx: JobContext) -> int:
        runs[ctx.job_id] += 1
        await asyncio.sleep(0)
        return ctx.job_id

    @registry.job("killer", max_attempts=3, timeout_ms=1000)
    async def killer(payload: dict[str, Any], ctx: JobContext) -> None:
        runs[ctx.job_id] += 1
        raise WorkerKilled

    return runs


async def _flush_prefix(redis_url: str, prefix: str) -> None:
    r = aioredis.Redis.from_url(redis_url)
    keys = [k async for k in r.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await r.delete(*keys)
    await r.aclose()


async def test_claimed_and_never_finished_is_recovered(
    make_jq: Any, counting: Counter[int], clock: FakeClock, transport_kind: str
) -> None:
    jq: JobQueue = make_jq(JOBQUEUE_LEASE_GRACE_MS=1000)
    await jq.drain(1)
    row, _ = await jq.enqueue({"type": "killer", "payload": {}, "max_attempts": 2})
    with pytest.raises(WorkerKilled):
        await jq.drain(2)
    job = await jq.get(row["id"])
    assert job["status"] == "processing" and job["attempts"] == 1  # counted at claim
    # A drain while the lease is valid leaves it alone.
    assert (await jq.drain(1)).claimed == 0
    clock.advance(seconds=10)  # past the lease (budget 2 s + grace 1 s)
    with pytest.raises(WorkerKilled):
        await jq.drain(2)
    job = await jq.get(row["id"])
    assert job["attempts"] == 2 and job["status"] == "processing"
    assert job["history"][0]["outcome"] == "lost"
    clock.advance(seconds=10)
    report = await jq.drain(2)
    assert (report.failed, report.recovered, report.claimed) == (1, 1, 0)
    job = await jq.get(row["id"])
    assert job["status"] == "failed" and job["attempts"] == 2
    assert "lease expired" in job["error"]
    assert [h["outcome"] for h in job["history"]] == ["lost", "lost"]
    assert counting[row["id"]] == 2
    assert report.dead == [{"id": row["id"], "type": "killer", "queue": "default", "error": job["error"]}]


async def test_recovered_job_completes_and_counts_the_attempt(
    make_jq: Any, counting: Counter[int], clock: FakeClock, registry: Registry
) -> None:
    crash = {"on": True}

    @registry.job("crash_once", max_attempts=3)
    async def crash_once(payload: dict[str, Any], ctx: JobContext) -> str:
        if crash["on"]:
            crash["on"] = False
            raise WorkerKilled
        return "done"

    jq: JobQueue = make_jq()
    row, _ = await jq.enqueue({"type": "crash_once", "payload": {}})
    with pytest.raises(WorkerKilled):
        await jq.drain(2)
    clock.advance(seconds=60)
    report = await jq.drain(2)
    assert (report.completed, report.recovered) == (1, 1)
    job = await jq.get(row["id"])
    assert job["status"] == "completed" and job["attempts"] == 2
    assert [h["outcome"] for h in job["history"]] == ["lost", "completed"]


async def test_eight_concurrent_drains_run_each_job_exactly_once(
    make_jq: Any, counting: Counter[int], transport_kind: str
) -> None:
    workers = [make_jq(JOBQUEUE_BATCH_SIZE=50) for _ in range(8)]
    await workers[0].drain(1)
    n = 2000
    rows = []
    for i in range(0, n, 500):
        rows += await workers[0].enqueue_many([{"type": "count", "payload": {"i": j}} for j in range(i, i + 500)])
    ids = sorted(r["id"] for r, _ in rows)
    reports = await asyncio.gather(*(w.drain(60) for w in workers))
    assert sum(r.completed for r in reports) == n
    assert sorted(counting) == ids
    assert set(counting.values()) == {1}
    assert sum(1 for r in reports if r.completed) > 1  # the work really was shared
    counts = await workers[0].queue_counts()
    assert counts["default"]["counts"]["completed"] == n


async def test_duplicate_members_in_redis_run_once(make_jq: Any, counting: Counter[int]) -> None:
    jq: JobQueue = make_jq(JOBQUEUE_BATCH_SIZE=1)  # one pop per batch: each duplicate is claimed apart
    await jq.drain(1)
    row, _ = await jq.enqueue({"type": "count", "payload": {}})
    await jq.broker.push([row])  # the same member twice (a reconcile race, a duplicate push)
    await jq.broker.push([row])
    report = await jq.drain(5)
    assert report.completed == 1 and report.dropped == 2
    assert counting[row["id"]] == 1


async def test_redis_flushed_mid_run_loses_nothing(
    make_jq: Any, counting: Counter[int], clock: FakeClock, prefix: str, redis_server: str, transport_kind: str
) -> None:
    jq: JobQueue = make_jq(JOBQUEUE_BATCH_SIZE=100)
    await jq.drain(1)
    await jq.enqueue_many([{"type": "count", "payload": {"i": i}} for i in range(300)])
    await jq.enqueue_many([{"type": "count", "payload": {}, "delay_ms": 30_000} for _ in range(20)])
    first = await jq.drain(5, max_jobs=100)
    assert first.completed == 100
    await _flush_prefix(redis_server, prefix)  # everything Redis knew is gone
    report = await jq.drain(10)
    assert report.reconciled == 220  # 200 pending + 20 scheduled rebuilt from Postgres
    assert report.completed == 200
    clock.advance(30_000)
    assert (await jq.drain(10)).completed == 20
    assert len(counting) == 320 and set(counting.values()) == {1}


async def test_job_in_flight_at_flush_is_recovered_after_its_lease(
    make_jq: Any, counting: Counter[int], clock: FakeClock, prefix: str, redis_server: str
) -> None:
    jq: JobQueue = make_jq()
    await jq.drain(1)
    row, _ = await jq.enqueue({"type": "killer", "payload": {}})
    with pytest.raises(WorkerKilled):
        await jq.drain(2)  # the worker dies holding the lease ...
    await _flush_prefix(redis_server, prefix)  # ... and Redis loses the processing set too
    assert (await jq.drain(2)).claimed == 0  # rebuilt: the lease is still valid
    clock.advance(seconds=60)
    with pytest.raises(WorkerKilled):
        await jq.drain(2)
    assert (await jq.get(row["id"]))["attempts"] == 2


async def test_push_failing_after_insert_runs_after_reconcile(
    make_jq: Any, counting: Counter[int], clock: FakeClock
) -> None:
    jq: JobQueue = make_jq()
    await jq.drain(1)

    async def broken(*a: Any, **k: Any) -> Any:
        from jobqueue.errors import RedisUnavailable

        raise RedisUnavailable("simulated: the push after the insert failed")

    real_push = jq.broker.push
    jq.broker.push = broken  # type: ignore[method-assign]
    row, created = await jq.enqueue({"type": "count", "payload": {}})
    assert created and row["status"] == "pending"
    jq.broker.push = real_push  # type: ignore[method-assign]
    # Another process (no in-process hint) finds it on the periodic reconcile.
    other: JobQueue = make_jq()
    assert (await other.drain(2)).claimed == 0  # not indexed, not yet reconciled
    clock.advance(seconds=301)
    report = await other.drain(2)
    assert report.reconciled == 1 and report.completed == 1
    assert counting[row["id"]] == 1
    # The process that saw the failure reconciles on its next drain without waiting.
    jq.broker.push = broken  # type: ignore[method-assign]
    _row2, _ = await jq.enqueue({"type": "count", "payload": {}})
    jq.broker.push = real_push  # type: ignore[method-assign]
    report = await jq.drain(2)  # at once: no waiting for the periodic interval or row age
    assert report.reconciled == 1 and report.completed == 1


async def test_concurrent_enqueues_with_one_key_make_one_job(make_jq: Any, transport_kind: str) -> None:
    engines = [make_jq() for _ in range(4)]
    req = {"type": "echo", "payload": {"a": 1}, "idempotency_key": "order-42"}
    results = await asyncio.gather(*(e.enqueue(dict(req)) for e in engines for _ in range(5)))
    ids = {r["id"] for r, _ in results}
    assert len(ids) == 1
    assert sum(1 for _, created in results if created) == 1
    same_key_other_queue, created = await engines[0].enqueue({**req, "queue": "other"})
    assert created and same_key_other_queue["id"] not in ids
    # in one batch too
    batch = await engines[0].enqueue_many([req, {**req, "idempotency_key": "order-43"}, req])
    assert [c for _, c in batch] == [False, True, False]
    assert batch[0][0]["id"] == batch[2][0]["id"] == next(iter(ids))


async def test_cancelled_job_never_runs_though_its_id_is_in_redis(make_jq: Any, counting: Counter[int]) -> None:
    jq: JobQueue = make_jq()
    await jq.drain(1)
    row, _ = await jq.enqueue({"type": "count", "payload": {}})
    await jq.cancel(row["id"])
    report = await jq.drain(2)
    assert report.claimed == 0 and report.dropped == 1
    assert counting[row["id"]] == 0
    assert (await jq.get(row["id"]))["status"] == "cancelled"


async def test_pause_and_resume(make_jq: Any, counting: Counter[int], prefix: str, redis_server: str) -> None:
    jq: JobQueue = make_jq()
    await jq.drain(1)
    await jq.set_paused("default", True)
    row, _ = await jq.enqueue({"type": "count", "payload": {}})
    assert (await jq.drain(2)).claimed == 0
    assert (await jq.queue_counts())["default"]["paused"] is True
    # The pause survives Redis losing its data (Postgres holds it; reconcile restores it).
    await _flush_prefix(redis_server, prefix)
    assert (await jq.drain(2)).claimed == 0
    await jq.set_paused("default", False)
    assert (await jq.drain(2)).completed == 1
    assert counting[row["id"]] == 1


async def test_the_drain_claims_no_more_than_its_free_slots_and_the_budget_end_leaves_nothing_leased(
    make_jq: Any, registry: Registry, clock: FakeClock
) -> None:
    started: list[int] = []

    @registry.job("sleepy", timeout_ms=5000)
    async def sleepy(payload: dict[str, Any], ctx: JobContext) -> None:
        started.append(ctx.job_id)
        await asyncio.sleep(2)  # longer than the drain's budget

    jq: JobQueue = make_jq(JOBQUEUE_CONCURRENCY=2, JOBQUEUE_BATCH_SIZE=10)
    await jq.drain(1)
    rows = await jq.enqueue_many([{"type": "sleepy", "payload": {}} for _ in range(6)])
    report = await jq.drain(0.6)
    # Two ran until the budget's end cut them off (a failed attempt, retried); the other four were
    # never claimed: a claim takes no more jobs than there are free slots, so none waits leased.
    assert (report.claimed, report.retried, report.released) == (2, 2, 0)
    assert len(started) == 2
    for r, _ in rows:
        job = await jq.get(r["id"])
        if r["id"] in started:
            assert job["attempts"] == 1 and job["status"] == "scheduled"
        else:
            assert job["status"] == "pending" and job["attempts"] == 0 and job["history"] == []
        assert job["lease_token"] is None
    # ...and are ready at once:
    claimed = await jq.broker.claim([("default", 10)], 10, clock.ms(), clock.ms() + 1000, "probe", 0)
    assert set(claimed.members) == {r["id"] for r, _ in rows} - set(started)


async def test_a_stop_during_a_grant_releases_what_it_granted_and_leaves_nothing_leased(
    make_jq: Any, registry: Registry, clock: FakeClock
) -> None:
    ran: list[int] = []

    @registry.job("quick")
    async def quick(payload: dict[str, Any], ctx: JobContext) -> None:
        ran.append(ctx.job_id)

    jq: JobQueue = make_jq(JOBQUEUE_BATCH_SIZE=5)
    await jq.drain(1)
    rows = await jq.enqueue_many([{"type": "quick", "payload": {}} for _ in range(5)])
    stop = asyncio.Event()
    fetch = jq.store.fetch

    async def stop_while_granting(name: str, *args: Any) -> Any:
        if name == "claim":
            stop.set()  # SIGTERM arrives while the grant is in flight
        return await fetch(name, *args)

    jq.store.fetch = stop_while_granting  # type: ignore[method-assign]
    report = await jq.drain(10, stop=stop)
    jq.store.fetch = fetch  # type: ignore[method-assign]
    assert (report.claimed, report.released, report.completed, ran) == (5, 5, 0, [])
    for r, _ in rows:
        job = await jq.get(r["id"])
        assert (job["status"], job["attempts"], job["lease_token"], job["history"]) == ("pending", 0, None, [])
    # released to the front of their list, in order, and runnable by the next drain at once
    again = await jq.drain(5)
    assert again.completed == 5 and ran == [r["id"] for r, _ in rows]


async def test_late_finisher_does_not_overwrite_a_newer_attempt(
    make_jq: Any, registry: Registry, clock: FakeClock
) -> None:
    gate = asyncio.Event()
    calls: list[int] = []

    @registry.job("stuck", max_attempts=3, timeout_ms=10_000)
    async def stuck(payload: dict[str, Any], ctx: JobContext) -> str:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            await gate.wait()  # the first runner stalls past its lease
            return "late"
        return "fresh"

    a: JobQueue = make_jq()
    b: JobQueue = make_jq()
    await a.drain(1)
    row, _ = await a.enqueue({"type": "stuck", "payload": {}})
    slow = asyncio.create_task(a.drain(3))
    while not calls:
        await asyncio.sleep(0.01)
    clock.advance(seconds=120)  # a's lease has expired
    rb = await b.drain(3)
    assert rb.completed == 1 and rb.recovered == 1
    gate.set()
    ra = await slow
    assert ra.completed == 0  # its write was refused: it no longer held the lease
    job = await a.get(row["id"])
    assert job["result"] == "fresh" and job["attempts"] == 2
