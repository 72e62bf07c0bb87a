"""The continuous drain (issue 7): no job waits for another, each lease as long as its job, queue
isolation, budget end and shutdown. Real Postgres and Redis, both transports, the injected clock;
nothing sleeps to wait for time (handlers block on events the test controls)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import redis as redis_sync

from jobqueue.clock import FakeClock
from jobqueue.drain import Drain
from jobqueue.engine import JobQueue
from jobqueue.keys import Keys
from jobqueue.registry import JobContext, Registry

from ..tcp_proxy import TcpProxy


class WorkerKilled(BaseException):
    """Stands in for the process dying mid-job: nothing after it runs, nothing is recorded."""


async def eventually(check: Callable[[], Awaitable[bool]], what: str, tries: int = 1000) -> None:
    """Wait for a condition the drain brings about (not for time: each try yields to the loop)."""
    for _ in range(tries):
        if await check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


async def status(jq: JobQueue, job_id: int) -> str:
    return str((await jq.get(job_id))["status"])


async def test_a_fast_job_claimed_with_a_slow_one_is_recorded_while_the_slow_one_runs(
    make_jq: Any, registry: Registry
) -> None:
    gate = asyncio.Event()

    @registry.job("slow", timeout_ms=30_000)
    async def slow(payload: dict[str, Any], ctx: JobContext) -> str:
        await gate.wait()
        return "slow"

    jq: JobQueue = make_jq()
    await jq.drain(1)
    slow_job, _ = await jq.enqueue({"type": "slow", "payload": {}, "priority": 9})
    fast = [r for r, _ in await jq.enqueue_many([{"type": "echo", "payload": {"i": i}} for i in range(3)])]
    running = asyncio.create_task(jq.drain(30))

    async def fast_done() -> bool:
        return all([await status(jq, r["id"]) == "completed" for r in fast])

    await eventually(fast_done, "the fast jobs completed")
    assert await status(jq, slow_job["id"]) == "processing"  # the slow one still runs: no barrier
    gate.set()
    report = await running
    assert (report.claimed, report.completed) == (4, 4)
    assert await status(jq, slow_job["id"]) == "completed"


async def test_a_killed_drains_job_is_recovered_after_its_own_timeout_plus_the_grace(
    make_jq: Any, registry: Registry, clock: FakeClock
) -> None:
    attempts: list[int] = []

    @registry.job("dies_once", timeout_ms=2000)
    async def dies_once(payload: dict[str, Any], ctx: JobContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise WorkerKilled  # SIGKILL while the job runs
        return "done"

    first: JobQueue = make_jq(JOBQUEUE_LEASE_GRACE_MS=1000)
    other: JobQueue = make_jq(JOBQUEUE_LEASE_GRACE_MS=1000)
    await first.drain(1)
    row, _ = await first.enqueue({"type": "dies_once", "payload": {}})
    try:
        await first.drain(60)  # a 60 s budget: recovery must not wait for it
    except WorkerKilled:
        pass
    else:
        raise AssertionError("the job should have killed its drain")
    assert await status(first, row["id"]) == "processing"
    clock.advance(2000 + 1000 - 1)  # just inside the job's timeout plus the grace: still leased
    assert (await other.drain(2)).claimed == 0
    clock.advance(1)  # its lease has run out: another drain runs it
    report = await other.drain(2)
    assert (report.claimed, report.recovered, report.completed) == (1, 1, 1)
    job = await other.get(row["id"])
    assert (job["status"], job["attempts"], attempts) == ("completed", 2, [1, 2])
    assert [h["outcome"] for h in job["history"]] == ["lost", "completed"]


async def test_a_long_job_under_a_live_drain_is_never_recovered_and_is_once_the_drain_dies(
    make_jq: Any, registry: Registry, clock: FakeClock
) -> None:
    gate = asyncio.Event()
    started = asyncio.Event()
    runs: list[int] = []

    @registry.job("long", timeout_ms=10_000)
    async def long(payload: dict[str, Any], ctx: JobContext) -> int:
        runs.append(ctx.attempt)
        started.set()
        if ctx.attempt == 1:
            await gate.wait()
        return ctx.attempt

    # A heartbeat interval far longer than the test, so its timer never fires: the test calls
    # the very beat the timer would, at the fake times it chooses.
    settings = {"JOBQUEUE_LEASE_GRACE_MS": 1000, "JOBQUEUE_HEARTBEAT_MS": 50_000}
    jq: JobQueue = make_jq(**settings)
    other: JobQueue = make_jq(**settings)
    await jq.drain(1)
    row, _ = await jq.enqueue({"type": "long", "payload": {}})
    live = Drain(jq, budget_s=3600, max_jobs=None, stop=None, batch=None)
    task = asyncio.create_task(live.run())
    await started.wait()
    lease_interval_ms = 10_000 + 1000
    moved = 0
    while moved < 3 * lease_interval_ms:  # three whole lease intervals, a beat every 30 s of fake time
        clock.advance(30_000)
        moved += 30_000
        await live.leases.beat()
        assert (await other.drain(1)).claimed == 0  # never recovered from under the live drain
    assert await status(jq, row["id"]) == "processing" and runs == [1]
    task.cancel()  # the drain dies (its process is gone): nothing extends the lease any more
    with contextlib.suppress(asyncio.CancelledError):
        await task
    clock.advance(2 * 50_000 + 1000)  # the last beat's horizon: two intervals plus the grace
    report = await other.drain(2)
    assert (report.recovered, report.completed) == (1, 1)
    assert runs == [1, 2]
    gate.set()


async def test_eight_concurrent_drains_run_every_job_once_in_priority_order_per_queue(
    make_jq: Any, registry: Registry
) -> None:
    runs: Counter[int] = Counter()
    started: list[tuple[int, str, int]] = []  # (job id, queue, priority), in start order

    async def fast(payload: dict[str, Any], ctx: JobContext) -> None:
        runs[ctx.job_id] += 1
        started.append((ctx.job_id, ctx.queue, payload["p"]))

    async def slow(payload: dict[str, Any], ctx: JobContext) -> None:
        await fast(payload, ctx)
        await asyncio.sleep(0.05)  # 5 % of the jobs hold their slot a while

    registry.job("fast", timeout_ms=10_000)(fast)
    registry.job("slow", timeout_ms=10_000)(slow)
    rng = random.Random(7)
    engines: list[JobQueue] = [
        make_jq(JOBQUEUE_BATCH_SIZE=40, JOBQUEUE_CONCURRENCY=30, JOBQUEUE_PG_POOL_MAX=3) for _ in range(8)
    ]
    await engines[0].drain(1)
    jobs = []
    for _ in range(3000):
        p = rng.randrange(10)
        kind = "slow" if rng.random() < 0.05 else "fast"
        jobs.append({"type": kind, "queue": f"q{rng.randrange(3)}", "priority": p, "payload": {"p": p}})
    ids = [r["id"] for i in range(0, 3000, 1000) for r, _ in await engines[0].enqueue_many(jobs[i : i + 1000])]
    drain_of: dict[int, int] = {}  # job id -> the drain whose grant it was

    def spy_grants(i: int, e: JobQueue) -> None:
        fetch = e.store.fetch

        async def spy(name: str, *args: Any) -> Any:
            rows = await fetch(name, *args)
            if name == "claim":
                drain_of.update((r["id"], i) for r in rows if r["kind"] == "run")
            return rows

        e.store.fetch = spy  # type: ignore[method-assign]

    for i, e in enumerate(engines):
        spy_grants(i, e)
    reports = await asyncio.gather(*(e.drain(60) for e in engines))
    assert sum(r.completed for r in reports) == 3000
    assert runs == Counter(dict.fromkeys(ids, 1))  # every job exactly once
    by_drain: dict[tuple[int, str], list[int]] = defaultdict(list)
    for job_id, queue, p in started:
        by_drain[(drain_of[job_id], queue)].append(p)
    for (d, queue), priorities in by_drain.items():
        # Each claim pops a queue highest priority first, so what one drain starts never goes up.
        assert priorities == sorted(priorities, reverse=True), (d, queue)
    assert len({d for d, _ in by_drain}) > 1  # the work really was shared


async def test_shutdown_and_budget_end_in_a_full_drain_record_or_release_every_claimed_job(
    make_jq: Any, registry: Registry, prefix: str, redis_server: str
) -> None:
    gate = asyncio.Event()

    @registry.job("varied", timeout_ms=30_000)
    async def varied(payload: dict[str, Any], ctx: JobContext) -> int:
        if payload["i"] % 7 == 0:
            await gate.wait()  # still running at the budget's end: cut off, and retried
        return int(payload["i"])

    jq: JobQueue = make_jq(JOBQUEUE_BATCH_SIZE=50, JOBQUEUE_CONCURRENCY=40)
    await jq.drain(1)
    await jq.enqueue_many([{"type": "varied", "payload": {"i": i}} for i in range(400)])
    stop = asyncio.Event()
    drains = [asyncio.create_task(jq.drain(1.0)), asyncio.create_task(jq.drain(30, stop=stop))]
    await asyncio.sleep(0.3)
    stop.set()  # SIGTERM for the second drain, while the first runs into its budget's end
    budget_end = await drains[0]  # its blocked jobs were cut off at its deadline
    gate.set()  # the stopped drain's blocked jobs may finish now: it waits for what runs
    stopped = await drains[1]
    assert budget_end.retried > 0 and stopped.completed > 0
    for report in (budget_end, stopped):
        assert report.claimed == report.completed + report.retried + report.failed + report.released
    conn = await asyncpg.connect(jq.settings.database_url)
    try:
        leased = await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'processing' OR lease_token IS NOT NULL")
        counts = dict(await conn.fetch("SELECT status, count(*) FROM jobs GROUP BY status"))
    finally:
        await conn.close()
    assert leased == 0
    assert sum(counts.values()) == 400 and set(counts) <= {"completed", "scheduled", "pending"}
    # Nothing is left in the processing set either: every lease entry was acknowledged.
    assert redis_sync.Redis.from_url(redis_server).zcard(Keys(prefix).processing("default")) == 0


async def test_a_slow_queue_at_its_share_does_not_hold_back_another_queue(make_jq: Any, registry: Registry) -> None:
    gate = asyncio.Event()

    @registry.job("campaign", queue="campaigns", timeout_ms=30_000)
    async def campaign(payload: dict[str, Any], ctx: JobContext) -> None:
        await gate.wait()

    # 4 slots, a queue may hold half of them.
    jq: JobQueue = make_jq(JOBQUEUE_CONCURRENCY=4, JOBQUEUE_QUEUE_SHARE=0.5)
    await jq.drain(1)
    campaigns = [r for r, _ in await jq.enqueue_many([{"type": "campaign", "payload": {}} for _ in range(10)])]
    running = asyncio.create_task(jq.drain(30))

    async def two_running() -> bool:
        return [await status(jq, r["id"]) for r in campaigns].count("processing") == 2

    await eventually(two_running, "the campaigns queue filled its share")
    hook, _ = await jq.enqueue({"type": "echo", "queue": "webhooks", "payload": {}})

    async def hook_done() -> bool:
        return await status(jq, hook["id"]) == "completed"

    await eventually(hook_done, "the other queue's job ran at once")
    assert [await status(jq, r["id"]) for r in campaigns].count("processing") == 2  # never more than its share
    gate.set()
    report = await running
    assert report.completed == 11


async def test_recording_survives_a_short_postgres_outage_and_runs_nothing_twice(
    make_jq: Any, registry: Registry, database_url: str
) -> None:
    gate = asyncio.Event()
    runs: Counter[int] = Counter()

    @registry.job("held", timeout_ms=30_000)
    async def held(payload: dict[str, Any], ctx: JobContext) -> int:
        runs[ctx.job_id] += 1
        await gate.wait()
        return ctx.job_id

    proxy = await TcpProxy("127.0.0.1", 5432).start()
    try:
        via_proxy = database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        jq: JobQueue = make_jq(JOBQUEUE_PG_TIMEOUT_S=1)
        jq.store.dsn = via_proxy  # the engine reaches Postgres through the proxy only
        await jq.drain(1)
        rows = [r for r, _ in await jq.enqueue_many([{"type": "held", "payload": {"i": i}} for i in range(25)])]
        draining = asyncio.create_task(jq.drain(30))

        async def all_running() -> bool:
            return sum(runs.values()) == 25

        await eventually(all_running, "25 jobs in flight")
        proxy.down()  # Postgres goes away just as the outcomes come in...
        gate.set()
        await asyncio.sleep(1.5)  # ...for 1.5 s of real time: the outage itself, not a timer under test
        proxy.up()
        report = await draining
    finally:
        await proxy.close()
    assert report.completed == 25
    assert runs == Counter({r["id"]: 1 for r in rows})  # recorded after the outage: nothing ran twice
    conn = await asyncpg.connect(database_url)
    try:
        statuses = await conn.fetch("SELECT status, attempts FROM jobs WHERE id = ANY($1)", [r["id"] for r in rows])
    finally:
        await conn.close()
    assert [tuple(r) for r in statuses] == [("completed", 1)] * 25
