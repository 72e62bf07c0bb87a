"""Housekeeping that rides on drains: retention of finished jobs.

`housekeeping_hook` (for `jq.drain_hooks`) deletes completed jobs that finished more than
JOBQUEUE_RETAIN_COMPLETED_DAYS ago and failed ones older than JOBQUEUE_RETAIN_FAILED_DAYS, unless
their queue's settings say otherwise: a queue's `retention` may give completed and failed jobs an
age of their own (0: removed at the next run) and a count (only the newest N are kept).
Cancelled jobs are kept (nothing asks for their removal yet).

- Rare: at most once per JOBQUEUE_HOUSEKEEPING_INTERVAL_S, decided by a turn on a Redis marker
  holding the next due time in ms of the engine's clock (`Broker.take_turn`, like the claim
  script's reconcile marker), so tests move a FakeClock instead of sleeping, and two drains racing
  for it cannot both win. An idle drain skips it without any I/O (DESIGN.md invariant 5).
- Bounded: at most MAX_CHUNKS statements of CHUNK rows, and MAX_ROWS rows, per run, so a drain is never
  held up for long. When a run ends with old rows left (a backlog after a long outage, or more than
  MAX_ROWS jobs finishing per interval), the marker is reset to "due now": the next busy
  drain continues, and retention keeps pace with any throughput instead of falling behind for good.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from .models import QueueSettings

if TYPE_CHECKING:
    from .drain import DrainReport
    from .engine import JobQueue

log = logging.getLogger("jobqueue.housekeeping")

CHUNK = 1000
MAX_CHUNKS = 20  # statements: at least one per rule (the environment's two, each queue's own)
MAX_ROWS = 5000  # rows deleted per run


@dataclass
class Retention:
    completed: int = 0
    failed: int = 0
    chunks: int = 0
    more: bool = False  # the chunk cap was reached: old rows may remain


async def retention(jq: JobQueue, *, chunk: int = CHUNK, max_chunks: int = MAX_CHUNKS) -> Retention:
    """Delete finished jobs past their retention, in at most `max_chunks` deleting statements
    (plus one that reads the queues' own rules)."""
    s = jq.settings
    now = jq.clock.now()
    out = Retention()
    rules = {r["name"]: QueueSettings.model_validate(r["settings"]).retention for r in await jq.store.fetch("queues")}
    work: list[tuple[str, tuple[object, ...]]] = []
    for status, days in (("completed", s.retain_completed_days), ("failed", s.retain_failed_days)):
        own_age = {q: getattr(r, status).age_days for q, r in rules.items() if r and getattr(r, status)}
        own_age = {q: d for q, d in own_age.items() if d is not None}
        # The environment's age for every queue without one of its own, then each queue's age
        # and count rules.
        work.append(("retention", (status, now - timedelta(days=days), sorted(own_age))))
        work += [("retention_queue_age", (q, status, now - timedelta(days=d))) for q, d in sorted(own_age.items())]
        for q, r in sorted(rules.items()):
            rule = getattr(r, status) if r else None
            if rule is not None and rule.count is not None:
                work.append(("retention_queue_count", (q, status, rule.count)))
    for query, args in work:
        status = str(args[0] if query == "retention" else args[1])
        while True:
            if out.chunks >= max_chunks or out.completed + out.failed >= MAX_ROWS:
                out.more = True
                return out
            n = len(await jq.store.fetch(query, *args, chunk))
            out.chunks += 1
            setattr(out, status, getattr(out, status) + n)
            if n < chunk:
                break
    return out


async def housekeep(jq: JobQueue) -> Retention | None:
    """Run retention if its turn has come; None when it had not (one Redis request)."""
    interval_ms = jq.settings.housekeeping_interval_s * 1000
    if not await jq.broker.take_turn(jq.keys.housekeeping, jq.clock.ms(), interval_ms):
        return None
    done = await retention(jq, chunk=CHUNK, max_chunks=MAX_CHUNKS)
    if done.more:
        # Due again on the next busy drain rather than a whole interval later (see the docstring).
        await jq.broker.reset_turn(jq.keys.housekeeping, jq.clock.ms())
    log.info(json.dumps({"event": "housekeeping", **asdict(done)}))
    return done


async def housekeeping_hook(jq: JobQueue, report: DrainReport) -> None:
    if report.claimed == 0 and not report.dead:
        return  # an idle tick stays one Redis request and no Postgres
    await housekeep(jq)
