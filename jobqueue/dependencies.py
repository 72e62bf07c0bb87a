"""Dependencies: jobs that wait for other jobs (`depends_on`), and flows built from them.

The state lives in Postgres only: a `waiting` job is never in Redis. `jobs.pending_deps` counts
its unfinished dependencies and `job_deps` holds one row per edge, whose `state` records the
dependency's outcome. Two statements do all the work (sql/queries.sql):

- `insert_dependent_jobs` inserts a graph, all or nothing, with the edges whose dependency has
  already completed recorded at once; an unknown id stores nothing.
- `resolve_dependencies` records finished jobs' outcomes on their edges and, in the same
  statement, moves each dependent whose count reaches zero to `pending` (pushed to Redis right
  after, the way an enqueue is), or cancels it, and its own dependents, under the `fail` policy.
  It runs after every group of outcomes in which a finished job has dependents (one statement;
  jobs without dependents pay nothing), after a cancel, and right after an insert ("settle").

The lost wakeup (a dependency finishing while its dependent is being inserted, the race behind
rq's and Celery's) is closed without locking a row a claim may want (a claim skips locked rows
and would drop the job from Redis): the insert reads its dependencies without locks; the settle
that follows it takes a fresh snapshot, so a dependency that ended before it is resolved there,
and it marks the running ones `has_dependents` under a row lock, so a completion recorded after
it sees the flag (in the row it updates) and resolves the edge itself, while one being recorded
at that moment is waited for and settled once more. Reconcile is the net for a process that died
in between: it resolves edges whose dependency has ended and releases waiting jobs left without
pending edges, so nothing waits forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .clock import Clock
    from .store import Row, Store

log = logging.getLogger("jobqueue.dependencies")

SETTLE_ROUNDS = 8  # a settle that met a completion being recorded looks again; contention is rare
SETTLE_PAUSE_S = 0.005
RECONCILE_PAGE = 1000
GRAPH_CAP = 200  # jobs listed on each side of a job's view


Push = Callable[[list["Row"]], Awaitable[Any]]
Ended = Callable[[list[int]], Awaitable[None]]


class Dependencies:
    """Resolving and reading dependencies; `push` indexes released jobs (the enqueuer's dispatch:
    a failed push is left to reconcile, as for an enqueue)."""

    def __init__(self, store: Store, clock: Clock, push: Push, ended: Ended | None = None) -> None:
        self.store = store
        self.clock = clock
        self.push = push
        # Told of the jobs a resolve cancelled (their waiters answer); their callbacks are pushed.
        self.ended = ended

    async def resolve(self, finished: list[int], settle: list[int] | None = None) -> list[Row]:
        """Record finished jobs' outcomes on their edges (and settle new dependents); the jobs
        moved on (released or cancelled), each once."""
        return await resolve(self.store, self.clock, finished, settle or [])

    async def release(self, finished: list[int]) -> int:
        """After outcomes were recorded (or a job cancelled): resolve, push what became runnable.
        Returns how many did."""
        return await release(self.store, self.clock, self.push, finished, self.ended)

    # --- reads ------------------------------------------------------------------------------

    async def of(self, job_id: int) -> list[dict[str, Any]]:
        """`ctx.dependencies()`: id, type, status, result and error of each dependency."""
        return await self.store.fetch("job_dependencies", job_id)


async def resolve(store: Store, clock: Clock, finished: list[int], settle: list[int]) -> list[Row]:
    out: dict[int, Row] = {}
    for round_ in range(SETTLE_ROUNDS):
        rows = await store.fetch("resolve_dependencies", finished, settle, clock.now())
        again = False
        for r in rows:
            if r["kind"] == "again":
                again = True
            else:
                out[r["id"]] = r
        if not again:
            break
        finished = []
        await asyncio.sleep(SETTLE_PAUSE_S * (1 + round_))  # a completion is being recorded: let it commit
    else:
        log.warning(
            "settling %d new dependent(s) met busy dependencies %d times; reconcile will", len(settle), SETTLE_ROUNDS
        )
    return list(out.values())


async def release(store: Store, clock: Clock, push: Push, finished: list[int], ended: Ended | None = None) -> int:
    """Resolve, then push what became runnable and the callbacks of what was cancelled; returns
    how many dependents became runnable."""
    rows = await resolve(store, clock, finished, [])
    runnable = [r for r in rows if r["status"] in ("pending", "scheduled")]
    if runnable:
        await push(runnable)
    cancelled = [r["id"] for r in rows if r["kind"] == "job" and r["status"] == "cancelled"]
    if cancelled and ended is not None:
        await ended(cancelled)
    return sum(1 for r in runnable if r["kind"] == "job")


async def reconcile_waiting(store: Store, clock: Clock, push: Push) -> int:
    """The liveness net (reconcile): resolve edges whose dependency has ended (a process died
    between recording an outcome and resolving its edges) and release waiting jobs left with no
    pending edge. Two statements when there is nothing to do."""
    released = 0
    for _ in range(10):
        stuck = [r["id"] for r in await store.fetch("stuck_dependencies", RECONCILE_PAGE)]
        if not stuck:
            break
        released += await release(store, clock, push, stuck)
    orphans = await store.fetch("release_orphans", clock.now(), RECONCILE_PAGE)
    if orphans:
        await push(orphans)
        released += len(orphans)
    if released:
        log.warning("reconcile released %d waiting job(s) whose dependencies had ended", released)
    return released
