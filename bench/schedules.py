"""Schedules benchmark: what an idle tick costs with 0, 1, 10 and 100 schedules registered, what a tick
that fires all of them costs, and how late a tick's job starts with the delayed kick.

    python -m bench.schedules [--lateness-s 40]

Costs are counted exactly: Redis requests (the transport's counter), Postgres statements (the
store's) and Redis commands (INFO commandstats, every `redis.call` in a script included), on an
injected clock so that the ticks fall exactly where wanted. Lateness runs on the real clock: a
schedule every 5 s, a regular tick only every 30 s, and a kicker that behaves like QStash's
delayed publish (it waits until the due time, then runs a drain) — the figure is the delay from
each tick's time to its job's start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import asyncpg

from jobqueue.builtins import default_registry
from jobqueue.clock import Clock, FakeClock
from jobqueue.engine import JobQueue
from jobqueue.settings import Settings
from jobqueue.store import Store
from jobqueue.transports import UpstashTransport

from .common import TOKEN, clean_prefix, command_calls, create_db, drop_db, new_prefix, upstash_proxy, write_json


def engine(url: str, proxy: str, prefix: str, clock: Clock, **settings: Any) -> JobQueue:
    s = Settings(DATABASE_URL=url, JOBQUEUE_PREFIX=prefix, **settings)
    return JobQueue(Store(url, pool_max=4), UpstashTransport(proxy, TOKEN), default_registry(), s, clock)


async def costs(proxy: str) -> list[dict[str, Any]]:
    out = []
    for n in (0, 1, 10, 100):
        url = await create_db(f"jobqueue_bench_schedules_{n}")  # a fresh table per size
        prefix = new_prefix()
        clock = FakeClock()
        now = clock.now()
        clock.advance(3_600_000 - (now.minute * 60_000 + now.second * 1000 + now.microsecond // 1000))
        jq = engine(url, proxy, prefix, clock)
        try:
            for i in range(n):
                await jq.schedules.put(f"s{i}", {"type": "echo", "every_ms": 60_000})
            await jq.drain(1)
            c0, r0, s0 = command_calls(), jq.redis.requests, jq.store.statements
            await jq.drain(1)  # nothing due
            idle = {"redis_requests": jq.redis.requests - r0, "pg_statements": jq.store.statements - s0}
            idle["redis_commands"] = command_calls() - c0
            clock.advance(60_000)  # every schedule is due
            c0, r0, s0 = command_calls(), jq.redis.requests, jq.store.statements
            t0 = time.perf_counter()
            report = await jq.drain(30)
            fire_ms = (time.perf_counter() - t0) * 1000
            # The drain fires every due schedule (2 statements, 1 request), then claims, runs and
            # records the jobs they made (1 claim, 1 grant, 1 record, 1 acknowledgement, and the
            # empty claim that ends it).
            fire = {
                "fired": report.fired,
                "redis_requests": jq.redis.requests - r0,
                "pg_statements": jq.store.statements - s0,
                "redis_commands": command_calls() - c0,
                "drain_ms": round(fire_ms, 1),
            }
            out.append({"schedules": n, "idle_tick": idle, "firing_tick": fire})
            print(json.dumps(out[-1]), flush=True)
        finally:
            await jq.close()
            clean_prefix(prefix)
            await drop_db(f"jobqueue_bench_schedules_{n}")
    return out


class WaitingKicker:
    """Like QStash's delayed publish: at the due time, a drain runs (here: in this process)."""

    delays = True

    def __init__(self, jq: JobQueue) -> None:
        self.jq = jq
        self.tasks: set[asyncio.Task[None]] = set()
        self.kicks = 0

    async def __call__(self, at_ms: int | None = None) -> None:
        async def later() -> None:
            if at_ms is not None:
                await asyncio.sleep(max(0.0, at_ms / 1000 - time.time()))
            self.kicks += 1
            await self.jq.drain(5)

        t = asyncio.create_task(later())
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)


async def lateness(url: str, proxy: str, seconds: float, delayed: bool) -> dict[str, Any]:
    prefix = new_prefix()
    jq = engine(url, proxy, prefix, Clock(), JOBQUEUE_TICK_INTERVAL_S=30)
    kicker = WaitingKicker(jq)
    if delayed:
        jq.kicker = kicker
    try:
        # catch_up: every tick gets its own job, so each tick's lateness is measured (coalesce
        # would fold the ticks a late drain missed into one job for the latest).
        await jq.schedules.put("every-5s", {"type": "echo", "every_ms": 5000, "misfire": "catch_up"})
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # the regular tick, every 30 s
            await jq.drain(5)
            await asyncio.sleep(min(30.0, max(0.0, end - time.monotonic())))
        for t in list(kicker.tasks):
            t.cancel()
        await asyncio.gather(*kicker.tasks, return_exceptions=True)
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT extract(epoch FROM started_at - scheduled_for) * 1000 AS late FROM jobs "
                "WHERE schedule_id = 'every-5s' AND started_at IS NOT NULL AND scheduled_for IS NOT NULL"
            )
        finally:
            await conn.close()
        late = sorted(float(r["late"]) for r in rows)
        return {
            "delayed_kick": delayed,
            "jobs": len(late),
            "kicks": kicker.kicks,
            "lateness_ms_p50": round(statistics.median(late), 1) if late else None,
            "lateness_ms_max": round(max(late), 1) if late else None,
        }
    finally:
        await jq.close()
        clean_prefix(prefix)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    name = "jobqueue_bench_schedules"
    url = await create_db(name)
    try:
        with upstash_proxy(0) as proxy:
            result: dict[str, Any] = {"costs": await costs(proxy)}
            result["lateness"] = [
                await lateness(url, proxy, args.lateness_s, True),
                await lateness(url, proxy, args.lateness_s, False),
            ]
            for r in result["lateness"]:
                print(json.dumps(r), flush=True)
    finally:
        await drop_db(name)
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lateness-s", type=float, default=40.0, help="how long each lateness run lasts")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    write_json(a.json, asyncio.run(main(a)))
