"""Retention: deletes only what is old enough, in bounded chunks, at most once per interval (on
the engine's clock), catches up on a backlog, and never runs on an idle drain."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from jobqueue import housekeeping
from jobqueue.clock import FakeClock
from jobqueue.drain import DrainReport
from jobqueue.engine import JobQueue
from jobqueue.housekeeping import housekeep, housekeeping_hook, retention
from jobqueue.registry import JobContext, Registry


@pytest.fixture
def jq(make_jq: Any, registry: Registry) -> JobQueue:
    @registry.job("ok")
    async def ok(payload: dict[str, Any], ctx: JobContext) -> None:
        return None

    q: JobQueue = make_jq(
        transport="redis",
        JOBQUEUE_RETAIN_COMPLETED_DAYS=7,
        JOBQUEUE_RETAIN_FAILED_DAYS=90,
        JOBQUEUE_HOUSEKEEPING_INTERVAL_S=600,
        # the periodic reconcile (the one allowed Postgres cost of an idle tick) stays out of the counts
        JOBQUEUE_RECONCILE_INTERVAL_S=86_400,
    )
    q.drain_hooks.append(housekeeping_hook)
    return q


async def add(jq: JobQueue, status: str, days_ago: float, n: int = 1, queue: str = "default") -> list[int]:
    """n rows of `status` that finished (or, unfinished, were created) `days_ago` days before now."""
    at = jq.clock.now() - timedelta(days=days_ago)
    fin = at if status in ("completed", "failed", "cancelled") else None
    conn = await asyncpg.connect(jq.settings.database_url)
    try:
        rows = await conn.fetch(
            "INSERT INTO jobs (queue, type, status, created_at, run_at, finished_at) "
            "SELECT $1, 'echo', $2, $3, $3, $4 FROM generate_series(1, $5) RETURNING id",
            queue,
            status,
            at,
            fin,
            n,
        )
    finally:
        await conn.close()
    return [r["id"] for r in rows]


async def remaining(jq: JobQueue, ids: list[int]) -> list[int]:
    conn = await asyncpg.connect(jq.settings.database_url)
    try:
        return [r["id"] for r in await conn.fetch("SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id", ids)]
    finally:
        await conn.close()


async def busy_drain(jq: JobQueue) -> DrainReport:
    await jq.enqueue({"type": "ok", "payload": {}})
    report: DrainReport = await jq.drain(5)
    assert report.claimed >= 1  # the first drain also runs what reconcile restored
    return report


async def test_retention_deletes_only_what_is_old_enough(jq: JobQueue) -> None:
    old_done = await add(jq, "completed", 7.01, 3)
    young_done = await add(jq, "completed", 6.99, 2)
    old_failed = await add(jq, "failed", 90.01, 2)
    young_failed = await add(jq, "failed", 89.99, 1)
    kept = young_done + young_failed
    kept += await add(jq, "cancelled", 365)  # not covered by retention
    kept += await add(jq, "pending", 365) + await add(jq, "scheduled", 365) + await add(jq, "processing", 365)
    await busy_drain(jq)
    assert await remaining(jq, old_done + old_failed + kept) == sorted(kept)


async def test_a_queue_keeps_its_own_retention_by_age_and_by_count(jq: JobQueue) -> None:
    # "webhooks": completed ones removed at once, failed ones kept 30 days but only the newest 2.
    await jq.set_queue_settings(
        "webhooks", {"retention": {"completed": {"age_days": 0}, "failed": {"age_days": 30, "count": 2}}}
    )
    await jq.set_queue_settings("audit", {"retention": {"completed": {"age_days": 365}}})
    done_now = await add(jq, "completed", 0.001, 3, queue="webhooks")
    failed_old = await add(jq, "failed", 31, 1, queue="webhooks")
    failed = await add(jq, "failed", 1, 4, queue="webhooks")
    audit_kept = await add(jq, "completed", 300, 2, queue="audit")  # past the default 7 days
    audit_gone = await add(jq, "completed", 366, 1, queue="audit")
    default_gone = await add(jq, "completed", 8, 1)  # other queues: the environment's rules
    default_failed = await add(jq, "failed", 60, 3)  # kept 90 days, however many
    everything = done_now + failed_old + failed + audit_kept + audit_gone + default_gone + default_failed
    out = await retention(jq)
    assert await remaining(jq, everything) == sorted(failed[-2:] + audit_kept + default_failed)
    assert (out.completed, out.failed, out.more) == (5, 3, False)


async def test_at_most_once_per_interval_on_the_engines_clock(jq: JobQueue, clock: FakeClock) -> None:
    await busy_drain(jq)  # the first run: nothing to delete yet
    old = await add(jq, "completed", 30, 2)
    await busy_drain(jq)
    clock.advance(seconds=599)
    await busy_drain(jq)
    assert await remaining(jq, old) == old  # not due yet
    clock.advance(seconds=1)
    await busy_drain(jq)
    assert await remaining(jq, old) == []


async def test_idle_drains_never_run_it(jq: JobQueue, clock: FakeClock) -> None:
    old = await add(jq, "completed", 30)
    await jq.drain(1)  # builds the index
    clock.advance(seconds=3600)
    jq.redis.requests = jq.store.statements = 0
    assert (await jq.drain(1)).claimed == 0
    assert (jq.redis.requests, jq.store.statements) == (1, 0)
    assert await remaining(jq, old) == old


async def test_chunks_are_bounded_and_a_backlog_continues_on_the_next_drain(
    jq: JobQueue, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "CHUNK", 2)
    monkeypatch.setattr(housekeeping, "MAX_CHUNKS", 2)
    done = await add(jq, "completed", 8, 5)
    failed = await add(jq, "failed", 100, 1)

    jq.store.statements = 0
    first = await housekeep(jq)
    assert first == housekeeping.Retention(completed=4, failed=0, chunks=2, more=True)
    assert jq.store.statements == 3  # the queues' own rules, then two chunks
    assert len(await remaining(jq, done)) == 1

    # The cap was hit, so the turn is due again at once (the clock has not moved).
    second = await housekeep(jq)
    assert second == housekeeping.Retention(completed=1, failed=1, chunks=2, more=False)
    assert await remaining(jq, done + failed) == []
    assert await housekeep(jq) is None  # caught up: back to once per interval
    clock.advance(seconds=600)
    assert await housekeep(jq) == housekeeping.Retention(completed=0, failed=0, chunks=2, more=False)


async def test_retention_statement_count_is_capped(jq: JobQueue) -> None:
    await add(jq, "completed", 8, 25)
    jq.store.statements = 0
    out = await retention(jq, chunk=3, max_chunks=5)
    assert (out.completed, out.failed, out.chunks, out.more) == (15, 0, 5, True)
    assert jq.store.statements == 6  # one read of the queues' rules, five chunks


async def test_racing_processes_take_one_turn(jq: JobQueue, make_jq: Any) -> None:
    other: JobQueue = make_jq(transport="redis")  # another worker: same Redis, same clock
    results = await asyncio.gather(*(housekeep(q) for q in (jq, other, jq, other)))
    assert sum(r is not None for r in results) == 1
