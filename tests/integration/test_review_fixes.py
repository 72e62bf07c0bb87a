"""Failures found in review, each with the test named for it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue
from jobqueue.registry import JobContext, Registry


@pytest.fixture
def poison(registry: Registry) -> Registry:
    @registry.job("nul_result")
    async def nul_result(payload: dict[str, Any], ctx: JobContext) -> str:
        return "a\x00b"

    @registry.job("nul_error", max_attempts=1)
    async def nul_error(payload: dict[str, Any], ctx: JobContext) -> None:
        raise ValueError("bad byte \x00 and a lone \ud800 surrogate")

    @registry.job("fine")
    async def fine(payload: dict[str, Any], ctx: JobContext) -> int:
        return 1

    return registry


async def test_a_result_postgres_cannot_store_fails_only_its_own_job(make_jq: Any, poison: Registry) -> None:
    jq: JobQueue = make_jq(poison)
    bad, _ = await jq.enqueue({"type": "nul_result", "payload": {}})
    bad_error, _ = await jq.enqueue({"type": "nul_error", "payload": {}})
    good = [r for r, _ in await jq.enqueue_many([{"type": "fine", "payload": {}} for _ in range(5)])]
    report = await jq.drain(5)
    assert (report.completed, report.failed) == (5, 2)
    for r in good:
        assert (await jq.get(r["id"]))["status"] == "completed"
    job = await jq.get(bad["id"])
    assert job["status"] == "failed" and "NUL" in job["error"]
    job = await jq.get(bad_error["id"])
    assert job["status"] == "failed"
    assert job["error"].startswith("ValueError: bad byte \\x00 and a lone ? surrogate")


async def test_an_uncapped_exponential_backoff_never_overflows(
    make_jq: Any, registry: Registry, clock: FakeClock
) -> None:
    @registry.job("always_fails", max_attempts=100)
    async def always_fails(payload: dict[str, Any], ctx: JobContext) -> None:
        raise RuntimeError("no")

    jq: JobQueue = make_jq(registry)
    row, _ = await jq.enqueue(
        {"type": "always_fails", "payload": {}, "backoff": {"type": "exponential", "delay_ms": 1000, "max_delay_ms": 0}}
    )
    async with jq.store.connection() as conn:  # as if 60 attempts had already failed
        await conn.execute("UPDATE jobs SET attempts = 60 WHERE id = $1", row["id"])
    report = await jq.drain(5)
    assert report.retried == 1
    job = await jq.get(row["id"])
    assert (job["run_at"] - clock.now()).days == 30  # capped, not year 9999


async def test_a_lease_is_the_jobs_own_timeout_plus_grace_capped_by_the_drains_end(
    make_jq: Any, registry: Registry
) -> None:
    seen: dict[int, Any] = {}

    async def look(payload: dict[str, Any], ctx: JobContext) -> None:
        seen[ctx.job_id] = (await jq.get(ctx.job_id))["lease_expires_at"]

    registry.job("short", timeout_ms=100)(look)
    registry.job("long", timeout_ms=600_000)(look)
    jq: JobQueue = make_jq(registry, JOBQUEUE_LEASE_GRACE_MS=1000)
    short, _ = await jq.enqueue({"type": "short", "payload": {}})
    long, _ = await jq.enqueue({"type": "long", "payload": {}})
    now = jq.clock.now()  # a FakeClock: the grant runs at this instant
    await jq.drain(8)
    # Outcomes are recorded as they come, so a lease need not outlive the drain: a dead drain's
    # short job is recoverable 1.1 s after its start, not after the whole drain's budget...
    assert (seen[short["id"]] - now).total_seconds() == 1.1
    # ...and no lease outlives the drain's deadline (8 s) plus the grace: nothing runs past it.
    assert 8 < (seen[long["id"]] - now).total_seconds() <= 9


async def test_one_busy_queue_does_not_starve_the_others(make_jq: Any, registry: Registry) -> None:
    ran: list[str] = []

    @registry.job("mark")
    async def mark(payload: dict[str, Any], ctx: JobContext) -> None:
        ran.append(ctx.queue)

    jq: JobQueue = make_jq(registry, JOBQUEUE_BATCH_SIZE=5, JOBQUEUE_DRAIN_LANES=1)
    await jq.drain(1)
    await jq.enqueue_many([{"type": "mark", "payload": {}, "queue": "aaa"} for _ in range(50)])
    await jq.enqueue({"type": "mark", "payload": {}, "queue": "zzz"})
    for _ in range(3):
        await jq.drain(5, max_jobs=5)
    assert "zzz" in ran and len(ran) == 15


async def test_a_drain_does_not_spin_while_another_rebuilds_the_index(make_jq: Any) -> None:
    jq: JobQueue = make_jq()
    await jq.redis.command("SET", jq.keys.reconcile_lock, "someone-else", "PX", 60_000)
    jq.redis.requests = 0
    report = await asyncio.wait_for(jq.drain(2), timeout=5)
    assert report.claimed == 0
    assert jq.redis.requests <= 3  # one claim (epoch missing), one lock attempt: then it leaves


async def test_the_periodic_reconcile_restores_pause_flags_and_forgotten_queues(
    make_jq: Any, clock: FakeClock, registry: Registry
) -> None:
    jq: JobQueue = make_jq()
    await jq.drain(1)
    await jq.set_paused("reports", True)
    await jq.enqueue({"type": "echo", "payload": {}, "queue": "reports"})
    row, _ = await jq.enqueue({"type": "echo", "payload": {}, "queue": "forgotten"})
    # Redis loses the small sets (an eviction), and a new process knows neither queue
    await jq.redis.command("DEL", jq.keys.paused, jq.keys.queues)
    other: JobQueue = make_jq()
    clock.advance(seconds=301)
    report = await other.drain(5)
    assert report.completed == 1  # the forgotten queue's job; the paused queue stays paused
    assert (await other.get(row["id"]))["status"] == "completed"
    assert set(await other.redis.command("SMEMBERS", other.keys.paused)) == {"reports"}
    assert (await other.queue_counts())["reports"]["counts"]["pending"] == 1


async def test_cancel_removes_a_delayed_entry_at_once(make_jq: Any) -> None:
    jq: JobQueue = make_jq()
    row, _ = await jq.enqueue({"type": "echo", "payload": {}, "delay_ms": 60_000})
    assert await jq.redis.command("ZCARD", jq.keys.delayed("default")) == 1
    await jq.cancel(row["id"])
    assert await jq.redis.command("ZCARD", jq.keys.delayed("default")) == 0


async def test_history_times_are_utc_whatever_the_session_time_zone(make_jq: Any, database_url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"ALTER DATABASE {database_url.rpartition('/')[2]} SET timezone TO 'America/New_York'")
    finally:
        await conn.close()
    jq: JobQueue = make_jq()
    row, _ = await jq.enqueue({"type": "echo", "payload": {}})
    await jq.drain(5)
    entry = (await jq.get(row["id"]))["history"][0]
    assert entry["started_at"].endswith("Z") and entry["ended_at"].endswith("Z")
