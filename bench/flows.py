"""Flows benchmark: a fan-out/fan-in of N children (10,000 by default) around one parent.

    python -m bench.flows [--children 10000] [--transport redis|upstash]

A root job, N children that each depend on it (enqueued in batches of 1000 by id), and a parent
that depends on every child (one request with N ids). The root is delayed, so every child is
`waiting` when the drain starts: its completion releases all N children in one statement (and
one push), and the children's outcomes resolve their edges on the parent, one extra statement
per recorded group. Reported: enqueue and drain time, Postgres statements and Redis requests
(the transports' own counters, exact) for each phase, and Redis commands (INFO commandstats,
every `redis.call` inside a script included, as Upstash bills them; machine-wide, so other work
on the same Redis adds to it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

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
    upstash_proxy,
    write_json,
)

BATCH = 1000


def registry(seen: dict[str, int]) -> Registry:
    reg = Registry()

    @reg.job("child", timeout_ms=10_000)
    async def child(payload: dict[str, Any], ctx: JobContext) -> int:
        return int(payload["i"])

    @reg.job("parent", timeout_ms=60_000)
    async def parent(payload: dict[str, Any], ctx: JobContext) -> int:
        deps = await ctx.dependencies()  # the children's results, read once
        seen["inputs"] = len(deps)
        return sum(int(d["result"]) for d in deps)

    @reg.job("root", timeout_ms=10_000)
    async def root(payload: dict[str, Any], ctx: JobContext) -> str:
        return "go"

    return reg


async def run(children: int, transport: str) -> dict[str, Any]:
    name = "jobqueue_bench_flows"
    url = await create_db(name)
    prefix = new_prefix()
    seen: dict[str, int] = {}
    out: dict[str, Any] = {"children": children, "transport": transport}
    with upstash_proxy(0) as proxy:
        settings = Settings(DATABASE_URL=url, JOBQUEUE_PREFIX=prefix, JOBQUEUE_MAX_PAYLOAD_BYTES=1_000_000)
        redis: Any = UpstashTransport(proxy, TOKEN) if transport == "upstash" else RedisPyTransport.from_url(REDIS_URL)
        jq = JobQueue(Store(url, pool_max=4), redis, registry(seen), settings)
        try:
            await jq.drain(2)  # builds the index (epoch marker)
            st0, rq0, t0 = jq.store.statements, jq.redis.requests, time.perf_counter()
            root, _ = await jq.enqueue({"type": "root", "payload": {}, "delay_ms": 1})
            ids: list[int] = []
            for i in range(0, children, BATCH):
                rows = await jq.enqueue_many(
                    [
                        {"type": "child", "payload": {"i": k}, "depends_on": [root["id"]]}
                        for k in range(i, min(children, i + BATCH))
                    ]
                )
                ids += [r["id"] for r, _ in rows]
            parent, _ = await jq.enqueue({"type": "parent", "payload": {}, "depends_on": ids})
            assert parent["status"] == "waiting"
            out["enqueue"] = {
                "seconds": round(time.perf_counter() - t0, 2),
                "pg_statements": jq.store.statements - st0,
                "redis_requests": jq.redis.requests - rq0,
            }
            await asyncio.sleep(0.01)
            calls0, st0, rq0, t0 = command_calls(), jq.store.statements, jq.redis.requests, time.perf_counter()
            drains = 0
            while (await jq.get(parent["id"]))["status"] != "completed":
                report = await jq.drain(600)
                drains += 1
                assert drains < 20, report
            elapsed = time.perf_counter() - t0
            done = await jq.get(parent["id"])
            assert done["result"] == children * (children - 1) // 2 and seen["inputs"] == children
            out["drain"] = {
                "seconds": round(elapsed, 2),
                "jobs_per_s": round((children + 2) / elapsed),
                "drains": drains,
                "pg_statements": jq.store.statements - st0 - drains,  # less the status reads above
                "redis_requests": jq.redis.requests - rq0,
                "redis_commands": command_calls() - calls0,
                "root_to_parent_done_s": round((done["finished_at"] - root["created_at"]).total_seconds(), 2),
            }
        finally:
            await jq.close()
            clean_prefix(prefix)
            await drop_db(name)
    return out


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for transport in args.transport:
        r = await run(args.children, transport)
        print(json.dumps(r), flush=True)
        results.append(r)
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--children", type=int, default=10_000)
    p.add_argument("--transport", nargs="+", default=["redis"], choices=["upstash", "redis"])
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    write_json(a.json, asyncio.run(main(a)))
