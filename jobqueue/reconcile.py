"""Reconcile: re-create missing Redis entries from Postgres, the source of truth.

- full (Redis lost its data: the epoch marker is gone; also the very first drain): rebuild the
  ready and delayed index of every queue from the unfinished rows (pending -> ready, scheduled ->
  delayed, processing -> processing with its lease deadline), restore the pause flags and the
  queue set, then set the epoch marker.
- periodic (rare, JOBQUEUE_RECONCILE_INTERVAL_S, or on demand): restore the queue set and the
  pause flags from Postgres, then per queue with unfinished rows, diff the ids Redis holds against
  those rows and index only the missing ones (a push that failed after its insert, an eviction).
  Rows younger than FRESH_S are skipped: their own push may be in flight.

A duplicate entry is harmless (the claim grants each job once), so a race between two reconciles
costs a wasted pop, never a double run.

- sweep (jobs enqueued inside an application's transaction, `dispatched = false` until pushed):
  index the committed ones nobody pushed, because the process died between the application's
  commit and the push, or the application committed a transaction it managed itself. Claims ask
  for it every second for two minutes after such an enqueue (the `sweep` marker), and every
  periodic reconcile runs it too.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING

from .clock import to_ms

if TYPE_CHECKING:
    from .broker import Broker
    from .clock import Clock
    from .state import DrainState
    from .store import Store

log = logging.getLogger("jobqueue.reconcile")

PAGE = 5000
FRESH_S = 10
LOCK_MS = 120_000


async def reconcile(
    store: Store, broker: Broker, state: DrainState, clock: Clock, *, full: bool = False, fresh_s: float | None = None
) -> dict[str, int]:
    # One reconcile at a time across all drains; the lock expires if its holder dies, and only
    # its owner releases it (a holder that overran the expiry must not free a later holder's).
    owner = secrets.token_hex(8)
    if not await broker.try_lock(broker.keys.reconcile_lock, owner, LOCK_MS):
        return {"restored": 0, "skipped": 1}
    try:
        if full:
            restored = await _full(store, broker, state)
        else:
            restored = await _periodic(store, broker, state, clock, FRESH_S if fresh_s is None else fresh_s)
            restored += await sweep(store, broker, state)
    finally:
        await broker.unlock(broker.keys.reconcile_lock, owner)
    if restored:
        log.warning("reconcile (%s) restored %d job(s) to Redis", "full" if full else "periodic", restored)
    return {"restored": restored, "skipped": 0}


async def _full(store: Store, broker: Broker, state: DrainState) -> int:
    # Clear the ready and delayed index first, then read Postgres: an enqueue that pushed before
    # the DEL committed its row before it, so the read below sees it; one that pushes after the
    # DEL is indexed by its own push (and maybe again here, which is harmless). In-flight leases
    # in the processing sets are kept.
    await broker.clear_index(state.queues | await broker.known_queues())
    restored, after = 0, 0
    while True:
        rows = await store.fetch("active_jobs", None, after, PAGE)
        if not rows:
            break
        after = rows[-1]["id"]
        await broker.push(rows)
        state.queues |= {r["queue"] for r in rows}
        restored += len(rows)
    paused = [q["name"] for q in await store.fetch("queues") if q["paused"]]
    await _reindex_schedules(store, broker, rebuilt=True)
    await broker.restore(state.queues, paused, rebuilt=True)
    return restored


async def _reindex_schedules(store: Store, broker: Broker, *, rebuilt: bool) -> None:
    """The schedules' due index (schedules that are not paused, by next tick) from Postgres."""
    rows = await store.fetch("schedules_due_index")
    await broker.reindex_schedules({r["id"]: to_ms(r["next_run_at"]) for r in rows}, rebuilt=rebuilt)


async def _periodic(store: Store, broker: Broker, state: DrainState, clock: Clock, fresh_s: float) -> int:
    # Redis' small sets first: a queue with unfinished rows that no process knows of (its name
    # evicted from the queue set, never in a registry) would otherwise never be drained, and a
    # lost pause flag would let a paused queue run. Pause flags are only added here, never
    # removed: a resume racing this read must not be undone (the full rebuild resets them).
    active = {r["queue"] for r in await store.fetch("active_queues")}
    paused = [q["name"] for q in await store.fetch("queues") if q["paused"]]
    # A queue with no unfinished job, no pause flag and no settings leaves the queue set (so a
    # misspelt name does not cost every claim forever); Redis re-checks that its lists are empty
    # in the same step, so an enqueue racing this read keeps its queue.
    await _reindex_schedules(store, broker, rebuilt=False)
    keep = active | set(paused) | state.fixed
    state.queues -= await broker.prune_queues((await broker.known_queues() | state.queues) - keep)
    state.queues |= active
    await broker.restore(state.queues, paused, rebuilt=False)
    restored = 0
    fresh = clock.now() - timedelta(seconds=fresh_s)
    for queue in sorted(active):
        indexed = await broker.indexed_ids(queue)
        after = 0
        while True:
            rows = await store.fetch("active_jobs", queue, after, PAGE)
            if not rows:
                break
            after = rows[-1]["id"]
            missing = [r for r in rows if r["id"] not in indexed and r["created_at"] <= fresh]
            if missing:
                await broker.push(missing)
                restored += len(missing)
    return restored


async def sweep(store: Store, broker: Broker, state: DrainState) -> int:
    """Index committed jobs that were never pushed; returns how many. One statement when there
    are none (an index-only probe of `jobs_undispatched`)."""
    swept = 0
    while True:
        rows = await store.fetch("dispatch_sweep", PAGE)
        if not rows:
            return swept
        await broker.push(rows)
        state.queues |= {r["queue"] for r in rows}
        swept += len(rows)
        if len(rows) < PAGE:
            return swept
