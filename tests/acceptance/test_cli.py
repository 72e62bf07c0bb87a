"""The `jobqueue` CLI as a real process: migrate, enqueue, drain, status, dlq, pause, and a
`worker` that stops gracefully on SIGTERM, releasing what it has not started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parents[2]


def _env(database_url: str, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBQUEUE_", "UPSTASH_", "KV_"))}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        JOBQUEUE_PREFIX=prefix,
        JOBQUEUE_REGISTRY="tests.acceptance.slow_registry:build",
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def _cli(env: dict[str, str], *args: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "jobqueue", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip().startswith(("{", "[")) else out.stdout


async def _statuses(database_url: str) -> dict[int, tuple[str, int]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT id, status, attempts FROM jobs ORDER BY id")
    finally:
        await conn.close()
    return {r["id"]: (r["status"], r["attempts"]) for r in rows}


async def test_cli_round_trip(database_url: str, redis_server: str, prefix: str) -> None:
    env = _env(database_url, redis_server, prefix)
    assert "schema applied" in _cli(env, "migrate")
    made = _cli(env, "enqueue", "echo", '{"hi": 1}', "--idempotency-key", "k1")
    assert made["created"] is True and made["job"]["status"] == "pending"
    again = _cli(env, "enqueue", "echo", '{"hi": 1}', "--idempotency-key", "k1")
    assert again["created"] is False and again["job"]["id"] == made["job"]["id"]
    report = _cli(env, "drain", "--budget", "5")
    assert report["completed"] == 1
    job = _cli(env, "status", str(made["job"]["id"]))
    assert job["status"] == "completed" and job["result"] == {"hi": 1}
    counts = _cli(env, "status")
    assert counts["default"]["counts"]["completed"] == 1
    assert _cli(env, "pause", "default") == {"queue": "default", "paused": True}
    _cli(env, "enqueue", "echo", "{}")
    assert _cli(env, "drain", "--budget", "2")["claimed"] == 0
    _cli(env, "resume", "default")
    assert _cli(env, "drain", "--budget", "2")["completed"] == 1
    assert _cli(env, "dlq", "list") == []
    assert _cli(env, "dlq", "replay", "--type", "echo") == {"replayed": 0}
    assert _cli(env, "dlq", "purge", "--older-than-days", "1") == {"purged": 0}
    assert _cli(env, "reconcile")["restored"] == 0


def test_bad_input_exits_non_zero(database_url: str, redis_server: str, prefix: str) -> None:
    env = _env(database_url, redis_server, prefix)
    out = subprocess.run(
        [sys.executable, "-m", "jobqueue", "enqueue", "no.such.type", "{}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "unknown job type" in out.stderr


async def test_worker_stops_gracefully_on_sigterm(database_url: str, redis_server: str, prefix: str) -> None:
    env = _env(database_url, redis_server, prefix, JOBQUEUE_CONCURRENCY="2", JOBQUEUE_BATCH_SIZE="10")
    for _ in range(6):
        _cli(env, "enqueue", "sleep", '{"seconds": 1.5}')
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobqueue", "worker", "--budget", "20"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            running = [s for s, _ in (await _statuses(database_url)).values() if s == "processing"]
            if len(running) == 2:  # two claimed and started: a claim takes no more than the free slots
                break
            time.sleep(0.1)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "worker stopped" in stderr
    statuses = sorted((await _statuses(database_url)).values())
    # the two running jobs finished; the four never claimed are still pending, none left leased
    assert statuses == [("completed", 1)] * 2 + [("pending", 0)] * 4
