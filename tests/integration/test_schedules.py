"""Recurring jobs (issue 10): exactly once per tick whatever runs, the misfire and overlap
policies, code declarations synced idempotently, bad definitions refused, and the cost of a tick.
Real Postgres and Redis, both transports, an injected clock stepped through the ticks."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
import redis as redis_sync
from pydantic import BaseModel

from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue
from jobqueue.errors import InvalidJob
from jobqueue.registry import Blueprint, JobContext, Registry
from jobqueue.schedules import ScheduleNotFound

MINUTE = 60_000


def at_minute(clock: FakeClock) -> None:
    """Put the clock on a whole hour, so that every tick (minutely, every 2 or 5 minutes) falls
    where the test says."""
    now = clock.now()
    clock.advance(60 * MINUTE - (now.minute * MINUTE + now.second * 1000 + now.microsecond // 1000))


async def jobs_per_tick(jq: JobQueue) -> dict[str, Counter[datetime]]:
    conn = await asyncpg.connect(jq.settings.database_url)
    try:
        rows = await conn.fetch("SELECT schedule_id, scheduled_for FROM jobs WHERE schedule_id IS NOT NULL")
    finally:
        await conn.close()
    out: dict[str, Counter[datetime]] = {}
    for r in rows:
        out.setdefault(r["schedule_id"], Counter())[r["scheduled_for"]] += 1
    return out


async def test_a_schedule_fires_its_tick_once_and_shows_it(jq: JobQueue, clock: FakeClock) -> None:
    at_minute(clock)
    start = clock.now()
    view, created = await jq.schedules.put(
        "hourly-sync", {"type": "echo", "payload": {"crm": 1}, "cron": "*/5 * * * *"}
    )
    assert created and view.next_run_at == start + timedelta(minutes=5) and view.source == "api"
    assert (await jq.drain(1)).fired == 0
    clock.advance(5 * MINUTE)
    report = await jq.drain(2)
    assert (report.fired, report.completed) == (1, 1)
    again = await jq.schedules.get("hourly-sync")
    assert again.next_run_at == start + timedelta(minutes=10) and again.last_run_at == start + timedelta(minutes=5)
    rows, _ = await jq.list_jobs(schedule_id="hourly-sync")
    assert [(r["schedule_id"], r["scheduled_for"], r["payload"]) for r in rows] == [
        ("hourly-sync", start + timedelta(minutes=5), {"crm": 1})
    ]
    assert again.last_job_id == rows[0]["id"] and again.last_job_status == "completed"
    assert (await jq.drain(2)).fired == 0  # the same tick never again


async def test_sixteen_drains_through_two_hundred_ticks_fire_each_tick_once(
    make_jq: Any, clock: FakeClock, redis_server: str, prefix: str
) -> None:
    at_minute(clock)
    drains: list[JobQueue] = [make_jq(JOBQUEUE_PG_POOL_MAX=2) for _ in range(16)]
    first = drains[0]
    await first.drain(1)
    for policy in ("catch_up", "coalesce", "skip"):
        await first.schedules.put(f"every-minute-{policy}", {"type": "echo", "every_ms": MINUTE, "misfire": policy})
    await first.schedules.put("cron-two-minutes", {"type": "echo", "cron": "*/2 * * * *", "misfire": "catch_up"})
    rng = random.Random(10)
    # Stall at random between noticing due ticks (the claim) and firing them (the statement).
    for d in drains:
        fire = d.schedules.fire

        async def stalled(due: list[str], fire: Any = fire) -> int:
            await asyncio.sleep(rng.random() * 0.01)
            return int(await fire(due))

        d.schedules.fire = stalled  # type: ignore[method-assign]
    flush = redis_sync.Redis.from_url(redis_server)
    for step in range(200):
        clock.advance(MINUTE)
        if step == 100:  # Redis loses everything in the middle
            flush.delete(*flush.keys(f"{prefix}:*"))
        # All 16 drains at once, then a duplicate platform trigger of half of them.
        await asyncio.gather(*(d.drain(5) for d in drains))
        await asyncio.gather(*(d.drain(5) for d in drains[:8]))
    ticks = await jobs_per_tick(first)
    end = clock.now()
    minutes = {end - timedelta(minutes=k) for k in range(200)}
    for policy in ("catch_up", "coalesce", "skip"):
        assert ticks[f"every-minute-{policy}"] == Counter(dict.fromkeys(minutes, 1)), policy
    even = {t for t in minutes if t.minute % 2 == 0}
    assert ticks["cron-two-minutes"] == Counter(dict.fromkeys(even, 1))


async def test_three_hours_of_downtime_then_one_drain(jq: JobQueue, clock: FakeClock) -> None:
    at_minute(clock)
    for policy in ("coalesce", "catch_up", "skip"):
        await jq.schedules.put(policy, {"type": "echo", "cron": "*/5 * * * *", "misfire": policy, "catch_up_limit": 10})
    await jq.drain(1)
    start = clock.now()
    clock.advance(3 * 60 * MINUTE + 2 * MINUTE)  # 36 ticks of every 5 minutes pass while nothing drains
    await jq.drain(5)
    ticks = await jobs_per_tick(jq)
    latest = start + timedelta(hours=3)
    assert ticks["coalesce"] == Counter({latest: 1})  # one job, for the latest tick
    assert "skip" not in ticks  # the latest tick is 2 minutes old, past the 60 s grace: none
    assert sorted(ticks["catch_up"]) == [start + timedelta(minutes=5 * k) for k in range(1, 11)]
    for _ in range(3):  # the rest on the next passes, ten at a time
        clock.advance(1000)
        await jq.drain(5)
    ticks = await jobs_per_tick(jq)
    assert len(ticks["catch_up"]) == 36 and set(ticks["catch_up"].values()) == {1}


async def test_a_clock_moved_backwards_fires_no_tick_twice(jq: JobQueue, clock: FakeClock) -> None:
    at_minute(clock)
    await jq.schedules.put("m", {"type": "echo", "every_ms": MINUTE})
    await jq.drain(1)
    clock.advance(MINUTE)
    assert (await jq.drain(2)).fired == 1
    clock.advance(-3 * MINUTE)  # an NTP correction, a laptop waking up
    assert (await jq.drain(2)).fired == 0
    clock.advance(3 * MINUTE)
    assert (await jq.drain(2)).fired == 0  # back where it was: the tick it fired is done
    clock.advance(MINUTE)
    assert (await jq.drain(2)).fired == 1
    assert set((await jobs_per_tick(jq))["m"].values()) == {1}


async def test_overlap_skip_makes_no_second_job_while_the_first_runs(
    make_jq: Any, registry: Registry, clock: FakeClock
) -> None:
    gate = asyncio.Event()

    # A lease far longer than the minutes the test steps through (in real time the running
    # drain's heartbeat would keep extending it; here the fake clock jumps a minute at a time).
    @registry.job("report", timeout_ms=900_000)
    async def report(payload: dict[str, Any], ctx: JobContext) -> None:
        await gate.wait()

    jq: JobQueue = make_jq(reg=registry)
    other: JobQueue = make_jq(reg=registry)
    at_minute(clock)
    await jq.schedules.put("r", {"type": "report", "every_ms": MINUTE, "overlap": "skip"})
    await jq.drain(1)
    clock.advance(MINUTE)
    running = asyncio.create_task(jq.drain(3600))
    while not (await jobs_per_tick(jq)).get("r"):
        await asyncio.sleep(0.01)
    for _ in range(3):  # three more ticks while the first job runs: none makes a job
        clock.advance(MINUTE)
        assert (await other.drain(2)).fired == 0
    gate.set()
    await running
    clock.advance(MINUTE)
    assert (await other.drain(2)).fired == 1  # finished: the next tick fires again
    assert sum(len(c) for c in (await jobs_per_tick(jq)).values()) == 2


def code_registry(registry: Registry, **spec: Any) -> Registry:
    bp = Blueprint()

    @bp.schedule("nightly", cron="0 3 * * *", tz="Europe/Berlin", **spec)
    @bp.job("report.nightly")
    async def nightly(payload: dict[str, Any], ctx: JobContext) -> None:
        return None

    registry.add_blueprint(bp)
    return registry


async def test_concurrent_syncs_of_the_same_code_change_nothing_and_fire_nothing(
    make_jq: Any, registry: Registry, clock: FakeClock
) -> None:
    reg = code_registry(registry, payload={"v": 1})
    cold_starts = [make_jq(reg=reg, JOBQUEUE_PG_POOL_MAX=2) for _ in range(8)]
    assert sum(await asyncio.gather(*(j.schedules.sync() for j in cold_starts))) == 1  # one wrote it
    first = await cold_starts[0].schedules.get("nightly")
    clock.advance(seconds=30)
    assert sum(await asyncio.gather(*(j.schedules.sync() for j in cold_starts))) == 0
    after = await cold_starts[0].schedules.get("nightly")
    assert (after.next_run_at, after.updated_at, after.source) == (first.next_run_at, first.updated_at, "code")
    assert await jobs_per_tick(cold_starts[0]) == {}


async def test_a_sync_moves_the_next_run_only_when_the_timing_changed(
    make_jq: Any, clock: FakeClock, registry: Registry
) -> None:
    jq: JobQueue = make_jq(reg=code_registry(registry, payload={"v": 1}))
    await jq.schedules.sync()
    before = await jq.schedules.get("nightly")
    clock.advance(seconds=3600 * 30)  # past a tick nobody drained
    changed_payload = make_jq(reg=code_registry(Registry(), payload={"v": 2}))
    assert await changed_payload.schedules.sync() == 1
    view = await jq.schedules.get("nightly")
    assert (view.payload, view.next_run_at) == ({"v": 2}, before.next_run_at)  # the missed tick still fires
    changed_timing = make_jq(reg=code_registry(Registry(), payload={"v": 2}, misfire="skip"))
    await changed_timing.schedules.sync()  # not a timing field either
    assert (await jq.schedules.get("nightly")).next_run_at == before.next_run_at


async def test_the_drains_sync_the_codes_schedules_lazily_once(make_jq: Any, registry: Registry) -> None:
    jq: JobQueue = make_jq(reg=code_registry(registry))
    await jq.drain(1)
    assert (await jq.schedules.get("nightly")).source == "code"
    jq.redis.requests = jq.store.statements = 0
    await jq.drain(1)
    assert (jq.redis.requests, jq.store.statements) == (1, 0)  # synced: the idle drain stays free


async def test_an_idle_drain_with_a_hundred_schedules_costs_one_request_and_no_statement(
    jq: JobQueue, clock: FakeClock
) -> None:
    at_minute(clock)
    for i in range(100):
        await jq.schedules.put(f"s{i}", {"type": "echo", "cron": "0 4 * * *"})
    await jq.drain(1)
    jq.redis.requests = jq.store.statements = 0
    report = await jq.drain(1)
    assert (report.fired, jq.redis.requests, jq.store.statements) == (0, 1, 0)


async def test_a_tick_that_fires_many_schedules_costs_two_statements(jq: JobQueue, clock: FakeClock) -> None:
    at_minute(clock)
    for i in range(50):
        await jq.schedules.put(f"s{i}", {"type": "echo", "every_ms": MINUTE})
    await jq.drain(1)
    clock.advance(MINUTE)
    names: list[str] = []
    fetch = jq.store.fetch

    async def spy(name: str, *args: Any) -> Any:
        names.append(name)
        return await fetch(name, *args)

    jq.store.fetch = spy  # type: ignore[method-assign]
    assert (await jq.drain(5)).fired == 50
    assert names.count("schedules_by_ids") == 1 and names.count("fire_schedules") == 1


async def test_pause_resume_trigger_and_delete(jq: JobQueue, clock: FakeClock) -> None:
    at_minute(clock)
    await jq.schedules.put("p", {"type": "echo", "every_ms": MINUTE})
    await jq.schedules.set_paused("p", True)
    clock.advance(MINUTE)
    assert (await jq.drain(2)).fired == 0
    job = await jq.schedules.trigger("p")  # one job now, paused or not
    assert (job["schedule_id"], job["scheduled_for"]) == ("p", None)  # it stands for no tick
    await jq.schedules.set_paused("p", False)
    assert (await jq.drain(2)).fired == 1  # the tick missed while paused: coalesced into one
    await jq.schedules.delete("p")
    clock.advance(MINUTE)
    assert (await jq.drain(2)).fired == 0
    with pytest.raises(ScheduleNotFound):
        await jq.schedules.get("p")


class Strict(BaseModel):
    n: int


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "echo", "cron": "* * * *"}, "cron"),
        ({"type": "echo", "cron": "0 3 * * *", "tz": "Nowhere/Else"}, "tz"),
        ({"type": "echo", "cron": "0 3 * * *", "every_ms": 60_000}, "cron"),
        ({"type": "echo"}, "cron"),
        ({"type": "echo", "every_ms": 500}, "every_ms"),
        ({"type": "no.such.type", "every_ms": 60_000}, "type"),
        ({"type": "strict", "every_ms": 60_000, "payload": {"n": "x"}}, "payload.n"),
        ({"type": "echo", "every_ms": 60_000, "misfire": "sometimes"}, "misfire"),
    ],
)
async def test_a_bad_definition_is_refused_naming_the_field_and_stores_nothing(
    make_jq: Any, registry: Registry, body: dict[str, Any], field: str
) -> None:
    @registry.job("strict", model=Strict)
    async def strict(payload: Strict, ctx: JobContext) -> None:
        return None

    jq: JobQueue = make_jq(reg=registry)
    with pytest.raises(InvalidJob) as e:
        await jq.schedules.put("bad", body)
    assert e.value.field == field
    assert await jq.schedules.all() == []


class DelayedKicks:
    """A kicker that can wait, as QStash's can: records the due times it was asked for."""

    delays = True

    def __init__(self) -> None:
        self.at: list[int | None] = []

    async def __call__(self, at_ms: int | None = None) -> None:
        self.at.append(at_ms)


async def test_one_delayed_kick_per_due_time_before_the_next_regular_tick(make_jq: Any, clock: FakeClock) -> None:
    jq: JobQueue = make_jq(JOBQUEUE_TICK_INTERVAL_S=60)
    kicks = DelayedKicks()
    jq.kicker = kicks
    at_minute(clock)
    start = clock.now()
    await jq.schedules.put("soon", {"type": "echo", "every_ms": 20_000})  # due before the next tick
    await jq.schedules.put("later", {"type": "echo", "cron": "0 4 * * *"})
    await jq.drain(1)
    await jq.drain(1)  # the same due time: no second publish
    due = int((start + timedelta(seconds=20)).timestamp() * 1000)
    assert kicks.at == [due]
    clock.advance(20_000)
    await jq.drain(2)  # fires it; the next tick, 20 s on, gets its own kick
    assert kicks.at == [due, due + 20_000]
    # A delayed job (or a retry) due before the next regular tick is a due time too.
    clock.advance(1000)
    await jq.enqueue({"type": "echo", "payload": {}, "delay_ms": 5_000})
    await jq.drain(1)
    assert kicks.at[-1] == due + 1000 + 5_000


async def test_no_delayed_kick_without_a_kicker_that_can_wait(jq: JobQueue, clock: FakeClock) -> None:
    at_minute(clock)
    await jq.schedules.put("soon", {"type": "echo", "every_ms": 20_000})
    await jq.drain(1)
    jq.redis.requests = jq.store.statements = 0
    await jq.drain(1)
    assert (jq.redis.requests, jq.store.statements) == (1, 0)
