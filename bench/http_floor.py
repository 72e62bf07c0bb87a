"""The enqueue request against its floor (part of `python -m bench.http`; `--floor-only` runs just this).

At concurrency 1, over keep-alive connections, on one uvicorn process with the production
transport (Upstash REST through a local `jobqueue upstash-proxy`):

    overhead(POST /api/jobs)     = p50(POST /api/jobs) - p50(404 on the same server) - p50(one Redis round trip)
    overhead(GET /api/jobs/{id}) = p50(GET /api/jobs/{id}) - p50(404 on the same server)

what is left is this app's own work plus its Postgres statement. The Redis round trip is one
pipeline of the shape an enqueue sends (LPUSH + SADD), through the same transport class and proxy,
from this process, a few ms apart as an enqueue's pushes are (back to back, too, for reference),
and shared by the servers compared. The measures are interleaved in rounds (a few hundred
requests each) and each figure is the median of the rounds' p50s, so a neighbour's burst on this shared machine hits
all of them alike. `--compare DIR` runs the same against another checkout (e.g. the commit
before a change, from `git worktree add`), alternating servers round by round.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from jobqueue.transports import UpstashTransport

from .common import TOKEN, pct

MEASURES = ("floor_404", "redis_rtt", "redis_rtt_back_to_back", "enqueue", "get")
GAP_MS = 3.0  # about an enqueue request's length: how long the proxy idles between two pushes


async def redis_rtt(transport: UpstashTransport, n: int, gap_ms: float = GAP_MS) -> float:
    """p50 ms of one LPUSH + SADD pipeline on scratch keys (removed afterwards), `gap_ms` apart.
    The gap matters on a loaded machine: back to back, the proxy process never sleeps; inside an
    enqueue request it has been idle for a few ms and must be woken, as it is here."""
    key = f"benchrtt{uuid.uuid4().hex[:8]}"
    lat = []
    for i in range(n):
        s = time.perf_counter()
        await transport.pipeline([["LPUSH", f"{key}:l", f"m{i}"], ["SADD", f"{key}:s", "q"]])
        lat.append((time.perf_counter() - s) * 1000)
        if gap_ms:
            await asyncio.sleep(gap_ms / 1000)
    await transport.command("DEL", f"{key}:l", f"{key}:s")
    return pct(lat, 50)


async def one_round(url: str, n: int, job_id: int, rtt: dict[str, float]) -> dict[str, float]:
    from .http import timed_raw  # bench.http imports this module

    job = {"type": "echo"}
    return {
        "floor_404": (await timed_raw(url, 1, n, "GET", "/api/nothing-here", 404))["p50_ms"],
        **rtt,
        "enqueue": (await timed_raw(url, 1, n, "POST", "/api/jobs", 201, job))["p50_ms"],
        "get": (await timed_raw(url, 1, n, "GET", f"/api/jobs/{job_id}", 200))["p50_ms"],
    }


def decompose(rounds: list[dict[str, float]]) -> dict[str, Any]:
    med = {m: round(statistics.median(r[m] for r in rounds), 3) for m in MEASURES}
    return {
        **{f"{m}_p50_ms": med[m] for m in MEASURES},
        "enqueue_overhead_ms": round(med["enqueue"] - med["floor_404"] - med["redis_rtt"], 3),
        "get_overhead_ms": round(med["get"] - med["floor_404"], 3),
        "rounds": len(rounds),
    }


async def seed_job(url: str) -> int:
    import httpx

    from .http import AUTH

    async with httpx.AsyncClient(base_url=url, headers=AUTH) as c:
        r = await c.post("/api/jobs", json={"type": "echo", "payload": {"seed": 1}})
        r.raise_for_status()
        return int(r.json()["id"])


async def floor_bench(urls: dict[str, str], proxy: str, rounds: int, n: int) -> dict[str, Any]:
    """`urls`: label -> server; the servers take turns, round by round."""
    from .http import timed_raw

    transport = UpstashTransport(proxy, TOKEN)
    try:
        ids = {label: await seed_job(url) for label, url in urls.items()}
        for label, url in urls.items():  # warm: pools, the engine, the EVALSHA cache
            await timed_raw(url, 1, 200, "POST", "/api/jobs", 201, {"type": "echo"})
            await timed_raw(url, 1, 100, "GET", f"/api/jobs/{ids[label]}", 200)
        got: dict[str, list[dict[str, float]]] = {label: [] for label in urls}
        for _ in range(rounds):
            rtt = {
                "redis_rtt": await redis_rtt(transport, n),
                "redis_rtt_back_to_back": await redis_rtt(transport, n, gap_ms=0),
            }
            for label, url in urls.items():
                got[label].append(await one_round(url, n, ids[label], rtt))
        out: dict[str, Any] = {label: decompose(r) for label, r in got.items()}
        out["loadavg"] = os.getloadavg()
        return out
    finally:
        await transport.close()


def floor_markdown(result: dict[str, Any]) -> str:
    rows = [
        "| server | POST /api/jobs p50 | 404 p50 | Redis round trip p50 | enqueue overhead | "
        "GET /api/jobs/{id} p50 | GET overhead |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, d in result.items():
        if label == "loadavg":
            continue
        rows.append(
            f"| {label} | {d['enqueue_p50_ms']} ms | {d['floor_404_p50_ms']} ms | {d['redis_rtt_p50_ms']} ms | "
            f"**{d['enqueue_overhead_ms']} ms** | {d['get_p50_ms']} ms | **{d['get_overhead_ms']} ms** |"
        )
    la = result.get("loadavg")
    if la:
        n = next(iter(result.values()))["rounds"]
        rows.append(f"\nMedians of {n} interleaved rounds; load average {la[0]:.2f}")
    return "\n".join(rows)


def checkout(path: str) -> Path:
    p = Path(path).resolve()
    if not (p / "api" / "index.py").exists():
        raise SystemExit(f"--compare: {p} is not a checkout of this project (no api/index.py)")
    return p


async def batch_vs_engine(url: str, db: str, proxy: str, prefix: str, rounds: int = 5, per_round: int = 10) -> Any:
    """`POST /api/jobs/batch` (1000 jobs, raw client, bodies encoded beforehand) against the engine's
    own `enqueue_many` of the same 1000 jobs in this process, on the same database, proxy and
    prefix, alternating round by round: the HTTP rate as a share of the engine's."""
    import json

    from jobqueue.builtins import default_registry
    from jobqueue.engine import JobQueue
    from jobqueue.settings import Settings

    from .http import RawConnection

    conf = {"DATABASE_URL": db, "UPSTASH_REDIS_REST_URL": proxy, "UPSTASH_REDIS_REST_TOKEN": TOKEN}
    jq = JobQueue.from_settings(Settings(**conf, JOBQUEUE_PREFIX=prefix), default_registry())
    jobs = [{"type": "echo", "payload": {"i": i}} for i in range(1000)]
    body = json.dumps({"jobs": jobs}).encode()
    conn = await RawConnection.open(url)
    http_rates, engine_rates = [], []
    try:
        await jq.enqueue_many(jobs)  # warm: the pool, the transport
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(per_round):
                got, answer = await conn.request("POST", "/api/jobs/batch", body)
                assert got == 201, answer[:200]
            http_rates.append(per_round * 1000 / (time.perf_counter() - t))
            t = time.perf_counter()
            for _ in range(per_round):
                await jq.enqueue_many(jobs)
            engine_rates.append(per_round * 1000 / (time.perf_counter() - t))
    finally:
        conn.close()
        await jq.close()
    h, e = statistics.median(http_rates), statistics.median(engine_rates)
    return {"http_jobs_per_s": round(h), "engine_jobs_per_s": round(e), "ratio": round(h / e, 2), "rounds": rounds}
