"""HTTP benchmark: the API as clients see it, in real processes on local services.

1. `POST /api/jobs` latency at concurrency 1 and 32 against `uvicorn api.index:app` (one process,
   production settings: the Upstash REST transport through `jobqueue upstash-proxy`, the local
   Postgres), measured at the client over keep-alive connections with a minimal raw HTTP/1.1
   client (see `RawConnection`). A floor is measured the same way on an unknown route (a 404
   that touches neither Postgres nor Redis): what HTTP, uvicorn and the framework cost alone.
   The same enqueue over a plain Redis (`REDIS_URL`) shows what the REST hop costs.
2. Batch enqueue throughput over HTTP: `POST /api/jobs/batch` with 1000 jobs each.
3. Enqueue -> handler start in the `make dev` setup (`python -m jobqueue.devserver`: tick + kick), from each
   job's `created_at` to its `started_at`, jobs enqueued one at a time at random gaps.
4. The enqueue request against its floor, and the same for `GET /api/jobs/{id}` (bench/http_floor.py).
5. Cold import: `python -X importtime -c "import api.index"`, the cumulative time of `api.index`
   (the import's own line; the last line of the output is whatever the interpreter imports at
   exit), median of several runs, with the largest contributors.

    python -m bench.http [--requests 2000] [--batches 100] [--kick-jobs 100]
    python -m bench.http --floor-only [--compare OTHER_CHECKOUT] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis

from .common import REDIS_URL, TOKEN, clean_prefix, create_db, drop_db, free_port, new_prefix, pct, upstash_proxy
from .http_floor import batch_vs_engine, checkout, floor_bench, floor_markdown

ROOT = Path(__file__).resolve().parents[1]
API_TOKEN = "bench-api-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def _env(root: Path = ROOT, **extra: str) -> dict[str, str]:
    drop = ("JOBQUEUE_", "UPSTASH_", "KV_", "QSTASH_", "DATABASE_URL", "REDIS_URL", "JOBS_API_TOKEN")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PYTHONPATH=str(root), JOBS_API_TOKEN=API_TOKEN, **extra)
    return env


@contextmanager
def server(cmd: list[str], env: dict[str, str], cwd: Path = ROOT) -> Iterator[str]:
    """Run `cmd` (its port comes from $PORT, or `{port}` in the command) until /api/health is 200."""
    port = free_port()
    proc = subprocess.Popen(
        [a.format(port=port) for a in cmd],
        env={**env, "PORT": str(port)},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd} not healthy after 60 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def summary(lat_ms: list[float], wall_s: float) -> dict[str, float]:
    return {
        "n": len(lat_ms),
        "p50_ms": round(pct(lat_ms, 50), 2),
        "p99_ms": round(pct(lat_ms, 99), 2),
        "mean_ms": round(statistics.fmean(lat_ms), 2),
        "per_s": round(len(lat_ms) / wall_s),
        "wall_s": round(wall_s, 3),
    }


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client over one socket, for the latency runs: httpx spends
    about a millisecond of CPU per request, which on this 2-core machine would be measured as
    server latency (and at concurrency 32 it becomes the bottleneck). Content-Length bodies only,
    which is all uvicorn sends for these routes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> RawConnection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer, parts.netloc)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {API_TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line, _, rest = (await self.reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
        length = 0
        for line in rest.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def timed(concurrency: int, n: int, call: Callable[[int], Awaitable[None]]) -> dict[str, float]:
    lat: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            s = time.perf_counter()
            await call(i)
            lat.append((time.perf_counter() - s) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summary(lat, time.perf_counter() - t0)


async def timed_raw(url: str, concurrency: int, n: int, method: str, path: str, status: int, body: Any = None) -> Any:
    """`n` requests over `concurrency` keep-alive connections, one request in flight on each."""
    conns = [await RawConnection.open(url) for _ in range(concurrency)]
    free = asyncio.Queue[RawConnection]()
    for conn in conns:
        free.put_nowait(conn)

    async def call(i: int) -> None:
        conn = await free.get()
        raw = b"" if body is None else json.dumps({**body, "payload": {"i": i}}).encode()
        got, answer = await conn.request(method, path, raw)
        assert got == status, answer
        free.put_nowait(conn)

    try:
        return await timed(concurrency, n, call)
    finally:
        for conn in conns:
            conn.close()


async def bench_api(url: str, requests: int, batches: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    job = {"type": "echo"}
    await timed_raw(url, 4, 200, "POST", "/api/jobs", 201, job)  # warm: pools, the engine, EVALSHA cache
    for conc in (1, 32):
        out[f"floor_404_c{conc}"] = await timed_raw(url, conc, requests, "GET", "/api/nothing-here", 404)
        out[f"enqueue_c{conc}"] = await timed_raw(url, conc, requests, "POST", "/api/jobs", 201, job)
    if not batches:
        return out
    # Bodies encoded beforehand, answers read as bytes by the raw client: with httpx, the client's
    # encoding and its decoding of each 0.5 MB answer took about as much CPU as the server.
    bodies = [
        json.dumps({"jobs": [{"type": "echo", "payload": {"b": b, "i": i}} for i in range(1000)]}).encode()
        for b in range(batches)
    ]
    conn = await RawConnection.open(url)
    try:

        async def batch(b: int) -> None:
            got, answer = await conn.request("POST", "/api/jobs/batch", bodies[b])
            assert got == 201, answer[:200]

        res = await timed(1, batches, batch)
    finally:
        conn.close()
    out["batch_1000"] = {
        "batches": batches,
        "jobs_per_s": round(batches * 1000 / res["wall_s"]),
        "p50_ms": res["p50_ms"],
        "p99_ms": res["p99_ms"],
    }
    return out


async def bench_kick(url: str, jobs: int, seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as c:
        ids = []
        for i in range(jobs):
            r = await c.post("/api/jobs", json={"type": "echo", "payload": {"i": i}})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
            await asyncio.sleep(rng.uniform(0, 0.1))  # arrivals land during drains as well as between
        deadline = time.monotonic() + 60
        delays = []
        for job_id in ids:
            while True:
                job = (await c.get(f"/api/jobs/{job_id}")).json()
                if job["status"] == "completed":
                    break
                assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
                await asyncio.sleep(0.05)
            delta = datetime.fromisoformat(job["started_at"]) - datetime.fromisoformat(job["created_at"])
            delays.append(delta.total_seconds() * 1000)
    return {
        "n": jobs,
        "p50_ms": round(pct(delays, 50), 1),
        "p99_ms": round(pct(delays, 99), 1),
        "max_ms": round(max(delays), 1),
    }


def clean_db0(prefix: str) -> None:
    r = redis.Redis(host="127.0.0.1", port=6379, db=0)
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        r.delete(*keys)


IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_times(module: str) -> tuple[float, dict[str, float]]:
    """One cold `import module`: its cumulative ms, and self ms summed per top-level package
    (independent of which module happened to import a shared dependency first)."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    total, by_package = 0.0, dict[str, float]()
    for line in out.stderr.splitlines():
        m = IMPORT_LINE.match(line)
        if not m:
            continue
        name, top_level = m.group(4), len(m.group(3)) == 1  # nested imports are indented by two more
        if name == module and top_level:
            total = int(m.group(2)) / 1000
        package = name.split(".")[0]
        by_package[package] = by_package.get(package, 0.0) + int(m.group(1)) / 1000
    return total, by_package


def bench_import(runs: int = 5) -> dict[str, Any]:
    totals, floors = [], []
    packages: dict[str, list[float]] = {}
    for _ in range(runs):
        total, by_package = import_times("api.index")
        totals.append(total)
        for k, v in by_package.items():
            packages.setdefault(k, []).append(v)
        floors.append(import_times("fastapi")[0])
    top = sorted(((statistics.median(v), k) for k, v in packages.items()), reverse=True)[:10]
    return {
        "runs": runs,
        "median_ms": round(statistics.median(totals), 1),
        "min_ms": round(min(totals), 1),
        "fastapi_alone_median_ms": round(statistics.median(floors), 1),
        "self_ms_by_package": {k: round(v, 1) for v, k in top},
    }


UVICORN = [sys.executable, "-m", "uvicorn", "api.index:app", "--port", "{port}"]
UVICORN += ["--log-level", "warning", "--no-access-log"]


async def run_floor(args: argparse.Namespace) -> dict[str, Any]:
    """The floor decomposition alone, for this checkout and, with --compare, another one."""
    roots = {"this checkout": ROOT}
    if args.compare:
        roots["--compare"] = checkout(args.compare)
    name, prefix = "jobqueue_bench_http_floor", new_prefix()
    db = await create_db(name)
    try:
        with upstash_proxy() as proxy, contextlib.ExitStack() as stack:
            urls = {}
            for label, root in roots.items():
                env = _env(root, DATABASE_URL=db, UPSTASH_REDIS_REST_URL=proxy, UPSTASH_REDIS_REST_TOKEN=TOKEN)
                urls[label] = stack.enter_context(server(UVICORN, {**env, "JOBQUEUE_PREFIX": prefix}, cwd=root))
            return await floor_bench(urls, proxy, args.rounds, args.floor_requests)
    finally:
        clean_prefix(prefix)
        await drop_db(name)


async def run_once(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    name, prefix = "jobqueue_bench_http", new_prefix()
    db = await create_db(name)
    try:
        with upstash_proxy() as proxy:
            env = _env(DATABASE_URL=db, UPSTASH_REDIS_REST_URL=proxy, UPSTASH_REDIS_REST_TOKEN=TOKEN)
            with server(UVICORN, {**env, "JOBQUEUE_PREFIX": prefix}) as url:
                result["api"] = await bench_api(url, args.requests, args.batches)
                result["floor"] = await floor_bench({"this checkout": url}, proxy, args.rounds, args.floor_requests)
                result["batch_vs_engine"] = await batch_vs_engine(url, db, proxy, prefix)
        # Diagnostic: the same enqueue over a plain Redis (REDIS_URL, redis-py), so the cost of
        # the REST hop (SDK + HTTP + the proxy process) shows as the difference.
        with server(UVICORN, _env(DATABASE_URL=db, REDIS_URL=REDIS_URL, JOBQUEUE_PREFIX=prefix)) as url:
            result["api_plain_redis"] = await bench_api(url, args.requests, 0)
    finally:
        clean_prefix(prefix)
        await drop_db(name)

    for mode in ("memory", "local"):
        name, prefix = f"jobqueue_bench_kick_{mode}", new_prefix()
        db = await create_db(name)
        try:
            env = _env(DATABASE_URL=db, JOBQUEUE_DEV_REDIS=mode, JOBQUEUE_PREFIX=prefix)
            with server([sys.executable, "-m", "jobqueue.devserver"], env) as url:
                result[f"kick_dev_{mode}_redis"] = await bench_kick(url, args.kick_jobs)
        finally:
            if mode == "local":
                clean_db0(prefix)  # the dev server's local Redis is database 0, not bench.common's
            await drop_db(name)
    result["import_api_index"] = bench_import()
    return result


def markdown(r: dict[str, Any]) -> str:
    api = r["api"]
    rows = [
        "| measure | p50 | p99 | throughput |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("floor_404_c1", "404 floor, c=1"),
        ("enqueue_c1", "POST /api/jobs, c=1"),
        ("floor_404_c32", "404 floor, c=32"),
        ("enqueue_c32", "POST /api/jobs, c=32"),
    ):
        m = api[key]
        rows.append(f"| {label} | {m['p50_ms']} ms | {m['p99_ms']} ms | {m['per_s']} req/s |")
    for key, label in (("enqueue_c1", "POST /api/jobs, c=1"), ("enqueue_c32", "POST /api/jobs, c=32")):
        m = r["api_plain_redis"][key]
        rows.append(f"| {label}, plain Redis | {m['p50_ms']} ms | {m['p99_ms']} ms | {m['per_s']} req/s |")
    b = api["batch_1000"]
    rows.append(f"| POST /api/jobs/batch (1000) | {b['p50_ms']} ms | {b['p99_ms']} ms | {b['jobs_per_s']} jobs/s |")
    for mode in ("memory", "local"):
        k = r[f"kick_dev_{mode}_redis"]
        rows.append(f"| make dev enqueue -> start ({mode} Redis) | {k['p50_ms']} ms | {k['p99_ms']} ms | |")
    imp = r["import_api_index"]
    rows.append(f"| import api.index (median of {imp['runs']}) | {imp['median_ms']} ms | min {imp['min_ms']} ms | |")
    rows.append(f"| import fastapi alone (median) | {imp['fastapi_alone_median_ms']} ms | | |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--kick-jobs", type=int, default=100)
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the floor decomposition")
    p.add_argument("--floor-requests", type=int, default=300, help="requests per measure and round")
    p.add_argument("--floor-only", action="store_true", help="only the enqueue-vs-floor decomposition")
    p.add_argument("--compare", help="with --floor-only: another checkout to measure alternately (before/after)")
    args = p.parse_args()
    if args.floor_only:
        floor = asyncio.run(run_floor(args))
        print(json.dumps(floor, indent=2))
        print()
        print(floor_markdown(floor))
        return
    result = asyncio.run(run_once(args))
    print(json.dumps(result, indent=2))
    print()
    print(markdown(result))
    print()
    print(floor_markdown(result["floor"]))
    b = result["batch_vs_engine"]
    print(
        f"\nPOST /api/jobs/batch {b['http_jobs_per_s']:,} jobs/s against the engine's enqueue_many"
        f" {b['engine_jobs_per_s']:,} jobs/s in the same run: {b['ratio']:.2f} of it"
    )


if __name__ == "__main__":
    main()
