"""End to end over real HTTP: `api.index:app` in a real uvicorn process (configured only through
its environment, as on Vercel), driven by `jobqueue.client`; drains through `/api/workers` with
the worker secret (POST, as QStash and kicks do) and the cron secret (GET, as Vercel Cron does).
Over a plain Redis and over the Upstash REST transport (`jobqueue upstash-proxy`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobqueue.client import APIError, AsyncClient, Client
from tests.conftest import PROXY_TOKEN, _free_port

ROOT = Path(__file__).resolve().parents[2]
API_TOKEN = "e2e-api-token-0123456789abcdef"
WORKER_SECRET = "e2e-worker-secret-0123456789abcdef"
CRON_SECRET = "e2e-cron-secret-0123456789abcdef"
STARTUP_S = 30.0


def server_env(**extra: str) -> dict[str, str]:
    """The test process's environment minus anything that would configure the server."""
    drop = ("JOBQUEUE_", "UPSTASH_", "KV_", "QSTASH_", "DATABASE_URL", "REDIS_URL", "JOBS_API_TOKEN")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, timeout_s: float = STARTUP_S) -> None:
    """Poll /api/health until it answers 200, failing fast (with the server's log) if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/api/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server not healthy after {timeout_s} s:\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@pytest.fixture(params=["redis", "upstash"])
def api_url(
    request: pytest.FixtureRequest, database_url: str, redis_server: str, prefix: str, tmp_path: Path
) -> Iterator[str]:
    if request.param == "upstash":
        redis_env = {
            "UPSTASH_REDIS_REST_URL": request.getfixturevalue("upstash_proxy"),
            "UPSTASH_REDIS_REST_TOKEN": PROXY_TOKEN,
        }
    else:
        redis_env = {"REDIS_URL": redis_server}
    env = server_env(
        DATABASE_URL=database_url,
        JOBQUEUE_PREFIX=prefix,
        JOBS_API_TOKEN=API_TOKEN,
        WORKER_SECRET=WORKER_SECRET,
        CRON_SECRET=CRON_SECRET,
        **redis_env,
    )
    port = _free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.index:app", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, log)
        yield url
    finally:
        # uvicorn shuts down, then re-raises SIGTERM through the default handler
        assert stop(proc) == -signal.SIGTERM, log.read_text()
        assert "Finished server process" in log.read_text()


def drain(url: str, method: str, secret: str) -> dict[str, object]:
    resp = httpx.request(method, f"{url}/api/workers", headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    report: dict[str, object] = resp.json()
    return report


def counts(report: dict[str, object]) -> dict[str, object]:
    return {k: report[k] for k in ("claimed", "completed", "retried", "failed", "released", "more")}


async def test_enqueue_drain_and_wait_over_http(api_url: str) -> None:
    async with AsyncClient(api_url, API_TOKEN) as jobs:
        one = await jobs.enqueue("echo", {"hello": "e2e"}, idempotency_key="signup-1")
        assert one["status"] == "pending"
        assert (await jobs.enqueue("echo", {"other": 1}, idempotency_key="signup-1"))["id"] == one["id"]

        report = drain(api_url, "POST", WORKER_SECRET)  # QStash, kicks, manual
        assert counts(report) == {"claimed": 1, "completed": 1, "retried": 0, "failed": 0, "released": 0, "more": False}
        done = await jobs.wait(one["id"], timeout=10)
        assert (done["status"], done["result"], done["attempts"]) == ("completed", {"hello": "e2e"}, 1)

        batch = await jobs.enqueue_many([{"type": "echo", "payload": {"i": i}, "priority": i} for i in range(3)])
        assert [j["status"] for j in batch] == ["pending"] * 3
        report = drain(api_url, "GET", CRON_SECRET)  # Vercel Cron
        assert counts(report) == {"claimed": 3, "completed": 3, "retried": 0, "failed": 0, "released": 0, "more": False}
        results = [(await jobs.wait(j["id"], timeout=10))["result"] for j in batch]
        assert results == [{"i": 0}, {"i": 1}, {"i": 2}]

        with pytest.raises(APIError) as info:
            await jobs.enqueue("no.such.type", {})
        assert (info.value.status_code, info.value.code, info.value.field) == (422, "invalid_job", "type")

    bad = httpx.get(f"{api_url}/api/workers", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert bad.status_code == 401  # the API token is not a worker credential


def test_sync_client_cancel_retry_and_errors(api_url: str) -> None:
    with Client(api_url, API_TOKEN) as jobs:
        later = jobs.enqueue("echo", {"n": 1}, delay_ms=3_600_000)
        assert later["status"] == "scheduled"
        assert jobs.cancel(later["id"])["status"] == "cancelled"
        with pytest.raises(APIError) as info:
            jobs.cancel(later["id"])
        assert (info.value.status_code, info.value.code) == (409, "invalid_state")
        assert jobs.wait(later["id"], timeout=1)["status"] == "cancelled"  # terminal: no polling

        rerun = jobs.retry(later["id"])
        assert (rerun["status"], rerun["attempts"]) == ("pending", 0)
        assert counts(drain(api_url, "POST", WORKER_SECRET))["completed"] == 1
        assert jobs.wait(later["id"], timeout=10)["result"] == {"n": 1}

        with pytest.raises(APIError) as info:
            jobs.get(999_999)
        assert (info.value.status_code, info.value.code) == (404, "job_not_found")

    with Client(api_url, "wrong-token") as anon, pytest.raises(APIError) as info:
        anon.get(1)
    assert (info.value.status_code, info.value.code) == (401, "unauthorized")
