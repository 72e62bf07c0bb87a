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

- waiting (jobs that wait for dependencies, never in Redis): resolve the edges of dependencies
  that ended and release the waiting jobs left with none pending (dependencies.py), on every
  reconcile, full or periodic.

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
from .dependencies import reconcile_waiting
from .models import QueueSettings

if TYPE_CHECKING:
    from .broker import Broker
    from .clock import Clock
    from .state import DrainState
    from .store import Row, Store

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
            restored = await _full(store, broker, state, clock)
        else:
            restored = await _periodic(store, broker, state, clock, FRESH_S if fresh_s is None else fresh_s)
            restored += await sweep(store, broker, state)
        # Waiting jobs are never in Redis, so nothing above restores them; this releases (or
        # cancels) the ones whose dependencies have all ended, should their release have been lost.
        restored += await reconcile_waiting(store, clock, broker.push)
    finally:
        await broker.unlock(broker.keys.reconcile_lock, owner)
    if restored:
        log.warning("reconcile (%s) restored %d job(s) to Redis", "full" if full else "periodic", restored)
    return {"restored": restored, "skipped": 0}


async def _full(store: Store, broker: Broker, state: DrainState, clock: Clock) -> int:
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
        await broker.restore_leases(rows)  # counted again in their flow-control scopes
        state.queues |= {r["queue"] for r in rows}
        restored += len(rows)
    queues = await store.fetch("queues")
    paused = [q["name"] for q in queues if q["paused"]]
    await _reindex_schedules(store, broker, rebuilt=True)
    await _restore_limits(broker, queues)
    await _rebuild_rates(store, broker, state, clock, queues)
    await broker.restore(state.queues, paused, rebuilt=True)
    return restored


async def _restore_limits(broker: Broker, queues: list[Row]) -> None:
    """The queues' limits in Redis from their settings in Postgres."""
    await broker.set_limits({q["name"]: QueueSettings.model_validate(q["settings"]).limits() for q in queues})


async def _rebuild_rates(store: Store, broker: Broker, state: DrainState, clock: Clock, queues: list[Row]) -> None:
    """After a flush, each rate's state (its scope's theoretical arrival time, TAT) from Postgres:
    from the latest start in each scope (jobs.last_started_at, any attempt's). A start admitted at
    t left the TAT at most t + tau + T (GCRA admits only while t >= TAT - tau), so that is the TAT
    restored: never earlier than the one lost, so a flush cannot over-admit; at worst a scope that
    had room waits one emission interval past its last start, and its burst refills as before.
    A scope whose last start is older than tau + T was back at a full burst, as it is restored."""
    rates: dict[str, dict[str, tuple[float, float]]] = {}  # queue -> "q" or "g" -> (T, tau)
    type_rates = _type_rates(state.type_limits)
    for q in queues:
        st = QueueSettings.model_validate(q["settings"])
        kinds = {}
        if st.rate:
            kinds["q"] = _gcra(st.rate.limit, st.rate.period_ms, st.rate.burst)
        if st.group_rate:
            kinds["g"] = _gcra(st.group_rate.limit, st.group_rate.period_ms, st.group_rate.burst)
        if kinds:
            rates[q["name"]] = kinds
    if not rates and not type_rates:
        return
    reach = max(t + tau for k in [*rates.values(), type_rates] for t, tau in k.values())
    now_ms = clock.ms()
    names = sorted(state.queues | set(rates))
    starts = await store.fetch("recent_starts", clock.now() - timedelta(milliseconds=reach), names)
    tats: dict[str, dict[str, float]] = {}
    for r in starts:
        last = to_ms(r["last_start"])
        for scope in ["q", *scopes_of(r["limiter"])]:
            rate = _rate_for(scope, rates.get(r["queue"], {}), type_rates)
            if rate is None:
                continue
            emission, tau = rate
            tat = last + tau + emission
            if tat > now_ms and tat > tats.get(r["queue"], {}).get(scope, 0):
                tats.setdefault(r["queue"], {})[scope] = tat
    await broker.set_rate_state(tats)


def _gcra(limit: float, period_ms: float, burst: float) -> tuple[float, float]:
    """A rate's GCRA emission interval T and tolerance tau (claim.lua's parse_rate)."""
    emission = period_ms / limit
    return emission, (max(burst, 1) - 1) * emission


def scopes_of(limiter: str | None) -> list[str]:
    """The flow-control scopes a member with this suffix occupies (as claim.lua reckons them)."""
    tt, _, gh = (limiter or ":").partition(":")
    return ([f"t:{tt}"] if tt else []) + ([f"g:{gh}"] if gh else []) + ([f"t:{tt}:g:{gh}"] if tt and gh else [])


def _type_rates(spec: str) -> dict[str, tuple[float, float]]:
    """`tag=c=..,r=L/P/B,gr=L/P/B` -> {"t:tag": (T, tau), "t:tag:g": (T, tau)}."""
    out: dict[str, tuple[float, float]] = {}
    for entry in filter(None, spec.split(";")):
        tag, _, fields = entry.partition("=")
        for field in fields.split(","):
            name, _, value = field.partition("=")
            if name in ("r", "gr"):
                limit, period, burst = (float(x) for x in value.split("/"))
                out[f"t:{tag}" + (":g" if name == "gr" else "")] = _gcra(limit, period, burst)
    return out


def _rate_for(
    scope: str, queue_rates: dict[str, tuple[float, float]], type_rates: dict[str, tuple[float, float]]
) -> tuple[float, float] | None:
    if scope == "q":
        return queue_rates.get("q")
    if scope.startswith("g:"):
        return queue_rates.get("g")
    tag, _, rest = scope[2:].partition(":g:")
    return type_rates.get(f"t:{tag}" + (":g" if rest else ""))


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
    queue_rows = await store.fetch("queues")
    paused = [q["name"] for q in queue_rows if q["paused"]]
    await _restore_limits(broker, queue_rows)
    # A queue with no unfinished job, no pause flag and no settings leaves the queue set (so a
    # misspelt name does not cost every claim forever); Redis re-checks that its lists are empty
    # in the same step, so an enqueue racing this read keeps its queue.
    await _reindex_schedules(store, broker, rebuilt=False)
    keep = active | set(paused) | {q["name"] for q in queue_rows if q["settings"]} | state.fixed
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
                await broker.restore_leases(missing)
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
