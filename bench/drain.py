"""Drain benchmark: no-op jobs, a mixed workload, and the cost and latency of the continuous drain.

    python -m bench.drain [--jobs 50000] [--transport upstash|redis] [--scenario noop mixed]

- noop: N `echo` jobs enqueued first, then one long drain (what `/api/workers` runs): jobs/s,
  claims, Redis commands per job (INFO commandstats: every `redis.call` in a script counts, as on
  Upstash's bill), requests and statements per claim, the recorder's group sizes, and the time from
  a job's grant to its recorded outcome (p50/p99).
- mixed: the same with 1 % of the jobs sleeping 2 s: the no-ops' throughput (counted from their
  `finished_at`) against the pure no-op figure; a batch barrier would make every no-op claimed
  with a sleeper wait for it.

Only public calls of the engine are used (enqueue_many, drain), so the same script measures an
older checkout for before/after figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import asyncpg

from jobqueue.engine import JobQueue
from jobqueue.registry import JobContext, Registry
from jobqueue.settings import Settings
from jobqueue.store import Store
from jobqueue.transports import RedisPyTransport, UpstashTransport

from .common import (
    REDIS_URL,
    TOKEN,
    clean_prefix,
    command_calls,
    create_db,
    drop_db,
    new_prefix,
    pct,
    upstash_proxy,
    write_json,
)

try:
    from jobqueue.builtins import default_registry
except ImportError:  # an older checkout
    from handlers import default_registry  # type: ignore[no-redef]

SLEEP_S = 2.0


def registry() -> Registry:
    reg: Registry = default_registry()

    @reg.job("sleep2", timeout_ms=10_000)
    async def sleep2(payload: dict[str, Any], ctx: JobContext) -> None:
        await asyncio.sleep(SLEEP_S)

    return reg


async def run_scenario(scenario: str, transport: str, jobs: int) -> dict[str, Any]:
    name = f"jobqueue_bench_drain_{scenario}"
    url = await create_db(name)
    prefix = new_prefix()
    out: dict[str, Any] = {"scenario": scenario, "transport": transport, "jobs": jobs}
    with upstash_proxy(0) as proxy:
        settings = Settings(DATABASE_URL=url, JOBQUEUE_PREFIX=prefix)
        redis: Any = UpstashTransport(proxy, TOKEN) if transport == "upstash" else RedisPyTransport.from_url(REDIS_URL)
        jq = JobQueue(Store(url, pool_max=4), redis, registry(), settings)
        try:
            await jq.drain(2)  # builds the index (epoch marker)
            reqs = [
                {"type": "sleep2" if scenario == "mixed" and i % 100 == 50 else "echo", "payload": {"i": i}}
                for i in range(jobs)
            ]
            for i in range(0, jobs, 1000):
                await jq.enqueue_many(reqs[i : i + 1000])
            calls0, req0, st0 = command_calls(), jq.redis.requests, jq.store.statements
            t0 = time.perf_counter()
            started = jq.clock.now()
            report = await jq.drain(600)
            elapsed = time.perf_counter() - t0
            assert report.completed == jobs, report
            claims = getattr(report, "claims", None) or getattr(report, "batches", 0)
            out.update(
                {
                    "jobs_per_s": round(jobs / elapsed),
                    "seconds": round(elapsed, 2),
                    "claims": claims,
                    "redis_commands_per_job": round((command_calls() - calls0) / jobs, 4),
                    "redis_requests_per_claim": round((jq.redis.requests - req0) / max(1, claims), 2),
                    "pg_statements_per_claim": round((jq.store.statements - st0) / max(1, claims), 2),
                }
            )
            groups = list(getattr(report, "groups", []))
            if groups:
                out["group_size"] = {
                    "count": getattr(report.groups, "seen", len(groups)),
                    "mean": round(statistics.fmean(groups), 1),
                    "p50": pct(groups, 50),
                    "max": max(groups),
                }
            lat = list(getattr(report, "latencies_ms", []))
            if lat:
                out["grant_to_recorded_ms"] = {"p50": round(pct(lat, 50), 1), "p99": round(pct(lat, 99), 1)}
            if scenario == "mixed":
                conn = await asyncpg.connect(url)
                try:
                    last = await conn.fetchval("SELECT max(finished_at) FROM jobs WHERE type = 'echo'")
                    n = await conn.fetchval("SELECT count(*) FROM jobs WHERE type = 'echo'")
                finally:
                    await conn.close()
                noop_s = (last - started).total_seconds()
                out["noop_jobs_per_s"] = round(n / noop_s)
                out["noop_seconds"] = round(noop_s, 2)
        finally:
            await jq.close()
            clean_prefix(prefix)
            await drop_db(name)
    return out


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for scenario in args.scenario:
        for transport in args.transport:
            r = await run_scenario(scenario, transport, args.jobs)
            print(json.dumps(r), flush=True)
            results.append(r)
    pure = {r["transport"]: r["jobs_per_s"] for r in results if r["scenario"] == "noop"}
    for r in results:
        if r["scenario"] == "mixed" and r["transport"] in pure:
            r["noop_share_of_pure"] = round(r["noop_jobs_per_s"] / pure[r["transport"]], 2)
            print(f"mixed ({r['transport']}): no-ops keep {r['noop_share_of_pure']:.0%} of their pure throughput")
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=50_000)
    p.add_argument("--transport", nargs="+", default=["upstash"], choices=["upstash", "redis"])
    p.add_argument("--scenario", nargs="+", default=["noop", "mixed"], choices=["noop", "mixed"])
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    write_json(a.json, asyncio.run(main(a)))
