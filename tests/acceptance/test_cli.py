"""The `jobqueue` CLI as a real process: migrate, enqueue, list, cancel, retry, drain, status, dlq,
pause, queues (list and set), --version, and a `worker` that stops gracefully on SIGTERM, releasing what it has not
started. Errors are one `error: ...` line and exit status 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import version
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
        JOBQUEUE_REGISTRY="tests.acceptance.cli_registry:build",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobqueue", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _cli(env: dict[str, str], *args: str) -> Any:
    out = _run(env, *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip().startswith(("{", "[")) else out.stdout


def _cli_error(env: dict[str, str], *args: str) -> str:
    """Runs a command that must fail: exit status 2, nothing on stdout, one `error:` line."""
    out = _run(env, *args)
    assert (out.returncode, out.stdout) == (2, ""), out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


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
    _cli(env, "migrate")
    assert "unknown job type" in _cli_error(env, "enqueue", "no.such.type", "{}")
    assert "the payload is not JSON" in _cli_error(env, "enqueue", "echo", "{not json")
    assert "unknown status" in _cli_error(env, "list", "--status", "lost")
    assert "cursor is malformed" in _cli_error(env, "list", "--cursor", "nope")
    assert "not found" in _cli_error(env, "cancel", "424242")


def test_version_and_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jobqueue", "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout == f"jobqueue {version('jobqueue')}\n"
    out = subprocess.run(
        [sys.executable, "-m", "jobqueue", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    for command in ("list", "cancel", "retry", "dlq", "worker", "upstash-proxy"):
        assert f"    {command}" in out.stdout


async def test_list_cancel_retry(database_url: str, redis_server: str, prefix: str) -> None:
    env = _env(database_url, redis_server, prefix)
    _cli(env, "migrate")
    ids = [_cli(env, "enqueue", "echo", json.dumps({"i": i}), "--queue", q)["job"]["id"] for i, q in enumerate("aab")]
    first = _cli(env, "list", "--limit", "2")
    assert [j["id"] for j in first["jobs"]] == ids[:0:-1] and first["next_cursor"]
    rest = _cli(env, "list", "--limit", "2", "--cursor", first["next_cursor"])
    assert ([j["id"] for j in rest["jobs"]], rest["next_cursor"]) == ([ids[0]], None)
    assert [j["id"] for j in _cli(env, "list", "--queue", "a")["jobs"]] == ids[1::-1]
    assert _cli(env, "list", "--type", "sleep") == {"jobs": [], "next_cursor": None}

    cancelled = _cli(env, "cancel", str(ids[2]))
    assert (cancelled["id"], cancelled["status"]) == (ids[2], "cancelled")
    assert [j["id"] for j in _cli(env, "list", "--status", "cancelled")["jobs"]] == [ids[2]]
    assert "only waiting, pending or scheduled jobs can be cancelled" in _cli_error(env, "cancel", str(ids[2]))
    assert "only failed or cancelled jobs can be retried" in _cli_error(env, "retry", str(ids[0]))
    retried = _cli(env, "retry", str(ids[2]))
    assert (retried["status"], retried["attempts"]) == ("pending", 0)
    assert _cli(env, "drain", "--budget", "5")["completed"] == 3


async def test_dlq_replay_needs_ids_a_filter_or_all(database_url: str, redis_server: str, prefix: str) -> None:
    env = _env(database_url, redis_server, prefix)
    _cli(env, "migrate")
    ids = [_cli(env, "enqueue", "boom", "{}", "--queue", q)["job"]["id"] for q in ("a", "b", "c")]
    assert _cli(env, "drain", "--budget", "5")["failed"] == 3
    assert [j["id"] for j in _cli(env, "dlq", "list")] == ids[::-1]

    assert "--all to replay every failed job" in _cli_error(env, "dlq", "replay")
    assert "not both" in _cli_error(env, "dlq", "replay", str(ids[0]), "--queue", "a")
    assert "give it no ids" in _cli_error(env, "dlq", "replay", "--all", "--type", "boom")
    assert await _statuses(database_url) == dict.fromkeys(ids, ("failed", 1))  # nothing was replayed

    assert _cli(env, "dlq", "replay", str(ids[0])) == {"replayed": 1}
    assert _cli(env, "dlq", "replay", "--queue", "b") == {"replayed": 1}
    assert _cli(env, "dlq", "replay", "--all") == {"replayed": 1}  # only c was still failed
    assert await _statuses(database_url) == dict.fromkeys(ids, ("pending", 0))


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


async def test_an_idle_worker_is_quiet_and_answers_its_health_check(
    database_url: str, redis_server: str, prefix: str
) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _env(database_url, redis_server, prefix)
    _cli(env, "migrate")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobqueue", "worker", "--idle-sleep", "0.2", "--port", str(port), "--host", "127.0.0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    body = json.loads(resp.read())
                if body["drains"] >= 10:  # about two seconds of idle drains, 0.2 s apart
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert body is not None and body["status"] == "ok" and body["last"]["claimed"] == 0
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [line for line in stderr.splitlines() if line.strip()]
    # "worker started", perhaps the first drain's index rebuild, "worker stopped": no line per idle drain
    assert len(lines) <= 4, lines
    assert "worker started" in lines[0] and "worker stopped" in lines[-1]


def test_a_port_already_in_use_is_one_clear_line(database_url: str, redis_server: str, prefix: str) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = _env(database_url, redis_server, prefix)
        err = _cli_error(env, "worker", "--port", str(port), "--host", "127.0.0.1")
        assert "cannot listen on 127.0.0.1" in err
        dev = subprocess.run(
            [sys.executable, "-m", "jobqueue.devserver", "--port", str(port)],
            env={**env, "DATABASE_URL": database_url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert dev.returncode == 2 and dev.stderr.strip().splitlines() == [
        f"make dev: port {port} on 127.0.0.1 is in use (another server?); set PORT or pass --port"
    ]


async def test_schedules_from_the_cli(database_url: str, redis_server: str, prefix: str) -> None:
    env = _env(database_url, redis_server, prefix, JOBQUEUE_REGISTRY="tests.acceptance.cli_registry:with_schedule")
    out = _cli(env, "migrate")
    assert "schedules synced: 1 changed" in out  # the deploy step syncs the code's schedules
    assert _cli(env, "schedules", "sync") == {"declared": 1, "changed": 0}  # idempotent
    [listed] = _cli(env, "schedules", "list")
    assert (listed["id"], listed["source"], listed["paused"]) == ("every-hour", "code", False)
    assert _cli(env, "schedules", "pause", "every-hour")["paused"] is True
    job = _cli(env, "schedules", "trigger", "every-hour")
    assert (job["schedule_id"], job["status"]) == ("every-hour", "pending")
    assert _cli(env, "schedules", "resume", "every-hour")["paused"] is False
    assert _cli(env, "schedules", "delete", "every-hour") == {"deleted": "every-hour"}
    assert "not found" in _cli_error(env, "schedules", "delete", "every-hour")


UNSET = {
    "defaults": None,
    "concurrency": None,
    "rate": None,
    "group_concurrency": None,
    "group_rate": None,
    "retention": None,
    "aging_ms": None,
}


async def test_queues_list_and_set(database_url: str, redis_server: str, prefix: str) -> None:
    env = _env(database_url, redis_server, prefix)
    _cli(env, "migrate")
    _cli(env, "enqueue", "echo", "{}", "--queue", "mail")
    listed = {q["name"]: q for q in _cli(env, "queues")}
    assert listed["mail"]["counts"]["pending"] == 1 and listed["mail"]["settings"] == UNSET
    assert _cli(env, "queues", "list") == list(listed.values())

    q = _cli(env, "queues", "set", "mail", "--concurrency", "4", "--rate", "10/1000/5", "--max-attempts", "6")
    assert (q["name"], q["paused"], q["counts"]["pending"]) == ("mail", False, 1)
    want = UNSET | {
        "concurrency": 4,
        "rate": {"limit": 10, "period_ms": 1000, "burst": 5},
        "defaults": {"max_attempts": 6, "backoff": None, "timeout_ms": None},
    }
    assert q["settings"] == want
    # Options not given stay, nested ones included: --timeout-ms keeps the default max_attempts.
    q = _cli(env, "queues", "set", "mail", "--timeout-ms", "9000", "--group-rate", "2/60000", "--rate", "none")
    want |= {
        "rate": None,
        "group_rate": {"limit": 2, "period_ms": 60000, "burst": 1},
        "defaults": {"max_attempts": 6, "backoff": None, "timeout_ms": 9000},
    }
    assert q["settings"] == want
    q = _cli(
        env, "queues", "set", "mail", "--retain-failed-days", "30", "--aging-ms", "60000", "--max-attempts", "none"
    )
    want |= {
        "aging_ms": 60000,
        "retention": {"completed": None, "failed": {"age_days": 30.0, "count": None}},
        "defaults": {"max_attempts": None, "backoff": None, "timeout_ms": 9000},
    }
    assert q["settings"] == want
    assert {x["name"]: x for x in _cli(env, "queues")}["mail"] == q
    # pause and resume keep working, and keep the settings
    assert _cli(env, "pause", "mail") == {"queue": "mail", "paused": True}
    assert {x["name"]: x for x in _cli(env, "queues")}["mail"] == q | {"paused": True}
    _cli(env, "resume", "mail")

    assert "concurrency" in _cli_error(env, "queues", "set", "mail", "--concurrency", "-2")
    assert "rate: LIMIT/PERIOD_MS" in _cli_error(env, "queues", "set", "mail", "--rate", "fast")
    assert "rate.period_ms" in _cli_error(env, "queues", "set", "mail", "--rate", "5/0")
    assert "changes nothing" in _cli_error(env, "queues", "set", "mail")
    assert "queue" in _cli_error(env, "queues", "set", "bad name", "--concurrency", "1")
    assert {x["name"]: x for x in _cli(env, "queues")}["mail"] == q  # the refusals changed nothing
