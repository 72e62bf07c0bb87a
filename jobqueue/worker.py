"""One drain loop for every entry point.

- `drain_once`: one bounded drain, then a continuation kick when it left work behind. What
  `/api/workers` (Vercel Cron, QStash), the Lambda schedule and `jobqueue drain` run.
- `run_worker`: drains back to back while there is work, sleeps when idle (woken early by a kick),
  rides out a Postgres or Redis outage, and stops on its `stop` event (SIGTERM) the way a drain
  ends its budget: no more claims, running jobs finish, every outcome is recorded, what was
  claimed but not started is released. What `jobqueue worker` and `make dev`'s tick run.

All of them run the same `JobQueue.drain` (jobqueue/drain/), with the same report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import JobQueueError

if TYPE_CHECKING:
    from .drain import DrainReport
    from .engine import JobQueue

log = logging.getLogger("jobqueue.worker")


async def drain_once(
    jq: JobQueue, budget_s: float | None = None, *, stop: asyncio.Event | None = None, max_jobs: int | None = None
) -> DrainReport:
    report = await jq.drain(budget_s, stop=stop, max_jobs=max_jobs)
    if report.more:
        await continue_later(jq)
    return report


async def continue_later(jq: JobQueue) -> bool:
    """After a drain that left work behind, kick the next one (a QStash message to
    `/api/workers` in production). Shares the enqueue kick's turn, so however many drains finish
    with work left, at most one continuation per JOBQUEUE_KICK_INTERVAL_MS is sent: the number of
    concurrent drains stays bounded. Returns whether a kick was sent."""
    if jq.kicker is None:
        return False
    try:
        if not await jq.broker.take_turn(jq.keys.kick, jq.clock.ms(), jq.settings.kick_interval_ms):
            return False
        await jq.kicker()
    except Exception as e:  # the drain already succeeded; its answer must not turn into an error
        log.warning("kick: continuing the drain failed: %s", e)
        return False
    return True


async def run_worker(
    jq: JobQueue,
    *,
    stop: asyncio.Event,
    budget_s: float,
    idle_s: float,
    wake: asyncio.Event | None = None,
    on_report: Callable[[DrainReport], None] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> None:
    """Drain until `stop` is set. `wake` (set by a kick) ends an idle sleep early."""
    last_error: str | None = None
    while not stop.is_set():
        if wake is not None:
            # Cleared before the drain: a kick that lands while it runs triggers the next one.
            wake.clear()
        try:
            report = await jq.drain(budget_s, stop=stop)
        except JobQueueError as e:
            # One line per distinct failure, not one per second while Postgres is down.
            if e.message != last_error:
                log.warning("drain failed: %s", e.message)
                last_error = e.message
            if on_error is not None:
                on_error(e.message)
            await _sleep(stop, wake, idle_s)
            continue
        if last_error is not None:
            log.info("drains work again")
            last_error = None
        if on_report is not None:
            on_report(report)
        if not report.more:
            await _sleep(stop, wake, idle_s)
        # else the budget ran out with work left: go again at once


async def _sleep(stop: asyncio.Event, wake: asyncio.Event | None, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED), seconds)
    finally:
        for w in waiters:
            w.cancel()


class Liveness:
    """What `jobqueue worker --port` answers on any GET: 200 while drains succeed, 503 after one
    failed (Postgres or Redis down), with the last drain's counts. For a container's liveness or
    readiness probe; it serves nothing else and reads no request body."""

    def __init__(self) -> None:
        self.drains = 0
        self.last: dict[str, object] | None = None
        self.error: str | None = None
        self._server: asyncio.Server | None = None

    def on_report(self, report: DrainReport) -> None:
        self.drains += 1
        self.last = report.contract()
        self.error = None

    def on_error(self, message: str) -> None:
        self.error = message

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._answer, host, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import json

        try:
            with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            ok = self.error is None
            body = json.dumps({"status": "ok" if ok else "failing", "drains": self.drains, "last": self.last}).encode()
            head = f"HTTP/1.1 {'200 OK' if ok else '503 Service Unavailable'}\r\n"
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
