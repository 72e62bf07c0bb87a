"""Shared set-up for the benchmarks: a scratch database, an Upstash proxy process, Redis counters."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import redis

from jobqueue.store import Store

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")
TOKEN = "bench-token"


def db_url(name: str) -> str:
    return ADMIN_URL.rpartition("/")[0] + "/" + name


async def create_db(name: str) -> str:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    store = Store(db_url(name))
    try:
        await store.migrate()
    finally:
        await store.close()
    return db_url(name)


async def drop_db(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def upstash_proxy(latency_ms: float = 0.0) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobqueue",
            "upstash-proxy",
            "--redis",
            REDIS_URL,
            "--port",
            str(port),
            "--token",
            TOKEN,
            "--latency-ms",
            str(latency_ms),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                    break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def command_calls() -> int:
    """Commands Redis has executed, scripts' inner calls included (INFO commandstats)."""
    stats: dict[str, Any] = redis.Redis.from_url(REDIS_URL).info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info",))


def new_prefix() -> str:
    return f"bench{uuid.uuid4().hex[:8]}"


def clean_prefix(prefix: str) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        r.delete(*keys)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def write_json(path: str | None, results: Any) -> None:
    """`--json PATH`: the raw results, for comparing runs."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
