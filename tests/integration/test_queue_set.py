"""The queue set follows the queues that are in use: a queue with no unfinished job, no pause flag
and no settings leaves it (and the claim, and the overview) at the next periodic reconcile, so a
misspelt name does not cost every claim forever; pausing a queue before it has jobs stays allowed."""

from __future__ import annotations

from typing import Any

from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue


async def test_a_queue_nothing_uses_leaves_the_queue_set_the_claim_and_the_overview(
    make_jq: Any, clock: FakeClock
) -> None:
    jq: JobQueue = make_jq(JOBQUEUE_RECONCILE_INTERVAL_S=60)
    await jq.drain(1)
    await jq.enqueue({"type": "echo", "queue": "emials", "payload": {}})  # a typo, once
    assert (await jq.drain(2)).completed == 1
    assert "emials" in await jq.broker.known_queues()
    # Pausing a queue no job has used yet is an emergency brake: allowed, and it shows.
    await jq.set_paused("brand-new", True)
    assert (await jq.queue_counts())["brand-new"]["paused"] is True
    await jq.set_paused("brand-new", False)
    clock.advance(seconds=61)
    await jq.drain(2)  # runs the periodic reconcile
    assert "emials" not in await jq.broker.known_queues()
    assert {"emials", "brand-new"}.isdisjoint(jq.queues)  # no longer claimed from
    overview = await jq.queue_counts()
    assert "brand-new" not in overview
    assert overview["emials"]["counts"]["completed"] == 1  # its finished jobs still show
    # ...and a new job brings it back at once.
    await jq.enqueue({"type": "echo", "queue": "emials", "payload": {}})
    assert (await jq.drain(2)).completed == 1


async def test_a_queue_with_anything_in_redis_is_kept_even_if_postgres_shows_nothing_yet(
    make_jq: Any, clock: FakeClock
) -> None:
    jq: JobQueue = make_jq(JOBQUEUE_RECONCILE_INTERVAL_S=60)
    await jq.drain(1)
    await jq.enqueue({"type": "echo", "queue": "racing", "payload": {}})
    # Reconcile reads Postgres before the enqueue commits, then prunes: Redis' own check, in the
    # same step as the removal, keeps the queue whose ready list holds the new job.
    assert await jq.broker.prune_queues({"racing"}) == set()
    assert "racing" in await jq.broker.known_queues()
    assert (await jq.drain(2)).completed == 1
    assert await jq.broker.prune_queues({"racing"}) == {"racing"}  # now empty: it goes
