"""The recorder: finished outcomes are written in groups, as they come.

A group closes when it holds `group_max` outcomes or when its first outcome has waited `linger`
(a few milliseconds); it costs one Postgres statement (`finish`) and one Redis acknowledgement
(remove the leases, retries to `delayed`, releases back to ready). One group is written at a time:
while it is, the next one fills, so under load the groups grow by themselves (O(1) round trips per
batch of outcomes, DESIGN.md invariant 4), and a job that finishes alone is visible within the
linger plus one round trip.

Postgres briefly unavailable: the statement is retried with backoff until `give_up_at` (the
drain's deadline plus a little); only then are the outcomes given up, and those jobs are left to
their leases, which bring them back to run again. A value Postgres refuses (text that slipped past
the checks) fails only its own job: the group is rewritten one outcome at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..broker import Ack, Broker
from ..clock import Clock, iso, to_ms
from ..errors import PostgresUnavailable, StatementFailed
from ..keys import Keys
from ..store import Store
from .execute import failed
from .report import DrainReport, Outcome, dead_entry

log = logging.getLogger("jobqueue.drain")

FIRST_RETRY_S = 0.05
MAX_RETRY_S = 1.0


class Recorder:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        keys: Keys,
        clock: Clock,
        report: DrainReport,
        *,
        members: Callable[[int], tuple[str, str] | None],
        on_recorded: Callable[[int], None],
        on_finished: Callable[[list[int]], Awaitable[int]] | None = None,
        group_max: int,
        linger_s: float,
        give_up_at: float,
        on_ended: Callable[[list[int], list[dict[str, Any]]], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.keys = keys
        self.clock = clock
        self.report = report
        self._member = members  # job id -> (queue, member), for the acknowledgement
        self._on_recorded = on_recorded
        # Resolves the dependents of jobs that ended (dependencies.py): one statement, only for a
        # group in which a finished job has dependents; answers how many became runnable.
        self._on_finished = on_finished
        self.released = 0
        self.group_max = group_max
        self.linger_s = linger_s
        self.give_up_at = give_up_at
        # Awaited after each group with the jobs that reached a final status and the completion
        # callbacks the statement inserted: waiters are told, callbacks pushed (drain/loop.py).
        self._on_ended = on_ended
        self._pending: list[Outcome] = []
        self._acks = Ack(keys)
        self._writing = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()  # set after every group: the claimer waits on it when backed up
        self._closing = False
        self.flushed_at = 0.0  # loop time the last group was written and acknowledged
        self._task: asyncio.Task[None] | None = None
        self.error: Exception | None = None  # set when outcomes had to be given up

    @property
    def backlog(self) -> int:
        """Outcomes (and acknowledgements) not yet written."""
        return len(self._pending) + self._writing + (1 if self._acks else 0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="jobqueue-recorder")

    def add(self, outcome: Outcome) -> None:
        self._pending.append(outcome)
        self._wake.set()

    def add_ack(self, ack: Ack) -> None:
        """Redis writes that need no Postgres write (what a grant refused): sent with the next group."""
        self._acks.merge(ack)
        self._wake.set()

    async def wait_progress(self, timeout_s: float) -> None:
        self._progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._progress.wait(), timeout_s)

    async def close(self) -> None:
        """Write everything still pending, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def abandon(self) -> None:
        """Stop without writing what is pending (the drain is going down as if it had died)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._closing and len(self._pending) < self.group_max:
                await asyncio.sleep(self.linger_s)  # let the group fill
            while self._pending or self._acks:
                group, self._pending = self._pending[: self.group_max], self._pending[self.group_max :]
                ack, self._acks = self._acks, Ack(self.keys)
                self._writing = len(group)
                try:
                    await self._flush(group, ack)
                finally:
                    self._writing = 0
                    self.flushed_at = asyncio.get_running_loop().time()
                    self._progress.set()
            if self._closing:
                return

    async def _flush(self, group: list[Outcome], ack: Ack) -> None:
        ended: list[int] = []
        callbacks: list[dict[str, Any]] = []
        written: list[dict[str, Any]] = []
        if group:
            try:
                written = await self._write_retrying(group)
            except PostgresUnavailable as e:
                # Left to their leases: they come back when those run out, and run again.
                log.error("recording %d outcome(s) failed, Postgres is unavailable: %s", len(group), e.message)
                self.error = self.error or e
                for o in group:
                    self._on_recorded(o.row["id"])
                return
            holders = {r["id"] for r in written if r["kind"] == "job"}
            callbacks = [r for r in written if r["kind"] == "callback"]
            loop_now = asyncio.get_running_loop().time()
            for o in group:
                jid = o.row["id"]
                where = self._member(jid)
                self._on_recorded(jid)
                if where is None:
                    continue
                queue, member = where
                if jid not in holders:
                    # Our lease was taken over (it expired): the new holder owns the job now.
                    ack.done(queue, member, o.token)
                    continue
                setattr(self.report, o.outcome, getattr(self.report, o.outcome) + 1)
                if o.status in ("completed", "failed"):
                    ended.append(jid)
                    ack.end(jid)
                if o.granted_at:
                    self.report.latencies_ms.offer((loop_now - o.granted_at) * 1000)
                if o.outcome == "failed":
                    self.report.dead.append(dead_entry(o.row, o.error))
                if o.outcome == "retried" and o.run_at is not None:
                    ack.retry(queue, member, o.token, to_ms(o.run_at))
                elif o.outcome == "rate_limited" and o.run_at is not None:
                    ack.park(queue, member, o.token, to_ms(o.run_at))
                elif o.outcome == "released":
                    ack.release(queue, member, o.token, o.row["priority"])
                else:
                    ack.done(queue, member, o.token)
            self.report.groups.offer(len(group))
        if ack:
            try:
                await self.broker.ack(ack, self.clock.ms())
            except Exception as e:  # the outcomes are written; a later claim drops the stale leases
                log.warning("acknowledging outcomes in Redis failed: %s", e)
        if group:
            await self._resolve_dependents(group, [r for r in written if r["kind"] == "job"])
        if (ended or callbacks) and self._on_ended is not None:
            await self._on_ended(ended, callbacks)

    async def _resolve_dependents(self, group: list[Outcome], written: list[dict[str, Any]]) -> None:
        ended = {o.row["id"] for o in group if o.status in ("completed", "failed")}
        ids = [int(str(r["id"])) for r in written if r.get("has_dependents") and r["id"] in ended]
        if not ids or self._on_finished is None:
            return
        try:
            self.released += await self._on_finished(ids)
        except Exception as e:  # the outcomes are written; reconcile resolves the edges
            log.warning("resolving the dependents of %d job(s) failed: %s", len(ids), e)

    async def _write_retrying(self, group: list[Outcome]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        delay = FIRST_RETRY_S
        while True:
            try:
                return await self._write_guarded(group)
            except PostgresUnavailable as e:
                if loop.time() + delay > self.give_up_at:
                    raise
                log.warning("recording outcomes: %s; retrying in %.2f s", e.message, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)

    async def _write_guarded(self, group: list[Outcome]) -> list[dict[str, Any]]:
        """One statement; should Postgres refuse a value in it, one outcome at a time, so that a
        poisoned outcome fails its own job rather than the group (whose jobs would all run again)."""
        try:
            return await self._write(group)
        except StatementFailed as e:
            log.error("recording a group of outcomes failed (%s); recording them one by one", e.message)
        written: list[dict[str, Any]] = []
        for o in group:
            try:
                written += await self._write([o])
            except StatementFailed as e:
                replacement = failed(o.row, f"the outcome could not be stored: {e.message[:200]}", o.token)
                replacement.duration_ms = o.duration_ms
                written += await self._write([replacement])
                o.outcome, o.status, o.error, o.result, o.run_at = "failed", "failed", replacement.error, None, None
        return written

    async def _write(self, batch: list[Outcome]) -> list[dict[str, Any]]:
        fin = self.clock.now()
        return await self.store.fetch(
            "finish",
            [o.row["id"] for o in batch],
            [o.status for o in batch],
            [o.result for o in batch],
            [o.error for o in batch],
            [o.run_at for o in batch],
            [o.outcome for o in batch],
            [o.duration_ms for o in batch],
            [o.token for o in batch],
            fin,
            iso(fin),
            [o.progress for o in batch],
        )
