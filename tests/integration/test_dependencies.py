"""Dependencies and flows against real Postgres and Redis: `depends_on`, batch index references,
the failure policies, cancellation cascades, the insert/complete race (rq's and Celery's lost
wakeup), a Redis flush while jobs wait, reconcile's liveness net, retention's guard, and the
statement counts."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue
from jobqueue.errors import InvalidJob, PermanentError
from jobqueue.registry import JobContext, Registry


class Log:
    def __init__(self) -> None:
        self.runs: Counter[int] = Counter()
        self.order: list[int] = []
        self.seen: dict[int, list[dict[str, Any]]] = {}


@pytest.fixture
def log(registry: Registry) -> Log:
    out = Log()

    @registry.job("step", timeout_ms=5000, max_attempts=1)
    async def step(payload: dict[str, Any], ctx: JobContext) -> Any:
        out.runs[ctx.job_id] += 1
        out.order.append(ctx.job_id)
        out.seen[ctx.job_id] = await ctx.dependencies()
        if payload.get("fail"):
            raise PermanentError(f"step {payload.get('name')} failed")
        return {"name": payload.get("name"), "inputs": sorted(str(d["result"]) for d in out.seen[ctx.job_id])}

    return out


def step(name: str, **extra: Any) -> dict[str, Any]:
    return {"type": "step", "payload": {"name": name}, **extra}


async def drain_all(jq: JobQueue, rounds: int = 10) -> None:
    for _ in range(rounds):
        report = await jq.drain(5)
        if report.claimed == 0:
            return


async def status_of(jq: JobQueue, *ids: int) -> list[str]:
    return [(await jq.get(i))["status"] for i in ids]


async def test_a_diamond_runs_its_join_once_after_both_branches_with_both_results(jq: JobQueue, log: Log) -> None:
    rows = await jq.enqueue_many(
        [
            step("a"),
            step("b", depends_on=[{"index": 0}]),
            step("c", depends_on=[{"index": 0}]),
            step("d", depends_on=[{"index": 1}, {"index": 2}]),
        ]
    )
    a, b, c, d = (r["id"] for r, _ in rows)
    assert [r["status"] for r, _ in rows] == ["pending", "waiting", "waiting", "waiting"]
    await drain_all(jq)
    assert await status_of(jq, a, b, c, d) == ["completed"] * 4
    assert log.runs == Counter({a: 1, b: 1, c: 1, d: 1})
    assert log.order[0] == a and log.order[-1] == d
    assert [(x["id"], x["status"]) for x in log.seen[d]] == [(b, "completed"), (c, "completed")]
    assert [x["result"]["name"] for x in log.seen[d]] == ["b", "c"]
    view = await jq.get_with_graph(d)
    assert [(x["id"], x["status"]) for x in view["depends_on"]] == [(b, "completed"), (c, "completed")]
    assert [x["id"] for x in (await jq.get_with_graph(a))["dependents"]] == [b, c]


async def test_a_flow_runs_its_parent_after_all_children_with_their_results(jq: JobQueue, log: Log) -> None:
    parent, children = await jq.flow(step("parent"), [step(f"child{i}") for i in range(5)])
    assert parent["status"] == "waiting" and [c["status"] for c in children] == ["pending"] * 5
    await drain_all(jq)
    assert log.order[-1] == parent["id"] and log.runs[parent["id"]] == 1
    assert [d["result"]["name"] for d in log.seen[parent["id"]]] == [f"child{i}" for i in range(5)]


async def test_a_job_waits_for_an_existing_job_by_id_and_runs_when_it_completes(jq: JobQueue, log: Log) -> None:
    up, _ = await jq.enqueue(step("up"))
    down, _ = await jq.enqueue(step("down", depends_on=[up["id"]]))
    assert down["status"] == "waiting"
    assert (await jq.get(down["id"]))["pending_deps"] == 1
    await drain_all(jq)
    assert await status_of(jq, up["id"], down["id"]) == ["completed", "completed"]
    assert log.order == [up["id"], down["id"]]


async def test_a_dependency_already_completed_is_accounted_for_at_insert(jq: JobQueue, log: Log) -> None:
    up, _ = await jq.enqueue(step("up"))
    await drain_all(jq)
    jq.store.statements = 0
    down, _ = await jq.enqueue(step("down", depends_on=[up["id"]]))
    assert down["status"] == "pending"  # straight to pending: no waiting, no settle statement
    assert jq.store.statements == 1
    await drain_all(jq)
    assert (await jq.get(down["id"]))["status"] == "completed"


@pytest.mark.parametrize("policy", ["fail", "ignore", "continue"])
async def test_a_failed_dependency_under_each_policy(jq: JobQueue, log: Log, policy: str) -> None:
    rows = await jq.enqueue_many(
        [
            {"type": "step", "payload": {"name": "up", "fail": True}},
            step("down", depends_on=[{"index": 0}], on_dependency_failure=policy),
        ]
    )
    up, down = (r["id"] for r, _ in rows)
    await drain_all(jq)
    got = await jq.get(down)
    assert (await jq.get(up))["status"] == "failed"
    if policy == "fail":
        assert (got["status"], got["error"]) == ("cancelled", f"dependency {up} failed")
        assert log.runs[down] == 0
        assert got["finished_at"] is not None
    else:
        assert got["status"] == "completed"
        assert log.runs[down] == 1
        assert [(x["id"], x["status"]) for x in log.seen[down]] == [(up, "failed")]
        assert "step up failed" in log.seen[down][0]["error"]


async def test_a_dependency_that_failed_before_the_insert_cancels_the_dependent_at_once(jq: JobQueue, log: Log) -> None:
    up, _ = await jq.enqueue({"type": "step", "payload": {"fail": True}})
    await drain_all(jq)
    rows = await jq.enqueue_many(
        [step("b", depends_on=[up["id"]]), step("c", depends_on=[{"index": 0}]), step("d", depends_on=[{"index": 1}])]
    )
    assert [r["status"] for r, _ in rows] == ["cancelled"] * 3
    b, c, d = (r["id"] for r, _ in rows)
    assert [(await jq.get(i))["error"] for i in (b, c, d)] == [
        f"dependency {up['id']} failed",
        f"dependency {b} was cancelled",
        f"dependency {c} was cancelled",
    ]


async def test_cancelling_a_job_cascades_three_levels_deep_and_spares_ignore_dependents(jq: JobQueue, log: Log) -> None:
    rows = await jq.enqueue_many(
        [
            step("root", delay_ms=60_000),
            step("l1", depends_on=[{"index": 0}]),
            step("l2", depends_on=[{"index": 1}]),
            step("l3", depends_on=[{"index": 2}]),
            step("tolerant", depends_on=[{"index": 2}], on_dependency_failure="ignore"),
        ]
    )
    root, l1, l2, l3, tolerant = (r["id"] for r, _ in rows)
    await jq.cancel(root)
    assert await status_of(jq, root, l1, l2, l3) == ["cancelled"] * 4
    assert (await jq.get(l3))["error"] == f"dependency {l2} was cancelled"
    assert (await jq.get(tolerant))["status"] == "pending"
    await drain_all(jq)
    assert log.runs == Counter({tolerant: 1})


async def test_a_waiting_job_can_be_cancelled_and_its_dependency_still_runs(jq: JobQueue, log: Log) -> None:
    rows = await jq.enqueue_many([step("a"), step("b", depends_on=[{"index": 0}])])
    a, b = (r["id"] for r, _ in rows)
    assert (await jq.cancel(b))["status"] == "cancelled"
    await drain_all(jq)
    assert await status_of(jq, a, b) == ["completed", "cancelled"]
    assert log.runs == Counter({a: 1})


async def test_a_cycle_or_an_unknown_id_is_refused_and_nothing_is_stored(jq: JobQueue, log: Log) -> None:
    with pytest.raises(InvalidJob) as e:
        await jq.enqueue_many([step("a", depends_on=[{"index": 2}]), step("b"), step("c", depends_on=[{"index": 0}])])
    assert "cycle" in e.value.message and e.value.field.startswith("jobs.")
    with pytest.raises(InvalidJob) as e2:
        await jq.enqueue_many([step("a", depends_on=[{"index": 0}])])
    assert "cycle" in e2.value.message
    with pytest.raises(InvalidJob) as e3:
        await jq.enqueue_many([step("a"), step("b", depends_on=[{"index": 0}, 987654])])
    assert e3.value.field == "jobs.1.depends_on.1" and "987654" in e3.value.message
    with pytest.raises(InvalidJob) as e4:
        await jq.enqueue(step("a", depends_on=[{"index": 0}]))
    assert e4.value.field == "depends_on.0"
    with pytest.raises(InvalidJob) as e5:
        await jq.enqueue_many([step("a", depends_on=[{"index": 5}])])
    assert e5.value.field == "jobs.0.depends_on.0"
    rows, _ = await jq.list_jobs()
    assert rows == []


async def test_waiting_jobs_are_never_in_redis_and_a_flush_runs_none_early(
    make_jq: Any, log: Log, redis_server: str, prefix: str, clock: FakeClock
) -> None:
    jq: JobQueue = make_jq()
    rows = await jq.enqueue_many([step("a", delay_ms=30_000), step("b", depends_on=[{"index": 0}])])
    a, b = (r["id"] for r, _ in rows)
    await jq.drain(1)
    assert b not in await jq.broker.indexed_ids("default")
    r = aioredis.Redis.from_url(redis_server)
    try:
        await r.flushdb()
    finally:
        await r.aclose()
    await jq.drain(1)  # the full rebuild: a waiting job is not pushed
    await jq.reconcile(fresh_s=0)
    assert b not in await jq.broker.indexed_ids("default")
    assert await status_of(jq, a, b) == ["scheduled", "waiting"]
    assert log.runs == Counter()
    clock.advance(seconds=31)
    await drain_all(jq)
    assert log.order == [a, b]


async def test_reconcile_releases_a_waiting_job_whose_release_was_lost(jq: JobQueue, log: Log) -> None:
    rows = await jq.enqueue_many([step("a"), step("b", depends_on=[{"index": 0}])])
    a, b = (r["id"] for r, _ in rows)

    async def lost(ids: list[int]) -> int:  # the drain dies between the outcome and the release
        return 0

    jq.deps.release = lost  # type: ignore[method-assign]
    await jq.drain(5)
    assert await status_of(jq, a, b) == ["completed", "waiting"]
    del jq.deps.release
    assert (await jq.reconcile(fresh_s=0))["restored"] >= 1
    assert (await jq.get(b))["status"] == "pending"
    await drain_all(jq)
    assert log.runs == Counter({a: 1, b: 1})


async def test_retention_keeps_a_finished_job_that_a_waiting_job_needs(
    jq: JobQueue, log: Log, clock: FakeClock
) -> None:
    from jobqueue.housekeeping import retention

    rows = await jq.enqueue_many([step("a"), step("b"), step("c", depends_on=[{"index": 0}, {"index": 1}])])
    a, b, c = (r["id"] for r, _ in rows)
    await jq.drain(5, max_jobs=1)  # only a runs; c still waits on b
    assert await status_of(jq, a, b, c) == ["completed", "pending", "waiting"]
    clock.advance(seconds=40 * 86400)
    done = await retention(jq)
    assert done.completed == 0
    assert (await jq.get(a))["status"] == "completed"
    await drain_all(jq)
    assert [x["result"]["name"] for x in log.seen[c]] == ["a", "b"]
    clock.advance(seconds=40 * 86400)
    assert (await retention(jq)).completed == 3  # nothing needs them any more


async def test_the_insert_complete_race_never_loses_or_doubles_a_dependent(make_jq: Any, registry: Registry) -> None:
    """A dependency completes while its dependent is being inserted, with several drains running:
    every dependent runs exactly once, after its dependency."""
    runs: Counter[int] = Counter()
    done_at: dict[int, int] = {}
    seq = iter(range(10**9))

    @registry.job("race", timeout_ms=5000)
    async def race(payload: dict[str, Any], ctx: JobContext) -> int:
        runs[ctx.job_id] += 1
        up = payload.get("up")
        if up is not None:
            assert up in done_at, "a dependent ran before its dependency"
        await asyncio.sleep(0.001 * (ctx.job_id % 3))
        done_at[ctx.job_id] = next(seq)
        return ctx.job_id

    producer = make_jq(JOBQUEUE_RECONCILE_INTERVAL_S=3600)
    workers = [make_jq(JOBQUEUE_RECONCILE_INTERVAL_S=3600, JOBQUEUE_RECORD_LINGER_MS=0) for _ in range(3)]
    await workers[0].drain(1)
    rounds, dependents = 60, []
    at_insert: Counter[str] = Counter()
    stop = asyncio.Event()

    async def work(w: JobQueue) -> None:
        while not stop.is_set():
            await w.drain(0.5)

    drains = [asyncio.create_task(work(w)) for w in workers]
    try:
        for _ in range(rounds):
            ups = [r for r, _ in await producer.enqueue_many([{"type": "race", "payload": {}} for _ in range(5)])]
            await asyncio.sleep(0.002 * (len(dependents) % 4))
            downs = await producer.enqueue_many(
                [{"type": "race", "payload": {"up": u["id"]}, "depends_on": [u["id"]]} for u in ups]
            )
            dependents += [r["id"] for r, _ in downs]
            at_insert.update(r["status"] for r, _ in downs)
        for _ in range(300):
            if all(d in done_at for d in dependents):
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*drains)
    assert len(dependents) == rounds * 5
    assert [d for d in dependents if runs[d] != 1] == []
    assert all(runs[j] == 1 for j in runs)
    statuses = {(await producer.get(d))["status"] for d in dependents}
    assert statuses == {"completed"}
    # Both sides of the race were taken: dependencies still running at the insert, and some
    # already completed (then the dependent is inserted pending).
    assert at_insert["waiting"] > 0 and at_insert["pending"] > 0, at_insert


async def test_jobs_without_dependencies_keep_their_cost_and_a_batch_releasing_dependents_costs_one_more(
    make_jq: Any, log: Log
) -> None:
    jq: JobQueue = make_jq(JOBQUEUE_BATCH_SIZE=100, JOBQUEUE_DRAIN_LANES=1)
    await jq.drain(1)
    echo = [{"type": "echo", "payload": {"i": i}} for i in range(50)]
    jq.redis.requests = jq.store.statements = 0
    await jq.enqueue_many(echo)
    assert (jq.redis.requests, jq.store.statements) == (1, 1)
    jq.redis.requests = jq.store.statements = 0
    await jq.drain(10)
    assert (jq.redis.requests, jq.store.statements) == (3, 2)  # as before: claim, ack, empty claim
    # A fan-in: 50 children and their parent in one batch (two statements: the insert and the settle).
    jq.redis.requests = jq.store.statements = 0
    rows = await jq.enqueue_many(
        [*echo, {"type": "echo", "payload": {}, "depends_on": [{"index": i} for i in range(50)]}]
    )
    assert (jq.redis.requests, jq.store.statements) == (1, 2)
    parent = rows[-1][0]["id"]
    jq.redis.requests = jq.store.statements = 0
    report = await jq.drain(10)
    cost = (jq.redis.requests, jq.store.statements)
    assert (await jq.get(parent))["status"] == "completed"
    assert report.completed == 51
    # Postgres: the children's group costs grant + record + one release; the parent's grant +
    # record. Redis: claim, the empty claim, ack, the parent's push; claim, the empty claim, ack.
    assert cost == (7, 5)


async def test_a_keyed_graph_enqueued_twice_answers_the_same_jobs_and_adds_no_edges(jq: JobQueue, log: Log) -> None:
    graph = [step("a", idempotency_key="a"), step("b", idempotency_key="b", depends_on=[{"index": 0}])]
    first = await jq.enqueue_many(graph)
    again = await jq.enqueue_many(graph)
    assert [created for _, created in first] == [True, True]
    assert [created for _, created in again] == [False, False]
    assert [r["id"] for r, _ in again] == [r["id"] for r, _ in first]
    a, b = (r["id"] for r, _ in first)
    # a new job naming the keyed one by index depends on the job that holds the key
    more = await jq.enqueue_many([step("a", idempotency_key="a"), step("c", depends_on=[{"index": 0}])])
    assert more[0] == (more[0][0], False) and more[0][0]["id"] == a
    assert [d["id"] for d in (await jq.get_with_graph(more[1][0]["id"]))["depends_on"]] == [a]
    await drain_all(jq)
    assert log.runs == Counter({a: 1, b: 1, more[1][0]["id"]: 1})


async def test_a_dependency_lost_on_its_last_attempt_cancels_its_dependents(
    jq: JobQueue, registry: Registry, clock: FakeClock
) -> None:
    class Killed(BaseException):
        """The worker dies mid-job: nothing after it runs, the lease is left to expire."""

    @registry.job("dies", max_attempts=1, timeout_ms=1000)
    async def dies(payload: dict[str, Any], ctx: JobContext) -> None:
        raise Killed

    rows = await jq.enqueue_many(
        [{"type": "dies", "payload": {}}, {"type": "echo", "payload": {}, "depends_on": [{"index": 0}]}]
    )
    up, down = (r["id"] for r, _ in rows)
    with pytest.raises(Killed):
        await jq.drain(5)
    clock.advance(seconds=120)  # past the lease: the next claim fails the job (its last attempt)
    await jq.drain(5)
    assert await status_of(jq, up, down) == ["failed", "cancelled"]
    assert (await jq.get(down))["error"] == f"dependency {up} failed"


async def test_a_cancel_racing_the_insert_of_a_dependent_never_leaves_it_waiting(make_jq: Any, log: Log) -> None:
    """The cancel path's lost wakeup: a dependency cancelled while its dependent is being inserted
    (two engines, two pools): the dependent always ends cancelled, never waiting."""
    a: JobQueue = make_jq()
    b: JobQueue = make_jq()

    async def later(delay_s: float, coro: Any) -> Any:
        await asyncio.sleep(delay_s)
        return await coro

    for i in range(40):
        up, _ = await a.enqueue(step(f"up{i}", delay_ms=60_000))
        skew = 0.0005 * (i % 5)
        (down, _), _ = await asyncio.gather(
            later(skew if i % 2 else 0, b.enqueue(step(f"down{i}", depends_on=[up["id"]]))),
            later(0 if i % 2 else skew, a.cancel(up["id"])),
        )
        got = await a.get(down["id"])
        assert (got["status"], got["error"]) == ("cancelled", f"dependency {up['id']} was cancelled"), i
