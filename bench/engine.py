"""Engine benchmark: enqueue (single and bulk), one long drain, commands per job, idle cost.

Runs through the production transport (upstash-redis SDK over HTTP) via a local
`jobqueue upstash-proxy`, with and without added latency, against the local Postgres and Redis.

    python -m bench.engine [--jobs 50000] [--latency-ms 0 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from jobqueue.builtins import default_registry
from jobqueue.engine import JobQueue
from jobqueue.settings import Settings
from jobqueue.store import Store
from jobqueue.transports import UpstashTransport

from .common import TOKEN, clean_prefix, command_calls, create_db, drop_db, new_prefix, pct, upstash_proxy


async def bench_once(latency_ms: float, jobs: int, batch: int) -> dict[str, Any]:
    name = "jobqueue_bench_engine"
    url = await create_db(name)
    prefix = new_prefix()
    out: dict[str, Any] = {"latency_ms": latency_ms, "jobs": jobs, "batch": batch}
    with upstash_proxy(latency_ms) as proxy:
        settings = Settings(DATABASE_URL=url, JOBQUEUE_PREFIX=prefix, JOBQUEUE_BATCH_SIZE=batch)
        jq = JobQueue(Store(url, pool_max=4), UpstashTransport(proxy, TOKEN), default_registry(), settings)
        try:
            await jq.drain(2)  # builds the index (epoch marker)

            # single enqueue, sequential
            lat: list[float] = []
            n_single = 1000
            t0 = time.perf_counter()
            for i in range(n_single):
                s = time.perf_counter()
                await jq.enqueue({"type": "echo", "payload": {"i": i}})
                lat.append((time.perf_counter() - s) * 1000)
            dt = time.perf_counter() - t0
            out["enqueue_single"] = {
                "per_s": round(n_single / dt),
                "p50_ms": round(pct(lat, 50), 2),
                "p99_ms": round(pct(lat, 99), 2),
            }

            # bulk enqueue, 1000 per call
            calls0, req0, st0 = command_calls(), jq.redis.requests, jq.store.statements
            t0 = time.perf_counter()
            bulk_lat = []
            for start in range(0, jobs, 1000):
                s = time.perf_counter()
                await jq.enqueue_many([{"type": "echo", "payload": {"i": i}} for i in range(start, start + 1000)])
                bulk_lat.append((time.perf_counter() - s) * 1000)
            dt = time.perf_counter() - t0
            out["enqueue_bulk"] = {
                "per_s": round(jobs / dt),
                "p50_ms_per_1000": round(statistics.median(bulk_lat), 1),
                "redis_requests_per_call": (jq.redis.requests - req0) / (jobs / 1000),
                "pg_statements_per_call": (jq.store.statements - st0) / (jobs / 1000),
                "redis_commands_per_job": round((command_calls() - calls0) / jobs, 4),
            }

            # bulk enqueue from 4 concurrent producers (a web app serves many requests at once):
            # one producer's Postgres and Redis waits overlap another's validation and encoding
            sem = asyncio.Semaphore(4)

            async def produce(start: int) -> None:
                async with sem:
                    await jq.enqueue_many([{"type": "echo", "payload": {"i": i}} for i in range(start, start + 1000)])

            t0 = time.perf_counter()
            await asyncio.gather(*(produce(s) for s in range(0, jobs, 1000)))
            out["enqueue_bulk_4_producers"] = {"per_s": round(jobs / (time.perf_counter() - t0))}

            # one long drain of everything enqueued
            total = 2 * jobs + n_single
            calls0, req0, st0 = command_calls(), jq.redis.requests, jq.store.statements
            t0 = time.perf_counter()
            report = await jq.drain(600)
            dt = time.perf_counter() - t0
            assert report.completed == total, report
            out["drain"] = {
                "per_s": round(total / dt),
                "claims": report.claims,
                "redis_requests_per_claim": round((jq.redis.requests - req0) / report.claims, 2),
                "pg_statements_per_claim": round((jq.store.statements - st0) / report.claims, 2),
                "redis_commands_per_job": round((command_calls() - calls0) / total, 4),
            }

            # idle drains
            calls0, req0, st0 = command_calls(), jq.redis.requests, jq.store.statements
            idle_lat = []
            for _ in range(100):
                s = time.perf_counter()
                r = await jq.drain(2)
                idle_lat.append((time.perf_counter() - s) * 1000)
                assert r.claimed == 0
            out["idle_drain"] = {
                "redis_requests": (jq.redis.requests - req0) / 100,
                "pg_statements": (jq.store.statements - st0) / 100,
                "redis_commands": (command_calls() - calls0) / 100,
                "p50_ms": round(pct(idle_lat, 50), 2),
            }
        finally:
            await jq.close()
            clean_prefix(prefix)
    await drop_db(name)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--latency-ms", type=float, nargs="*", default=[0.0, 2.0])
    args = p.parse_args()
    results = [asyncio.run(bench_once(lat, args.jobs, args.batch)) for lat in args.latency_ms]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
