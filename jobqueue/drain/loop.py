"""The continuous drain: what `/api/workers`, `jobqueue drain`, `jobqueue worker`, `make dev`'s
tick, the Lambda schedule and the tests all run (through `jobqueue.worker`).

A drain has `JOBQUEUE_CONCURRENCY` slots. The claimer takes a batch whenever enough of them are
free: one claim request (Redis: promote due delayed jobs, recover expired leases, pop up to N
across priorities, record leases) and one grant statement (Postgres: count the attempt, set each
job's lease; drop what is gone, cancelled or done). Each granted job starts at once in its own
task, under its timeout; no job waits for another. Outcomes go to the recorder (recorder.py) as
they come, and the heartbeat (leases.py) keeps the leases of what is still held alive.

Queue isolation: a queue may hold at most `JOBQUEUE_QUEUE_SHARE` of the slots, so a queue of slow
jobs cannot take every slot and hold back the others.

Budget end: ahead of the deadline the claimer stops; running jobs finish within their timeouts
(capped by the deadline); a job granted after that point is released at once; every outcome is
flushed; then the report. A `stop` event (SIGTERM for `jobqueue worker`) does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
from collections import Counter
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..broker import Ack, Claimed
from ..clock import iso, to_ms
from ..keys import has_scopes
from ..progress import ProgressBoard
from ..reconcile import reconcile, sweep
from .execute import Executor, log_outcome, released
from .leases import Held, Leases
from .recorder import Recorder
from .report import DrainReport, dead_entry

if TYPE_CHECKING:
    from ..engine import JobQueue

log = logging.getLogger("jobqueue.drain")

MIN_HEADROOM_S = 0.05  # do not claim (or start a job) with less than this left
CLAIM_LINGER_S = 0.01  # how long a small claim may wait for more slots to free up
EMPTY_BACKOFF_MIN_S = 0.05  # after a claim that found nothing while jobs run (doubling)
EMPTY_BACKOFF_MAX_S = 1.0


async def drain(
    jq: JobQueue,
    budget_s: float,
    *,
    max_jobs: int | None = None,
    stop: asyncio.Event | None = None,
    batch_size: int | None = None,
) -> DrainReport:
    report = await Drain(jq, budget_s=budget_s, max_jobs=max_jobs, stop=stop, batch=batch_size).run()
    for hook in jq.drain_hooks:
        # Housekeeping and alerts ride on drains; their failures never fail the drain.
        try:
            await hook(jq, report)
        except Exception:
            log.exception("drain hook %s failed", getattr(hook, "__name__", hook))
    if not report.idle or log.isEnabledFor(logging.DEBUG):
        log.log(logging.INFO if not report.idle else logging.DEBUG, json.dumps({"event": "drain", **report.as_dict()}))
    return report


class Drain:
    def __init__(
        self, jq: JobQueue, *, budget_s: float, max_jobs: int | None, stop: asyncio.Event | None, batch: int | None
    ) -> None:
        s = jq.settings
        self.store, self.broker, self.keys, self.clock = jq.store, jq.broker, jq.keys, jq.clock
        self.state = jq.dispatch
        self.schedules = jq.schedules
        self.code_schedules = jq.registry.schedules_hash()
        self.type_limits = jq.registry.type_limits()
        self.kicker = jq.kicker
        # Delayed kicks need a kicker that can wait (QStash's); a local one wakes its tick anyway.
        self.kick_horizon_ms = s.tick_interval_s * 1000 if getattr(jq.kicker, "delays", False) else 0
        self.settings = s
        self.budget_s = budget_s
        self.stop = stop
        self.batch = max(1, min(batch or s.batch_size, 1000))
        self.min_claim = max(1, self.batch // 4)
        self.concurrency = s.concurrency
        self.queue_cap = max(1, math.ceil(s.concurrency * s.queue_share))
        self.unclaimed = max_jobs  # jobs this drain may still claim (None: no cap)
        self.report = DrainReport()
        self.release_dependents = jq.deps.release
        self.waiters, self.enqueuer = jq.waiters, jq.enqueuer
        self.progress = ProgressBoard(jq.clock)
        self.executor = Executor(
            jq.registry, jq.clock, s, jq.enqueue_from_handler, dependencies=jq.deps.of, progress=self.progress
        )
        self.leases = Leases(
            jq.store,
            jq.broker,
            jq.clock,
            self.report,
            grace_ms=s.lease_grace_ms,
            heartbeat_ms=s.heartbeat_ms,
            progress=self.progress,
        )
        self.members: dict[int, tuple[str, str]] = {}  # held job id -> (queue, member)
        self.running: Counter[str] = Counter()  # slots taken per queue: claimed, not yet finished
        self.busy = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self._slot = asyncio.Event()  # a slot was freed (or the stop event fired)
        self._last_empty_at: float | None = None  # loop time of the last claim that found nothing
        self._rediscovered = False  # the last claim found new queues or a rebuilt index
        self._finished_at = 0.0  # loop time a job last finished
        # An outcome that, once recorded, may make work due or gate it (a retry, a release, a
        # RateLimited, a slot freed in a flow-control scope): the drain looks again after it
        # rather than end idle while it is being written.
        self._may_unblock = False
        # A handler raised a BaseException (SystemExit, KeyboardInterrupt): the process is going
        # down, so the drain stops at once, as if it had died, and lets it propagate.
        self._fatal: BaseException | None = None
        self.deadline = 0.0
        self.recorder: Recorder | None = None

    # --- the run ------------------------------------------------------------------------------

    async def run(self) -> DrainReport:
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.deadline = started + self.budget_s
        self.recorder = Recorder(
            self.store,
            self.broker,
            self.keys,
            self.clock,
            self.report,
            members=self.members.get,
            on_recorded=self._recorded,
            on_finished=self.release_dependents,
            group_max=self.batch,
            linger_s=self.settings.record_linger_ms / 1000,
            give_up_at=self.deadline + min(2.0, self.settings.budget_margin_s / 2),
            on_ended=self._ended,
        )
        if self.state.needs_reconcile:
            # A push failed in this process: index what Postgres has and Redis lacks, the rows just
            # written included (they are why we are here; a duplicate of a racing push is harmless).
            self.state.needs_reconcile = False
            self.report.reconciled += (await self._reconcile(full=False, fresh_s=0))["restored"]
        self.recorder.start()
        self.leases.start()
        watch = asyncio.create_task(self._watch_stop()) if self.stop is not None else None
        failure: Exception | None = None
        try:
            while True:
                try:
                    await self._claim_loop()
                except Exception as e:
                    # Redis or Postgres failed a claim or a grant: what already runs is finished and
                    # recorded before the failure is reported (its jobs have nothing to do with it).
                    failure = e
                while self.tasks and self._fatal is None:
                    await asyncio.wait(set(self.tasks), return_when=asyncio.FIRST_EXCEPTION)
                if failure is not None or self._fatal is not None or not await self._released_more():
                    break
            if self._fatal is not None:
                raise self._fatal
            await self.recorder.close()
        except BaseException:
            # Cancelled: the jobs in flight are left leased, as after a crash, and come back when
            # their leases run out.
            for t in self.tasks:
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.recorder.abandon()
            raise
        finally:
            if watch is not None:
                watch.cancel()
            await self.leases.stop()
        self.report.duration_ms = int((loop.time() - started) * 1000)
        if failure is not None:
            raise failure
        if self.recorder.error is not None:
            raise self.recorder.error
        return self.report

    async def _released_more(self) -> bool:
        """Outcomes recorded after the claimer went idle released dependents (a flow's parent):
        run them in this drain while its budget lasts. Costs nothing when none were."""
        assert self.recorder is not None
        # Writing what is pending now rather than in close() costs nothing more.
        while self.recorder.backlog and not self._stopping():
            await self.recorder.wait_progress(self._left())
        if not self.recorder.released or self._stopping():
            return False
        self.recorder.released = 0
        return True

    async def _watch_stop(self) -> None:
        assert self.stop is not None
        await self.stop.wait()
        self._slot.set()

    def _stopping(self) -> bool:
        loop_now = asyncio.get_running_loop().time()
        assert self.recorder is not None
        return (
            self.deadline - loop_now < MIN_HEADROOM_S
            or (self.stop is not None and self.stop.is_set())
            or self.recorder.error is not None
            or self._fatal is not None
        )

    async def _claim_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.recorder is not None
        backoff = 0.0
        not_before = 0.0
        short_since: float | None = None
        while True:
            now = loop.time()
            if self._stopping():
                # Work may remain unless the last look found nothing.
                self.report.more = self._last_empty_at is None
                return
            if self.unclaimed is not None and self.unclaimed <= 0:
                self.report.more = True
                return
            if self.recorder.backlog >= 2 * self.batch:
                await self.recorder.wait_progress(self._left())
                continue
            limits = self._queue_limits()
            want = min(self.batch, self.concurrency - self.busy, sum(n for _, n in limits))
            if self.unclaimed is not None:
                want = min(want, self.unclaimed)
            if self._last_empty_at is not None and self.busy == 0:
                if self.recorder.backlog:
                    # Recording may make work due (a retry without delay, a released job).
                    await self.recorder.wait_progress(self._left())
                    continue
                if self._last_empty_at >= max(self._finished_at, self.recorder.flushed_at):
                    return  # nothing to do, nothing runs, and nothing finished since we looked: idle
                not_before = 0.0  # a job finished since: it may have enqueued more, look again
            if want <= 0 or now < not_before:
                await self._wait_slot(not_before - now if want > 0 else None)
                continue
            if want < self.min_claim and self.busy:
                short_since = now if short_since is None else short_since
                if now - short_since < CLAIM_LINGER_S:
                    await self._wait_slot(CLAIM_LINGER_S - (now - short_since))
                    continue
            short_since = None
            claimed = await self._claim(limits, want)
            if claimed is None:
                return  # another drain is rebuilding the index: leave the work to it
            if claimed.members:
                backoff = 0.0
                self._last_empty_at = None
                continue
            if self.busy == 0 and not self._rediscovered and not (self.recorder.backlog and self._may_unblock):
                return  # idle
            if self._rediscovered:
                continue  # new queues, a rebuilt index or restored jobs: look again at once
            self._last_empty_at = loop.time()
            backoff = min(EMPTY_BACKOFF_MAX_S, max(EMPTY_BACKOFF_MIN_S, backoff * 2))
            not_before = self._last_empty_at + backoff

    def _queue_limits(self) -> list[tuple[str, int]]:
        free = self.concurrency - self.busy
        return [(q, max(0, min(self.queue_cap - self.running[q], free))) for q in self.state.queue_order()]

    def _left(self) -> float:
        return max(0.0, self.deadline - MIN_HEADROOM_S - asyncio.get_running_loop().time())

    async def _wait_slot(self, timeout_s: float | None) -> None:
        """Until a slot frees up (or the stop event fires), at most `timeout_s` and never past
        the point where the claimer stops."""
        self._slot.clear()
        limit = self._left() if timeout_s is None else min(max(0.0, timeout_s), self._left())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._slot.wait(), limit)

    # --- claim and grant ----------------------------------------------------------------------

    async def _claim(self, limits: list[tuple[str, int]], want: int) -> Claimed | None:
        s = self.settings
        token = secrets.token_hex(6)
        now_ms = self.clock.ms()
        provisional = self.leases.provisional_ms(now_ms)
        claimed = await self.broker.claim(
            limits,
            want,
            now_ms,
            provisional,
            token,
            s.reconcile_interval_s * 1000,
            code_schedules=self.code_schedules,
            kick_horizon_ms=self.kick_horizon_ms,
            type_limits=self.type_limits,
        )
        self._note_gated(claimed)
        self._rediscovered = False
        known_before = set(self.state.queues)
        if claimed.epoch_missing or claimed.reconcile_due:
            # Redis lost its data (no epoch marker), or the periodic check is due.
            result = await self._reconcile(full=claimed.epoch_missing)
            if claimed.epoch_missing and result["skipped"]:
                return None
            self.report.reconciled += result["restored"]
            self._rediscovered = claimed.epoch_missing or bool(result["restored"])
        if claimed.sweep_due:
            swept = await sweep(self.store, self.broker, self.state)
            self.report.reconciled += swept
            self._rediscovered = self._rediscovered or bool(swept)
        if claimed.sync_due:
            await self.schedules.sync()
            await self.broker.mark_schedules_synced(self.code_schedules)
        if claimed.due_schedules:
            fired = await self.schedules.fire(claimed.due_schedules)
            self.report.fired += fired
            self._rediscovered = self._rediscovered or bool(fired)
        if claimed.kick_at_ms is not None and self.kicker is not None:
            await self._kick_at(claimed.kick_at_ms)
        if not (claimed.epoch_missing or claimed.reconcile_due):
            # The queue set as Redis had it; after a reconcile, the state is newer than that.
            self.state.known(claimed.known_queues)
        self._rediscovered = self._rediscovered or bool(self.state.queues - known_before)
        if claimed.members:
            self.report.claims += 1
            for queue, _ in claimed.members.values():
                self.running[queue] += 1
            self.busy += len(claimed.members)
            if self.unclaimed is not None:
                self.unclaimed -= len(claimed.members)
            await self._grant(claimed, token, provisional)
        return claimed

    async def _grant(self, claimed: Claimed, token: str, provisional_ms: int) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        now = self.clock.now()
        drain_end = now + timedelta(seconds=max(0.0, self.deadline - loop.time()))
        ids = list(claimed.members)
        # Postgres failing here leaves the Redis leases alone: whether the grant committed is
        # unknown (a lost reply), and either way the lease entries bring the jobs back when they
        # expire, while giving the members back at once would strand a job whose grant did commit.
        try:
            rows = await self.store.fetch("claim", ids, now, token, drain_end, s.lease_grace_ms, iso(now))
        except BaseException:
            self._free_slots(claimed.members.values())
            raise
        granted_at = loop.time()
        ack = Ack(self.keys)
        to_run: list[dict[str, Any]] = []
        answered: set[int] = set()
        dead: list[int] = []
        callbacks = [_callback_row(r) for r in rows if r["kind"] == "callback"]
        for r in rows:
            jid = r["id"]
            if r["kind"] == "callback":
                continue
            answered.add(jid)
            queue, member = claimed.members[jid]
            if r["kind"] == "run":
                to_run.append(r)
                continue
            self._free_slot(queue)
            if r["kind"] == "dead":
                dead.append(jid)
                ack.done(queue, member, token)
                ack.end(jid)
                self.waiters.notify([jid])
                self.report.failed += 1
                self.report.recovered += 1
                self.report.dead.append(dead_entry(r, r.get("error")))
                log_outcome(r, "failed", r.get("error"), 0)
            elif r["kind"] == "held":
                # Another drain holds it (we popped a duplicate, or its lease entry came due
                # early): its entry goes back at the deadline Postgres has. Not ours to run.
                ack.hand_back(queue, member, token, r["lease_token"], to_ms(r["lease_expires_at"]))
                self.report.dropped += 1
            else:  # defer: a scheduled row that is not due (restored early): back to delayed
                ack.retry(queue, member, token, to_ms(r["run_at"]))
        for jid in claimed.members.keys() - answered:
            queue, member = claimed.members[jid]
            self._free_slot(queue)
            ack.done(queue, member, token)
            self.report.dropped += 1
        if ack:
            assert self.recorder is not None
            self.recorder.add_ack(ack)
        if dead:
            # Lost on their last attempt: failed by the grant itself, so their dependents are
            # resolved here (rare; reconcile is the net should this fail).
            try:
                self.recorder.released += await self.release_dependents(dead)  # type: ignore[union-attr]
            except Exception as e:
                log.warning("resolving the dependents of %d lost job(s) failed: %s", len(dead), e)
        if callbacks:
            await self.enqueuer.dispatch(callbacks)
        # Start in pop order (priority, then FIFO); Postgres returns the rows in no particular order.
        order = {jid: i for i, jid in enumerate(claimed.members)}
        to_run.sort(key=lambda r: order[r["id"]])
        for r in to_run:
            jid = r["id"]
            queue, member = claimed.members[jid]
            self.members[jid] = (queue, member)
            self.leases.hold(jid, Held(queue, member, token, to_ms(r["lease_expires_at"]), provisional_ms))
            self.report.claimed += 1
            if r["recovered"]:
                self.report.recovered += 1
            task = asyncio.create_task(self._run_job(r, token, queue, granted_at))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run_job(self, row: dict[str, Any], token: str, queue: str, granted_at: float) -> None:
        assert self.recorder is not None
        try:
            remaining = self.deadline - asyncio.get_running_loop().time()
            if remaining <= MIN_HEADROOM_S or (self.stop is not None and self.stop.is_set()):
                # Granted but never started: give it back now rather than let the lease run out.
                out = released(row, token)
            else:
                out = await self.executor.run(row, token, min(row["timeout_ms"] / 1000, remaining))
            if out.outcome not in ("completed", "failed") or has_scopes(self.members[row["id"]][1]):
                self._may_unblock = True
            out.granted_at = granted_at
            self.recorder.add(out)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self._fatal = self._fatal or e
            self._slot.set()
            raise
        finally:
            self._finished_at = asyncio.get_running_loop().time()
            self._free_slot(queue)

    def _note_gated(self, claimed: Claimed) -> None:
        """Work that waits on a flow-control limit: the report says until when (a drain that ends
        so is gated, not idle)."""
        if claimed.gated:
            self.report.gated_until_ms = min(claimed.gated.values())
            self.report.gated_queues = sorted(claimed.gated)
        elif claimed.members or not claimed.flags:
            self.report.gated_until_ms = None
            self.report.gated_queues = []

    async def _kick_at(self, at_ms: int) -> None:
        """One delayed kick for the earliest due time (the claim script took its turn)."""
        assert self.kicker is not None
        try:
            await self.kicker(at_ms)  # type: ignore[call-arg]
        except Exception as e:  # a kick is an optimisation: the regular tick still comes
            log.warning("delayed kick failed: %s", e)

    def _free_slot(self, queue: str) -> None:
        self.running[queue] -= 1
        self.busy -= 1
        self._slot.set()

    def _free_slots(self, members: Any) -> None:
        for queue, _ in list(members):
            self._free_slot(queue)

    async def _ended(self, ended: list[int], callbacks: list[dict[str, Any]]) -> None:
        """A group's jobs reached a final status: waiters in this process answer now (other
        processes see the done set the acknowledgement wrote), and completion callbacks are
        indexed like any new job (a failed push leaves them to reconcile)."""
        self.waiters.notify(ended)
        if callbacks:
            try:
                await self.enqueuer.dispatch(callbacks)
            except Exception as e:  # they are in Postgres: the next reconcile indexes them
                self.state.needs_reconcile = True
                log.warning("pushing completion callbacks failed: %s", e)

    def _recorded(self, job_id: int) -> None:
        self.leases.release(job_id)
        self.members.pop(job_id, None)

    async def _reconcile(self, *, full: bool, fresh_s: float | None = None) -> dict[str, int]:
        return await reconcile(self.store, self.broker, self.state, self.clock, full=full, fresh_s=fresh_s)


def _callback_row(r: dict[str, Any]) -> dict[str, Any]:
    """A completion callback the claim statement inserted (its columns ride in the union's slots:
    see sql/queries.sql `claim`), as dispatch wants it."""
    return {
        "id": r["id"],
        "queue": r["queue"],
        "priority": r["priority"],
        "status": r["lease_token"],
        "created_at": r["created_at"],
        "run_at": r["run_at"],
        "limiter": r["type"],
    }
