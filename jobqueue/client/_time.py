"""The client's clock and sleeps, looked up at call time so that tests can run `wait()` on a fake
clock (as saq patches its one `now()`)."""

from __future__ import annotations

import time

monotonic = time.monotonic
sleep = time.sleep


async def async_sleep(seconds: float) -> None:
    import asyncio  # not at import: asyncio alone costs more than the rest of the client

    await asyncio.sleep(seconds)
