"""Flow-control benchmark: the drain with 1, 100 and 10,000 active groups, without and with limits.

    python -m bench.groups [--jobs 20000] [--groups 1 100 10000] [--workload echo webhook mixed]
                           [--limits none group_concurrency group_rate] [--transport upstash|redis]

Each run enqueues N jobs spread round-robin over G groups (tenants), then drains them in one long
drain (what `/api/workers` runs). The workload is `echo` (no-ops), `webhook` (`webhook.deliver` to
a local receiver in its own process that answers 200 at once; the request names the tenant as the
group) or `mixed` (90 % webhooks, 10 % echo). The queue has one of three settings:

- none: jobs carry a group, the queue has no limits (the cost every queue pays by default);
- group_concurrency: at most 50 running per group, across all drains;
- group_rate: 1,000,000 starts per second per group with a burst of 1,000 (a rate that never binds,
  so the figure is the bookkeeping's cost, not the limit's effect).

It prints jobs/s, Redis commands per job (every `redis.call` inside a script counts, as on
Upstash's bill), Redis requests and Postgres statements per claim, and the claims made. Redis is a
private `redis-server` started for the run, so INFO commandstats counts this benchmark alone even
on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import redis

from jobqueue.engine import JobQueue
from jobqueue.settings import Settings
from jobqueue.store import Store
from jobqueue.transports import RedisPyTransport, UpstashTransport

from . import common
from .common import TOKEN, create_db, drop_db, free_port, new_prefix, write_json
from .webhook import receiver_process

try:
    from jobqueue.builtins import default_registry
except ImportError:  # an older checkout
    from handlers import default_registry  # type: ignore[no-redef]

LIMITS: dict[str, dict[str, Any]] = {
    "none": {},
    "group_concurrency": {"group_concurrency": 50},
    "group_rate": {"group_rate": {"limit": 1_000_000, "period_ms": 1000, "burst": 1000}},
}


@contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of the run's own: the command counts are this benchmark's alone."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("bench.groups needs redis-server on PATH")
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d],
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            for _ in range(100):
                try:
                    redis.Redis.from_url(url).ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def commands(url: str) -> int:
    stats: dict[str, Any] = redis.Redis.from_url(url).info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def requests(workload: str, jobs: int, groups: int, hook: str) -> list[dict[str, Any]]:
    out = []
    for i in range(jobs):
        group = f"tenant-{i % groups}"
        if workload == "echo" or (workload == "mixed" and i % 10 == 0):
            out.append({"type": "echo", "payload": {"i": i}, "group": group})
        else:
            out.append({"type": "webhook.deliver", "payload": {"url": hook, "data": {"i": i}}, "group": group})
    return out


async def run_one(
    redis_url: str, receiver: str, transport: str, workload: str, jobs: int, groups: int, limit: str
) -> dict[str, Any]:
    name = "jobqueue_bench_groups"
    url = await create_db(name)
    out: dict[str, Any] = {
        "workload": workload,
        "groups": groups,
        "limits": limit,
        "transport": transport,
        "jobs": jobs,
    }
    common.REDIS_URL = redis_url  # the proxy serves the private server
    with common.upstash_proxy(0) as proxy:
        settings = Settings(DATABASE_URL=url, JOBQUEUE_PREFIX=new_prefix(), WEBHOOK_ALLOW_PRIVATE_NETWORKS=True)
        r: Any = UpstashTransport(proxy, TOKEN) if transport == "upstash" else RedisPyTransport.from_url(redis_url)
        jq = JobQueue(Store(url, pool_max=4), r, default_registry(), settings)
        try:
            await jq.drain(2)  # builds the index (epoch marker)
            if LIMITS[limit]:
                await jq.set_queue_settings("default", LIMITS[limit])
            reqs = requests(workload, jobs, groups, f"{receiver}/hook")
            for i in range(0, jobs, 1000):
                await jq.enqueue_many(reqs[i : i + 1000])
            calls0, req0, st0 = commands(redis_url), jq.redis.requests, jq.store.statements
            t0 = time.perf_counter()
            report = await jq.drain(600)
            elapsed = time.perf_counter() - t0
            assert report.completed == jobs, report
            claims = report.claims
            out.update(
                {
                    "jobs_per_s": round(jobs / elapsed),
                    "seconds": round(elapsed, 2),
                    "claims": claims,
                    "redis_commands_per_job": round((commands(redis_url) - calls0) / jobs, 4),
                    "redis_requests_per_claim": round((jq.redis.requests - req0) / max(1, claims), 2),
                    "pg_statements_per_claim": round((jq.store.statements - st0) / max(1, claims), 2),
                }
            )
        finally:
            await jq.close()
            redis.Redis.from_url(redis_url).flushall()
            await drop_db(name)
    return out


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with private_redis() as redis_url, ExitStack() as stack:
        receiver = receiver_process(stack)
        for workload in args.workload:
            for groups in args.groups:
                for limit in args.limits:
                    for transport in args.transport:
                        res = await run_one(redis_url, receiver, transport, workload, args.jobs, groups, limit)
                        print(json.dumps(res), flush=True)
                        results.append(res)
    head = f"{'workload':<8} {'groups':>7} {'limits':<18} {'jobs/s':>8} {'cmds/job':>9} {'req/claim':>10}"
    print(f"\n{head} {'stmt/claim':>11}")
    for res in results:
        print(
            f"{res['workload']:<8} {res['groups']:>7} {res['limits']:<18} {res['jobs_per_s']:>8}"
            f" {res['redis_commands_per_job']:>9} {res['redis_requests_per_claim']:>10}"
            f" {res['pg_statements_per_claim']:>11}"
        )
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--groups", type=int, nargs="+", default=[1, 100, 10_000])
    p.add_argument("--workload", nargs="+", default=["echo", "webhook", "mixed"], choices=["echo", "webhook", "mixed"])
    p.add_argument("--limits", nargs="+", default=list(LIMITS), choices=list(LIMITS))
    p.add_argument("--transport", nargs="+", default=["upstash"], choices=["upstash", "redis"])
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    write_json(a.json, asyncio.run(main(a)))
