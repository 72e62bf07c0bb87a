"""Enqueue, priority order, FIFO, delays, and the O(1) request counts, over both transports."""

from __future__ import annotations

from typing import Any

import pytest

from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue
from jobqueue.errors import InvalidJob
from jobqueue.registry import JobContext, Registry


@pytest.fixture
def order_registry(registry: Registry) -> tuple[Registry, list[int]]:
    seen: list[int] = []

    @registry.job("record", timeout_ms=5000)
    async def record(payload: dict[str, Any], ctx: JobContext) -> int:
        seen.append(payload["n"])
        return int(payload["n"])

    return registry, seen


async def test_enqueue_and_drain_echo(make_jq: Any, transport_kind: str) -> None:
    jq: JobQueue = make_jq()
    row, created = await jq.enqueue({"type": "echo", "payload": {"hello": "world"}})
    assert created and row["status"] == "pending" and row["attempts"] == 0
    await jq.drain(5)  # first drain also builds the index epoch
    job = await jq.get(row["id"])
    assert job["status"] == "completed"
    assert job["result"] == {"hello": "world"}
    assert job["attempts"] == 1
    assert [h["outcome"] for h in job["history"]] == ["completed"]
    assert job["finished_at"] is not None and job["started_at"] is not None


async def test_priority_across_lists_and_fifo_within(make_jq: Any, order_registry: Any, transport_kind: str) -> None:
    reg, seen = order_registry
    jq: JobQueue = make_jq(reg, JOBQUEUE_BATCH_SIZE=1, JOBQUEUE_CONCURRENCY=1, JOBQUEUE_DRAIN_LANES=1)
    await jq.drain(1)  # epoch
    plan = [(0, 1), (5, 2), (9, 3), (5, 4), (0, 5), (9, 6), (7, 7)]
    for prio, n in plan:
        await jq.enqueue({"type": "record", "payload": {"n": n}, "priority": prio})
    report = await jq.drain(10)
    assert report.completed == 7
    assert seen == [3, 6, 7, 2, 4, 1, 5]


async def test_priority_in_one_big_batch(make_jq: Any, order_registry: Any) -> None:
    reg, seen = order_registry
    jq: JobQueue = make_jq(reg, JOBQUEUE_CONCURRENCY=1)
    await jq.drain(1)
    await jq.enqueue_many([{"type": "record", "payload": {"n": i}, "priority": i % 10} for i in range(40)])
    await jq.drain(10)
    prios = [n % 10 for n in seen]
    assert prios == sorted(prios, reverse=True)
    for p in range(10):
        within = [n for n in seen if n % 10 == p]
        assert within == sorted(within)


async def test_delayed_job_waits_for_its_time(make_jq: Any, clock: FakeClock, transport_kind: str) -> None:
    jq: JobQueue = make_jq()
    row, _ = await jq.enqueue({"type": "echo", "payload": {}, "delay_ms": 60_000})
    assert row["status"] == "scheduled"
    r1 = await jq.drain(2)
    assert r1.claimed == 0
    clock.advance(59_000)
    assert (await jq.drain(2)).claimed == 0
    clock.advance(1_000)
    r3 = await jq.drain(2)
    assert r3.completed == 1
    assert (await jq.get(row["id"]))["status"] == "completed"


async def test_idle_drain_is_one_redis_request_and_no_postgres(make_jq: Any, transport_kind: str) -> None:
    jq: JobQueue = make_jq()
    await jq.drain(1)  # first drain: builds the index (epoch marker)
    jq.redis.requests = 0
    jq.store.statements = 0
    report = await jq.drain(1)
    assert report.claimed == 0
    assert jq.redis.requests == 1
    assert jq.store.statements == 0


async def test_batch_costs_constant_round_trips(make_jq: Any, transport_kind: str) -> None:
    jq: JobQueue = make_jq(JOBQUEUE_BATCH_SIZE=500, JOBQUEUE_DRAIN_LANES=1)
    await jq.drain(1)
    jq.redis.requests = jq.store.statements = 0
    await jq.enqueue_many([{"type": "echo", "payload": {"i": i}} for i in range(500)])
    assert (jq.redis.requests, jq.store.statements) == (1, 1)
    jq.redis.requests = jq.store.statements = 0
    report = await jq.drain(10)
    assert report.completed == 500
    # batch: claim + ack; then one empty claim that ends the drain
    assert jq.redis.requests == 3
    assert jq.store.statements == 2


async def test_unknown_type_and_bad_payload_store_nothing(make_jq: Any) -> None:
    jq: JobQueue = make_jq()
    with pytest.raises(InvalidJob) as e:
        await jq.enqueue({"type": "nope", "payload": {}})
    assert e.value.field == "type"
    with pytest.raises(InvalidJob) as e2:
        await jq.enqueue_many([{"type": "echo", "payload": {}}, {"type": "echo", "payload": {}, "priority": 11}])
    assert e2.value.field.startswith("jobs.1")
    rows, _ = await jq.list_jobs()
    assert rows == []


@pytest.mark.parametrize(
    ("payload", "stored"),
    [
        ({"s": "a\u0000b"}, False),
        ({"s": "lone \ud800 surrogate"}, False),
        ({"s": "literal backslash-u0000: \\u0000"}, True),  # text, not a NUL
        ({"s": "é ✓ 漢字"}, True),
    ],
)
async def test_payloads_postgres_cannot_store_are_refused(make_jq: Any, payload: dict[str, Any], stored: bool) -> None:
    jq: JobQueue = make_jq()
    if stored:
        row, _ = await jq.enqueue({"type": "echo", "payload": payload})
        assert (await jq.get(row["id"]))["payload"] == payload
    else:
        with pytest.raises(InvalidJob) as e:
            await jq.enqueue({"type": "echo", "payload": payload})
        assert e.value.field == "payload"
        assert (await jq.list_jobs())[0] == []


async def test_out_of_range_ids_are_not_found(make_jq: Any) -> None:
    from jobqueue.errors import JobNotFound

    jq: JobQueue = make_jq()
    for bad in (0, -1, 2**63, 2**70):
        with pytest.raises(JobNotFound):
            await jq.get(bad)
        with pytest.raises(JobNotFound):
            await jq.cancel(bad)
        with pytest.raises(JobNotFound):
            await jq.retry(bad)
    assert await jq.replay([2**64, -5]) == 0


async def test_a_handler_enqueues_follow_up_jobs(make_jq: Any, registry: Registry) -> None:
    @registry.job("parent")
    async def parent(payload: dict[str, Any], ctx: JobContext) -> int:
        child = await ctx.enqueue({"type": "echo", "payload": {"from": ctx.job_id}, "priority": 9})
        # The job as the API shows it: no lease internals.
        assert child.status == "pending" and not hasattr(child, "lease_token")
        return child.id

    jq: JobQueue = make_jq(reg=registry)
    row, _ = await jq.enqueue({"type": "parent", "payload": {}})
    await jq.drain(5)
    child_id = (await jq.get(row["id"]))["result"]
    child = await jq.get(child_id)
    assert child["status"] == "completed" and child["result"] == {"from": row["id"]}
