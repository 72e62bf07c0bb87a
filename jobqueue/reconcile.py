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
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .transports import Script

if TYPE_CHECKING:
    from .engine import JobQueue

log = logging.getLogger("jobqueue.reconcile")

PAGE = 5000
FRESH_S = 10
LOCK_MS = 120_000
UNLOCK = Script.load("unlock")


async def reconcile(jq: JobQueue, *, full: bool = False, fresh_s: float = FRESH_S) -> dict[str, int]:
    keys = jq.keys
    # One reconcile at a time across all drains; the lock expires if its holder dies, and only
    # its owner releases it (a holder that overran the expiry must not free a later holder's).
    owner = secrets.token_hex(8)
    got = await jq.redis.command("SET", keys.reconcile_lock, owner, "NX", "PX", LOCK_MS)
    if not got:  # nil (raw reply) or False/None (redis-py's SET callback)
        return {"restored": 0, "skipped": 1}
    try:
        restored = await (_full(jq) if full else _periodic(jq, fresh_s))
    finally:
        await jq.redis.script(UNLOCK, [keys.reconcile_lock], [owner])
    if restored:
        log.warning("reconcile (%s) restored %d job(s) to Redis", "full" if full else "periodic", restored)
    return {"restored": restored, "skipped": 0}


async def _full(jq: JobQueue) -> int:
    # Clear the ready and delayed index first, then read Postgres: an enqueue that pushed before
    # the DEL committed its row before it, so the read below sees it; one that pushes after the
    # DEL is indexed by its own push (and maybe again here, which is harmless). In-flight leases
    # in the processing sets are kept.
    known = sorted(jq.queues | set(await jq.redis.command("SMEMBERS", jq.keys.queues) or []))
    if known:
        await jq.redis.pipeline([["DEL", *jq.keys.ready_all(q), jq.keys.delayed(q)] for q in known])
    restored, after = 0, 0
    while True:
        rows = await jq.store.fetch("active_jobs", None, after, PAGE)
        if not rows:
            break
        after = rows[-1]["id"]
        await jq.broker.push(rows)
        jq.queues |= {r["queue"] for r in rows}
        restored += len(rows)
    queues = await jq.store.fetch("queues")
    cmds = [["DEL", jq.keys.paused]]
    paused = [q["name"] for q in queues if q["paused"]]
    if paused:
        cmds.append(["SADD", jq.keys.paused, *paused])
    if jq.queues:
        cmds.append(["SADD", jq.keys.queues, *sorted(jq.queues)])
    cmds.append(["SET", jq.keys.epoch, secrets.token_hex(8)])
    await jq.redis.pipeline(cmds)
    return restored


async def _periodic(jq: JobQueue, fresh_s: float) -> int:
    # Redis' small sets first: a queue with unfinished rows that no process knows of (its name
    # evicted from the queue set, never in a registry) would otherwise never be drained, and a
    # lost pause flag would let a paused queue run. Pause flags are only added here, never
    # removed: a resume racing this read must not be undone (the full rebuild resets them).
    active = {r["queue"] for r in await jq.store.fetch("active_queues")}
    paused = [q["name"] for q in await jq.store.fetch("queues") if q["paused"]]
    jq.queues |= active
    cmds: list[list[Any]] = []
    if jq.queues:
        cmds.append(["SADD", jq.keys.queues, *sorted(jq.queues)])
    if paused:
        cmds.append(["SADD", jq.keys.paused, *paused])
    await jq.redis.pipeline(cmds)
    restored = 0
    fresh = jq.clock.now() - timedelta(seconds=fresh_s)
    for queue in sorted(active):
        indexed = await jq.broker.indexed_ids(queue)
        after = 0
        while True:
            rows = await jq.store.fetch("active_jobs", queue, after, PAGE)
            if not rows:
                break
            after = rows[-1]["id"]
            missing = [r for r in rows if r["id"] not in indexed and r["created_at"] <= fresh]
            if missing:
                await jq.broker.push(missing)
                restored += len(missing)
    return restored
