"""Flow control with real drains (issue 11): group limits across parallel drains seen by real
webhook receivers, a throttled group that does not hold back another, RateLimited, priority
aging, what a gated drain costs and says, settings over the engine, and a flush. Real Postgres
and Redis, both transports, the injected clock (rates and aging move only when the test says)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from jobqueue import RateLimited
from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue
from jobqueue.errors import InvalidJob
from jobqueue.registry import JobContext, Registry

from ..helpers.receivers import OK, Receiver, Request

QUEUE = "flow"


def work_type(registry: Registry, name: str = "work", **options: Any) -> list[tuple[int, str | None]]:
    """A job type in QUEUE that records (job id, group) as each job starts."""
    started: list[tuple[int, str | None]] = []

    @registry.job(name, queue=QUEUE, **options)
    async def work(payload: dict[str, Any], ctx: JobContext) -> str:
        started.append((ctx.job_id, payload.get("g")))
        return "ok"

    return started


async def enqueue(jq: JobQueue, groups: list[str | None], type: str = "work", **extra: Any) -> list[int]:
    rows = await jq.enqueue_many([{"type": type, "payload": {"g": g}, "group": g, **extra} for g in groups])
    return [r["id"] for r, _ in rows]


async def statuses(jq: JobQueue, ids: list[int]) -> Counter[str]:
    return Counter([str((await jq.get(i))["status"]) for i in ids])


# --- groups across parallel drains -----------------------------------------------------------


async def test_eight_parallel_drains_never_deliver_more_than_two_at_once_to_a_receiver(make_jq: Any) -> None:
    async def slow_ok(writer: asyncio.StreamWriter, request: Request) -> None:
        await asyncio.sleep(0.03)  # holds its slot a while: the drains overlap
        writer.write(OK)
        await writer.drain()

    receivers = [await Receiver(slow_ok).start() for _ in range(3)]
    drains = [make_jq(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True) for _ in range(8)]
    jq = drains[0]
    await jq.set_queue_settings("default", {"group_concurrency": 2})
    ids: list[int] = []
    for _ in range(12):
        for r in receivers:
            row, _ = await jq.enqueue({"type": "webhook.deliver", "payload": {"url": r.url()}})
            ids.append(row["id"])
    # The default group of a delivery is its receiver.
    assert {(await jq.get(i))["group_key"] for i in ids} == {f"127.0.0.1:{r.port}" for r in receivers}
    for _ in range(20):  # ticks, as a scheduler would send them, until the work is done
        await asyncio.gather(*(d.drain(5) for d in drains))
        if (await statuses(jq, ids))["completed"] == len(ids):
            break
    assert await statuses(jq, ids) == Counter(completed=36)
    for r in receivers:
        assert len(r.requests) == 12
        assert r.max_open == 2  # the limit held, and was used
    for r in receivers:
        await r.stop()


async def test_a_group_at_its_rate_does_not_delay_another_groups_jobs(
    make_jq: Any, registry: Registry, clock: FakeClock
) -> None:
    started = work_type(registry)
    jq: JobQueue = make_jq()
    await jq.set_queue_settings(QUEUE, {"group_rate": {"limit": 10, "period_ms": 1000, "burst": 10}})
    busy = await enqueue(jq, ["busy"] * 50)  # first in line
    quiet = await enqueue(jq, ["quiet"] * 10)
    report = await jq.drain(5)
    assert await statuses(jq, quiet) == Counter(completed=10)  # none waited behind "busy"
    assert await statuses(jq, busy) == Counter(completed=10, pending=40)  # its burst, no more
    assert report.gated_until_ms is not None and report.gated_until_ms > clock.ms()
    assert report.contract()["gated_until"] is not None
    # Within a group, FIFO.
    assert [i for i, g in started if g == "busy"] == busy[:10]
    clock.advance(1000)  # one period: ten more
    await jq.drain(5)
    assert await statuses(jq, busy) == Counter(completed=20, pending=30)
    assert [i for i, g in started if g == "busy"] == busy[:20]


async def test_queue_concurrency_holds_across_drains_and_the_rest_runs_as_slots_free(
    make_jq: Any, registry: Registry
) -> None:
    running, peak = 0, 0
    gate = asyncio.Event()

    @registry.job("held", queue=QUEUE)
    async def held(payload: dict[str, Any], ctx: JobContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1

    drains = [make_jq() for _ in range(4)]
    await drains[0].set_queue_settings(QUEUE, {"concurrency": 3})
    ids = await enqueue(drains[0], [None] * 10, type="held")
    tasks = [asyncio.create_task(d.drain(10)) for d in drains]
    for _ in range(200):
        if running == 3:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # the other drains claim meanwhile, and get nothing
    assert running == 3
    gate.set()
    await asyncio.gather(*tasks)
    while (await statuses(drains[0], ids))["completed"] < 10:
        await asyncio.gather(*(d.drain(5) for d in drains))
    assert peak == 3


async def test_a_fair_type_serves_its_groups_in_turns(make_jq: Any, registry: Registry) -> None:
    started = work_type(registry, "fair", fair=True)
    jq: JobQueue = make_jq(JOBQUEUE_BATCH_SIZE=20)
    big = await enqueue(jq, ["big"] * 40, type="fair")
    small = await enqueue(jq, ["small"] * 3, type="fair")
    await jq.drain(10, max_jobs=20)
    # One claim of 20 looks at up to 80 waiting jobs and serves their groups in turns: the three
    # "small" jobs are not behind forty "big" ones.
    assert Counter(g for _, g in started) == Counter(big=17, small=3)
    while (await statuses(jq, big + small))["completed"] < 43:
        await jq.drain(5)
    assert [i for i, g in started if g == "big"] == big  # FIFO within each group
    assert [i for i, g in started if g == "small"] == small


async def test_a_type_concurrency_holds_beside_the_queues(make_jq: Any, registry: Registry) -> None:
    running, peak = Counter[str](), Counter[str]()
    gate = asyncio.Event()

    @registry.job("limited", queue=QUEUE, concurrency=2)
    async def limited(payload: dict[str, Any], ctx: JobContext) -> None:
        running["limited"] += 1
        peak["limited"] = max(peak["limited"], running["limited"])
        await gate.wait()
        running["limited"] -= 1

    started = work_type(registry, "free")
    drains = [make_jq() for _ in range(3)]
    jq = drains[0]
    slow = await enqueue(jq, [None] * 6, type="limited")
    free = await enqueue(jq, [None] * 5, type="free")
    tasks = [asyncio.create_task(d.drain(10)) for d in drains]
    for _ in range(300):
        if running["limited"] == 2 and len(started) == 5:
            break
        await asyncio.sleep(0.01)
    assert running["limited"] == 2 and len(started) == 5  # the other type is not held back
    gate.set()
    await asyncio.gather(*tasks)
    while (await statuses(jq, slow + free))["completed"] < 11:
        await asyncio.gather(*(d.drain(5) for d in drains))
    assert peak["limited"] == 2


# --- RateLimited -----------------------------------------------------------------------------


async def test_rate_limited_holds_the_group_gives_the_attempt_back_and_lets_others_run(
    make_jq: Any, registry: Registry, clock: FakeClock
) -> None:
    calls: list[tuple[int, int]] = []

    @registry.job("api", queue=QUEUE, max_attempts=1)
    async def api(payload: dict[str, Any], ctx: JobContext) -> str:
        calls.append((ctx.job_id, ctx.attempt))
        if len(calls) == 1:  # the very first call: the receiver says "slow down" for 5 s
            raise RateLimited(5000, "HTTP 429")
        return "ok"

    jq: JobQueue = make_jq()
    first = await enqueue(jq, ["throttled"], type="api")
    report = await jq.drain(5)
    assert report.contract()["gated_until"] is not None
    later = await enqueue(jq, ["throttled"] * 2, type="api")
    other = await enqueue(jq, ["other"] * 2, type="api")
    await jq.drain(5)
    assert await statuses(jq, other) == Counter(completed=2)
    assert await statuses(jq, first + later) == Counter(pending=3)  # the group waits its 5 s
    row = await jq.get(first[0])
    assert row["attempts"] == 0  # max_attempts=1, and not spent
    assert (row["history"][-1]["outcome"], row["history"][-1]["error"]) == ("rate_limited", "RateLimited: HTTP 429")
    clock.advance(5001)
    await jq.drain(5)
    assert await statuses(jq, first + later) == Counter(completed=3)
    order = [i for i, _ in calls if i in first + later]
    assert order == [first[0], first[0], *later]  # it kept its place at the head of its group
    assert all(attempt == 1 for _, attempt in calls)


async def test_a_job_rate_limited_without_a_group_holds_its_queue(
    make_jq: Any, registry: Registry, clock: FakeClock
) -> None:
    throttle: set[int] = set()  # the jobs whose next run says "slow down"

    @registry.job("plain", queue=QUEUE)
    async def plain(payload: dict[str, Any], ctx: JobContext) -> None:
        if ctx.job_id in throttle:
            throttle.discard(ctx.job_id)
            raise RateLimited(2000)

    jq: JobQueue = make_jq()
    ids = await enqueue(jq, [None], type="plain")
    throttle.update(ids)
    await jq.drain(5)
    more = await enqueue(jq, [None], type="plain")
    await jq.drain(5)
    assert await statuses(jq, ids + more) == Counter(pending=2)
    clock.advance(2001)
    await jq.drain(5)
    assert await statuses(jq, ids + more) == Counter(completed=2)


# --- priority aging --------------------------------------------------------------------------


@pytest.mark.parametrize("aging_ms", [None, 1000])
async def test_aging_starts_a_low_priority_job_within_its_bound_under_a_stream_of_urgent_work(
    make_jq: Any, registry: Registry, clock: FakeClock, aging_ms: int | None
) -> None:
    started = work_type(registry)
    jq: JobQueue = make_jq(JOBQUEUE_BATCH_SIZE=5)
    if aging_ms:
        await jq.set_queue_settings(QUEUE, {"aging_ms": aging_ms})
    await enqueue(jq, [None] * 5, priority=9)
    (low,) = await enqueue(jq, [None], priority=0)
    enqueued_at = clock.ms()
    started_at = None
    for _ in range(60):  # a drain interval of 250 ms, more priority-9 work each time than it takes
        await enqueue(jq, [None] * 6, priority=9)
        await jq.drain(5, max_jobs=5)
        if any(i == low for i, _ in started):
            started_at = clock.ms()
            break
        clock.advance(250)
    if aging_ms is None:
        assert started_at is None  # strictly by priority: it waits while urgent work keeps coming
    else:
        assert started_at is not None and started_at - enqueued_at <= 9 * aging_ms + 250


# --- cost and visibility ---------------------------------------------------------------------


async def test_a_fully_gated_drain_is_one_request_and_no_statement(make_jq: Any, registry: Registry) -> None:
    gate = asyncio.Event()

    @registry.job("held", queue=QUEUE)
    async def held(payload: dict[str, Any], ctx: JobContext) -> None:
        await gate.wait()

    holder, gated = make_jq(), make_jq()
    await holder.set_queue_settings(QUEUE, {"concurrency": 1})
    await enqueue(holder, [None] * 3, type="held")
    await gated.drain(1)  # learns the queues (and the first look costs what it costs)
    task = asyncio.create_task(holder.drain(10))
    for _ in range(200):
        if (await statuses(holder, list(range(1, 4))))["processing"] == 1:
            break
        await asyncio.sleep(0.01)
    gated.redis.requests = gated.store.statements = 0
    report = await gated.drain(5)
    assert (gated.redis.requests, gated.store.statements) == (1, 0)
    assert report.claimed == 0 and report.contract()["gated_until"] == "slot"
    gate.set()
    await task


async def test_flow_stats_show_running_and_parked_per_group(make_jq: Any, registry: Registry) -> None:
    gate = asyncio.Event()

    @registry.job("held", queue=QUEUE)
    async def held(payload: dict[str, Any], ctx: JobContext) -> None:
        await gate.wait()

    jq: JobQueue = make_jq()
    await jq.set_queue_settings(QUEUE, {"group_concurrency": 1})
    await enqueue(jq, ["a"] * 4 + ["b"] * 2, type="held")
    task = asyncio.create_task(jq.drain(10))
    for _ in range(200):
        stats = (await jq.broker.flow_stats([QUEUE], jq.clock.ms()))[QUEUE]
        if stats["running"] == 2 and stats["parked"] == 4:
            break
        await asyncio.sleep(0.01)
    assert stats["running"] == 2 and stats["parked"] == 4
    assert [p["parked"] for p in stats["top_parked"]] == [3, 1]  # group a's three, then b's one
    gate.set()
    await task


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"concurrency": -1}, "concurrency"),
        ({"concurrency": 0}, "concurrency"),
        ({"rate": {"limit": 5, "period_ms": 0}}, "rate.period_ms"),
        ({"group_rate": {"limit": 0, "period_ms": 1000}}, "group_rate.limit"),
        ({"rate": {"limit": 5, "period_ms": 1000, "extra": 1}}, "rate.extra"),
        ({"colour": "blue"}, "colour"),
        ({"aging_ms": 0}, "aging_ms"),
        ({"retention": {"failed": {"age_days": -1}}}, "retention.failed.age_days"),
        ({"defaults": {"max_attempts": 0}}, "defaults.max_attempts"),
    ],
)
async def test_bad_settings_are_refused_naming_the_field_and_change_nothing(
    jq: JobQueue, patch: dict[str, Any], field: str
) -> None:
    await jq.set_queue_settings(QUEUE, {"concurrency": 4})
    with pytest.raises(InvalidJob) as e:
        await jq.set_queue_settings(QUEUE, patch)
    assert e.value.field == field
    assert (await jq.queue_settings(QUEUE)).concurrency == 4
    limits = await jq.redis.command("HGET", jq.keys.limits(QUEUE), "c")
    assert limits == "4"


async def test_settings_merge_and_clear_and_reach_the_claims(jq: JobQueue) -> None:
    await jq.set_queue_settings(QUEUE, {"concurrency": 4, "group_rate": {"limit": 2, "period_ms": 1000}})
    merged = await jq.set_queue_settings(QUEUE, {"concurrency": None, "aging_ms": 500})
    assert merged.concurrency is None and merged.group_rate is not None and merged.aging_ms == 500
    raw = await jq.redis.command("HGETALL", jq.keys.limits(QUEUE))
    fields = raw if isinstance(raw, dict) else dict(zip(raw[::2], raw[1::2], strict=True))
    assert fields == {"gr": "2/1000/1", "aging": "500"}


async def test_queue_defaults_apply_to_jobs_whose_type_and_request_set_none(jq: JobQueue, registry: Registry) -> None:
    work_type(registry, "plain_defaults")
    await jq.set_queue_settings(QUEUE, {"defaults": {"max_attempts": 7, "timeout_ms": 1234}})
    (jid,) = await enqueue(jq, [None], type="plain_defaults")
    row = await jq.get(jid)
    assert (row["max_attempts"], row["timeout_ms"]) == (7, 1234)
    (own,) = await enqueue(jq, [None], type="plain_defaults", max_attempts=2)
    assert (await jq.get(own))["max_attempts"] == 2


# --- a flush ---------------------------------------------------------------------------------


async def test_after_a_flush_the_counts_are_rebuilt_before_anything_is_admitted(
    make_jq: Any, registry: Registry
) -> None:
    gate = asyncio.Event()
    running = Counter[str]()
    peak = Counter[str]()

    @registry.job("held", queue=QUEUE)
    async def held(payload: dict[str, Any], ctx: JobContext) -> None:
        running[payload["g"]] += 1
        peak[payload["g"]] = max(peak[payload["g"]], running[payload["g"]])
        await gate.wait()
        running[payload["g"]] -= 1

    first, second = make_jq(), make_jq()
    await first.set_queue_settings(QUEUE, {"group_concurrency": 2})
    ids = await enqueue(first, ["a"] * 6, type="held")
    task = asyncio.create_task(first.drain(10))
    for _ in range(200):
        if running["a"] == 2:
            break
        await asyncio.sleep(0.01)
    await first.broker.forget_prefix()  # Redis loses everything while two jobs run
    await second.drain(1)  # rebuilds from Postgres (the running two counted), then claims
    assert running["a"] == 2 and (await statuses(second, ids))["processing"] == 2
    gate.set()
    await task
    while (await statuses(second, ids))["completed"] < 6:
        await asyncio.gather(first.drain(5), second.drain(5))
    assert peak["a"] == 2
    assert await first.redis.command("HGETALL", first.keys.inflight(QUEUE)) in ({}, [])
