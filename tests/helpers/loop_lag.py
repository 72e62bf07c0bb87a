"""A loop-lag probe: a task that keeps asking for `asyncio.sleep(interval)` and records how late
it wakes. Anything that holds the event loop (a synchronous SSL context build, a CPU-bound step
run by hundreds of tasks in one turn) shows as lag; the maximum over the run is what a drain's
own Postgres or Redis waits would have suffered."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class LoopLag:
    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.max_s = 0.0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(self.interval_s)
            self.max_s = max(self.max_s, loop.time() - t - self.interval_s)
            self.samples += 1

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)  # started before the code under test takes the loop
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    @property
    def max_ms(self) -> float:
        return self.max_s * 1000
