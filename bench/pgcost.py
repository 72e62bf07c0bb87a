"""What one job costs the services, for the capacity model in docs/scaling.md.

    python -m bench.pgcost [--jobs 20000] [--single 2000] [--batch 500]

Phases on a scratch database and key prefix (plain Redis, so that the Redis figures are the
engine's own commands): `--single` enqueues one by one, `--jobs` in calls of 1000, then drains
of everything (`drain(budget)` until all ran, batch `--batch`). For each phase:

- Postgres: statements by name (count, and time as the client sees it: execution plus the
  loopback round trip) and the CPU the database's server processes used (utime + stime of every
  backend connected to the scratch database, from /proc: what a Neon compute would be busy with);
  both per job. pg_stat_statements would give execution time alone, but it needs
  shared_preload_libraries, which this shared server does not load.
- Redis: commands per job and by name, as MONITOR sees them on our database number (INFO
  commandstats would count other clients of this shared server too; MONITOR shows a script's
  inner calls as well, which is what Upstash bills), and requests per call or drain.

Nothing here is asserted: figures go to docs/scaling.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import defaultdict
from typing import Any

import asyncpg

from jobqueue.builtins import default_registry
from jobqueue.engine import JobQueue
from jobqueue.settings import Settings
from jobqueue.store import Store

from .common import REDIS_URL, clean_prefix, create_db, drop_db, new_prefix
from .peers_count import Monitor

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Timings:
    """Wraps Store.fetch: count and client-side time per named statement."""

    def __init__(self) -> None:
        self.count: dict[str, int] = defaultdict(int)
        self.ms: dict[str, float] = defaultdict(float)
        self._orig = Store.fetch
        timings = self

        async def fetch(store: Store, name: str, *args: Any) -> list[dict[str, Any]]:
            t = time.perf_counter()
            try:
                return await timings._orig(store, name, *args)
            finally:
                timings.count[name] += 1
                timings.ms[name] += (time.perf_counter() - t) * 1000

        Store.fetch = fetch  # type: ignore[method-assign]

    def reset(self) -> None:
        self.count.clear()
        self.ms.clear()

    def restore(self) -> None:
        Store.fetch = self._orig  # type: ignore[method-assign]


async def backend_cpu_s(admin: asyncpg.Connection, db: str) -> float:
    """CPU seconds used so far by the server processes connected to `db` (a process that ends
    between two readings takes its share with it: the pool keeps its connections open here)."""
    pids = [r["pid"] for r in await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", db)]
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        except (OSError, IndexError, ValueError):
            continue
    return total / CLK_TCK


async def phase(
    name: str, jq: JobQueue, t: Timings, mon: Monitor, admin: asyncpg.Connection, db: str, jobs: int, body: Any
) -> dict[str, Any]:
    t.reset()
    cmd0, by0 = await asyncio.to_thread(mon.sync), mon.snapshot()
    cpu0, req0 = await backend_cpu_s(admin, db), jq.redis.requests
    w0 = time.perf_counter()
    calls = await body()
    wall = time.perf_counter() - w0
    cpu = await backend_cpu_s(admin, db) - cpu0
    cmds, by = await asyncio.to_thread(mon.sync), mon.snapshot()
    return {
        "phase": name,
        "jobs": jobs,
        "calls": calls,
        "wall_s": round(wall, 2),
        "jobs_per_s": round(jobs / wall),
        "pg_server_cpu_ms_per_job": round(cpu * 1000 / jobs, 4),
        "pg_statements": {k: t.count[k] for k in sorted(t.count)},
        "pg_client_ms_per_job": {k: round(t.ms[k] / jobs, 4) for k in sorted(t.ms)},
        "pg_statements_per_job": round(sum(t.count.values()) / jobs, 4),
        "redis_commands_per_job": round((cmds - cmd0) / jobs, 4),
        "redis_by_command": {k: v - by0.get(k, 0) for k, v in sorted(by.items()) if v - by0.get(k, 0)},
        "redis_requests": jq.redis.requests - req0,
        "redis_requests_per_call": round((jq.redis.requests - req0) / max(1, calls), 2),
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    name = "jobqueue_bench_pgcost"
    url = await create_db(name)
    prefix = new_prefix()
    settings = Settings(DATABASE_URL=url, REDIS_URL=REDIS_URL, JOBQUEUE_PREFIX=prefix, JOBQUEUE_BATCH_SIZE=args.batch)
    jq = JobQueue.from_settings(settings, default_registry())
    admin = await asyncpg.connect(url.rpartition("/")[0] + "/postgres")
    t = Timings()
    mon = Monitor(REDIS_URL, int(REDIS_URL.rstrip("/").rpartition("/")[2] or 0))
    mon.start()
    out = []
    try:
        await jq.drain(2)  # the epoch marker; opens the pool

        async def single() -> int:
            for i in range(args.single):
                await jq.enqueue({"type": "echo", "payload": {"i": i}})
            return args.single

        async def bulk() -> int:
            for s in range(0, args.jobs, 1000):
                await jq.enqueue_many([{"type": "echo", "payload": {"i": i}} for i in range(s, s + 1000)])
            return args.jobs // 1000

        async def drain() -> int:
            total, ran, drains = args.single + args.jobs, 0, 0
            while ran < total:
                report = await jq.drain(60)
                ran += report.completed
                drains += 1
                if not report.claimed and not report.more:
                    break
            return drains

        out.append(await phase("enqueue, one per call", jq, t, mon, admin, name, args.single, single))
        out.append(await phase("enqueue, 1000 per call", jq, t, mon, admin, name, args.jobs, bulk))
        scratch = await asyncpg.connect(url)
        await scratch.execute("ANALYZE jobs")  # planner statistics, as a live table has them
        await scratch.close()
        drained = await phase("drain (claim, run, record)", jq, t, mon, admin, name, args.single + args.jobs, drain)
        out.append(drained)
    finally:
        mon.stop()
        t.restore()
        await admin.close()
        await jq.close()
        clean_prefix(prefix)
        await drop_db(name)
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| phase | jobs/s | Postgres server CPU per job | statements per job (by name) "
        "| client-side statement ms per job | Redis commands per job | Redis requests per call/drain |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        names = ", ".join(f"{k} {v}" for k, v in r["pg_statements"].items())
        ms = ", ".join(f"{k} {v}" for k, v in r["pg_client_ms_per_job"].items())
        lines.append(
            f"| {r['phase']} | {r['jobs_per_s']:,} | {r['pg_server_cpu_ms_per_job']} ms | "
            f"{r['pg_statements_per_job']} ({names}) | {ms} | {r['redis_commands_per_job']} | "
            f"{r['redis_requests_per_call']} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--single", type=int, default=2_000)
    p.add_argument("--batch", type=int, default=500)
    args = p.parse_args()
    rows = asyncio.run(run(args))
    print(json.dumps({"loadavg": os.getloadavg(), "phases": rows}, indent=2))
    print()
    print(markdown(rows))


if __name__ == "__main__":
    main()
