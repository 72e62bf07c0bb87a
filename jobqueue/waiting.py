"""Waiting for a job to end: `GET /api/jobs/{id}?wait_s=N` and `Client.wait()`.

A waiting caller reads the job from Postgres once, then waits for a change signal, and reads it
once more when the signal comes (or when N seconds are up). Two signals, because the drain that
finishes the job may run in this process or in any other (serverless: the waiting request and the
drain are usually different function instances):

- in this process, the recorder calls `notify` right after the outcome's statement: the waiter
  answers within microseconds;
- across processes, the acknowledgement of every group of outcomes (ack.lua), a cancel and a dead
  lease add the ended jobs' ids to one Redis sorted set (`{prefix}:done`, scored by the ms they
  ended, trimmed to 30 s; 2 commands per group, whatever its size). One poller per process asks
  for every id its callers wait on in a single `ZMSCORE` every `poll_s` (50 ms), so the cost is
  one Redis command per poll per process that has waiters, shared by all of them, and never a
  Postgres query per poll. Upstash's REST API has no blocking pub/sub to wait on, and LISTEN would
  hold a direct Postgres connection per instance (poolers and Neon's scale-to-zero both object).

A done entry can be stale (a job retried after it ended): the waiter reads Postgres, sees the job
is not terminal, and ignores that entry until its score changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .broker import Broker
from .errors import RedisUnavailable
from .models import TERMINAL

log = logging.getLogger("jobqueue")

Read = Callable[[], Awaitable[dict[str, Any]]]
POLL_S = 0.05  # how often the poller asks Redis: well inside the 100 ms the contract allows
MAX_WAIT_S = 25  # DESIGN.md section 8


@dataclass(eq=False)
class Waiter:
    job_id: int
    event: asyncio.Event = field(default_factory=asyncio.Event)
    seen_ms: int | None = None  # the done entry's score the poller last reported
    ignore_ms: int | None = None  # a done entry that turned out stale


class Waiters:
    """This process's waiting callers, by job id, and the poller that watches the done set."""

    def __init__(self, broker: Broker, poll_s: float = POLL_S) -> None:
        self.broker = broker
        self.poll_s = poll_s
        self._by_job: dict[int, set[Waiter]] = {}
        self._poller: asyncio.Task[None] | None = None
        self.polls = 0  # Redis requests made, for the tests

    def notify(self, job_ids: list[int]) -> None:
        """These jobs reached a final status (written in Postgres by this process)."""
        for jid in job_ids:
            for w in self._by_job.get(jid, ()):
                w.event.set()

    async def wait(
        self, job_id: int, timeout_s: float, read: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """`read()` the job until it is terminal, at most `timeout_s`; its last view either way."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        w = Waiter(job_id)
        self._by_job.setdefault(job_id, set()).add(w)  # before the first read: no lost wakeup
        self._ensure_poller()
        try:
            row = await read()
            while row["status"] not in TERMINAL:
                left = end - loop.time()
                if left <= 0:
                    return row
                try:
                    await asyncio.wait_for(w.event.wait(), left)
                except TimeoutError:
                    return await read()
                w.event.clear()
                row = await read()
                if row["status"] not in TERMINAL:
                    w.ignore_ms = w.seen_ms  # an entry from an earlier end: wait for a newer one
            return row
        finally:
            waiting = self._by_job.get(job_id)
            if waiting is not None:
                waiting.discard(w)
                if not waiting:
                    del self._by_job[job_id]

    def _ensure_poller(self) -> None:
        loop = asyncio.get_running_loop()
        p = self._poller
        if p is None or p.done() or p.get_loop() is not loop:
            self._poller = loop.create_task(self._poll(), name="jobqueue-waiters")

    async def _poll(self) -> None:
        while self._by_job:
            ids = sorted(self._by_job)
            try:
                self.polls += 1
                ended = await self.broker.ended_at(ids)
            except RedisUnavailable as e:  # the waiters still answer at their timeouts
                log.warning("waiting: polling the done set failed: %s", e.message)
                ended = {}
            for jid, ms in ended.items():
                for w in self._by_job.get(jid, ()):
                    w.seen_ms = ms
                    if ms != w.ignore_ms:
                        w.event.set()
            await asyncio.sleep(self.poll_s)

    async def close(self) -> None:
        if self._poller is not None and not self._poller.done():
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._poller
