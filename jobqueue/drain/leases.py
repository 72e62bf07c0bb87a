"""The leases a drain holds, and the heartbeat that keeps them alive while the drain lives.

A job is held from its grant until its outcome is recorded. Two deadlines per lease:

- Postgres' `lease_expires_at`, the authority: the grant sets it to the job's own timeout plus the
  grace, capped by the drain's deadline plus the grace (sql/queries.sql `claim`).
- the score of its entry in Redis' processing set, which only says when recovery should look. The
  claim script cannot know each job's timeout, so it writes a provisional score (now plus the
  grace); recovery that looks early is harmless (Postgres says the lease is still held, and the
  entry is handed back to its holder at Postgres' deadline), while a score later than the lease
  would delay recovery.

Every `heartbeat_ms` the drain looks at what it holds (a Python scan, no I/O). Leases that would
run out within two intervals are extended in Postgres to two intervals plus the grace from now
(`extend_leases`, one statement for all of them), and Redis scores that would come due within two
intervals are moved to the lease's deadline (`ZADD GT`, one request). A job shorter than the
grace never costs a heartbeat; a long one costs one Redis update; a job whose outcome is stuck
behind a Postgres outage keeps being extended while the drain lives. When the drain dies, nothing
extends: each job is recoverable at its own deadline, within its timeout plus the grace.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from ..broker import Broker, Lease
from ..clock import Clock, from_ms, to_ms
from ..errors import Unavailable
from ..progress import ProgressBoard
from ..store import Store
from .report import DrainReport

log = logging.getLogger("jobqueue.drain")


@dataclass
class Held:
    queue: str
    member: str
    token: str
    lease_ms: int  # Postgres' lease_expires_at
    score_ms: int  # the processing-set score in Redis


class Leases:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        clock: Clock,
        report: DrainReport,
        *,
        grace_ms: int,
        heartbeat_ms: int,
        progress: ProgressBoard | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.clock = clock
        self.report = report
        self.grace_ms = grace_ms
        self.heartbeat_ms = heartbeat_ms
        self.held: dict[int, Held] = {}
        self.progress = progress
        self._task: asyncio.Task[None] | None = None

    def provisional_ms(self, now_ms: int) -> int:
        """The score the claim script writes before Postgres has granted anything."""
        return now_ms + max(self.grace_ms, 2 * self.heartbeat_ms)

    def hold(self, job_id: int, held: Held) -> None:
        self.held[job_id] = held

    def release(self, job_id: int) -> None:
        self.held.pop(job_id, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._beat_forever(), name="jobqueue-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_ms / 1000)
            try:
                await self.beat()
            except Unavailable as e:
                # The next beat tries again; meanwhile the leases run on their current deadlines.
                log.warning("heartbeat failed: %s", e.message)

    async def beat(self) -> None:
        """One heartbeat: extend what is about to run out (see the module docstring)."""
        if not self.held:
            return
        now = self.clock.ms()
        soon = now + 2 * self.heartbeat_ms
        extend = {jid: h for jid, h in self.held.items() if h.lease_ms < soon}
        if extend:
            until = from_ms(soon + self.grace_ms)
            rows = await self.store.fetch(
                "extend_leases", list(extend), [h.token for h in extend.values()], [until] * len(extend)
            )
            for r in rows:
                h = self.held.get(r["id"])
                if h is not None:
                    h.lease_ms = to_ms(r["lease_expires_at"])
        rescore = [(jid, h) for jid, h in self.held.items() if h.score_ms < soon and h.lease_ms > h.score_ms]
        # Progress reports ride in the same request as the rescore (progress.py).
        reports = self.progress.due() if self.progress is not None else []
        if rescore or reports:
            await self.broker.extend((Lease(h.queue, h.member, h.token, h.lease_ms) for _, h in rescore), reports)
            for _, h in rescore:
                h.score_ms = h.lease_ms
        if extend or rescore:
            self.report.heartbeats += 1
