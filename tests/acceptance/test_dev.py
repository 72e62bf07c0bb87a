"""`python -m jobqueue.devserver` (what `make dev` runs) as a real process: the banner, the local tick and the
kick (jobs complete without anyone calling /api/workers), a graceful stop that lets the running
drain finish, and one boot on nothing at all (embedded Postgres and Redis)."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest
import redis as redis_sync

from jobqueue.client import Client
from tests.acceptance.test_http_e2e import ROOT, server_env, wait_healthy
from tests.conftest import _free_port

KICK_TARGET_S = 1.5  # enqueue -> handler start, p99 target of `make dev`


class Dev:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, out: Path, err: Path) -> None:
        self.proc, self.url, self.out, self.err = proc, url, out, err

    def banner(self, timeout_s: float = 10.0) -> str:
        """stdout once the banner is complete (it is printed once uvicorn is serving)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.out.read_text()
            if "/api/jobs/$id" in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"no banner:\n{self.out.read_text()}\n{self.err.read_text()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@contextmanager
def dev_server(tmp_path: Path, env: dict[str, str], timeout_s: float = 30.0) -> Iterator[Dev]:
    port = _free_port()
    out, err = tmp_path / "dev.out", tmp_path / "dev.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobqueue.devserver"],
            env=server_env(PORT=str(port), **env),
            cwd=ROOT,
            stdout=o,
            stderr=e,
        )
    dev = Dev(proc, f"http://127.0.0.1:{port}", out, err)
    try:
        wait_healthy(proc, dev.url, err, timeout_s)
        yield dev
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def started_after(job: dict[str, object]) -> float:
    created = datetime.fromisoformat(str(job["created_at"]))
    started = datetime.fromisoformat(str(job["started_at"]))
    return (started - created).total_seconds()


def test_the_tick_and_the_kick_run_jobs_without_a_workers_call(database_url: str, prefix: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": database_url, "JOBQUEUE_DEV_REDIS": "memory", "JOBQUEUE_PREFIX": prefix}
    with dev_server(tmp_path, env) as dev:
        banner = dev.banner()
        assert f"API        {dev.url}" in banner
        assert "Postgres   DATABASE_URL" in banner
        assert "Redis      in-memory" in banner
        assert "the jobqueue CLI cannot reach it" in banner
        token = re.search(r"JOBS_API_TOKEN=(\S+)", banner)
        assert token is not None and token.group(1) == "dev-token"
        assert "WORKER_SECRET=dev-worker-secret" in banner
        assert f"curl -s {dev.url}/api/jobs/$id -H 'Authorization: Bearer dev-token'" in banner

        with Client(dev.url, token.group(1)) as jobs:
            made = [jobs.enqueue("echo", {"i": i}) for i in range(5)]
            done = [jobs.wait(j["id"], timeout=2.0) for j in made]
        assert [(j["status"], j["result"]) for j in done] == [("completed", {"i": i}) for i in range(5)]
        assert max(started_after(j) for j in done) < KICK_TARGET_S
        assert dev.stop() == 0
    log = dev.err.read_text()
    assert "/api/workers" not in log  # nobody drained over HTTP: the tick did
    assert "Finished server process" in log


async def job_row(database_url: str, job_id: int) -> tuple[str, str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT status, result::text, attempts FROM jobs WHERE id = $1", job_id)
    finally:
        await conn.close()
    assert row is not None
    return (row["status"], row["result"], row["attempts"])


def test_sigterm_lets_the_running_drain_finish(
    database_url: str, redis_server: str, prefix: str, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "JOBQUEUE_DEV_REDIS": "local",  # the Redis on 127.0.0.1:6379, database 0
        "JOBQUEUE_PREFIX": prefix,
        "JOBQUEUE_REGISTRY": "tests.acceptance.slow_registry:build",
        "JOBS_API_TOKEN": "env-token-0123456789",
    }
    try:
        with dev_server(tmp_path, env) as dev:
            banner = dev.banner()
            assert f"Redis      redis://127.0.0.1:6379/0 (local server), key prefix {prefix!r}" in banner
            # The banner says how to point the CLI at this very queue (prefix and database included).
            assert f"JOBQUEUE_PREFIX={prefix}" in banner and "REDIS_URL=redis://127.0.0.1:6379/0" in banner
            assert database_url.rsplit("/", 1)[1] in banner
            assert "JOBS_API_TOKEN: (from the environment)" in banner
            assert "env-token-0123456789" not in banner  # a real secret is never printed
            with Client(dev.url, "env-token-0123456789") as jobs:
                job = jobs.enqueue("sleep", {"seconds": 1.0})
                deadline = time.monotonic() + 5
                while jobs.get(job["id"])["status"] != "processing":
                    assert time.monotonic() < deadline, "the kick did not start the job"
                    time.sleep(0.02)
                assert dev.stop() == 0
            assert "letting the current drain finish" in dev.out.read_text()
        # Read straight from Postgres: the server is gone, and another one could re-run a released job.
        final = asyncio.run(job_row(database_url, job["id"]))
        assert final == ("completed", "1.0", 1)
    finally:
        r = redis_sync.Redis(host="127.0.0.1", port=6379, db=0)
        keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            r.delete(*keys)


@pytest.mark.slow
def test_boots_on_nothing_with_an_embedded_postgres(tmp_path: Path) -> None:
    """A fresh machine: no DATABASE_URL, no Redis configured. pgserver initdb's a cluster (as root
    too: it runs Postgres as its own `pgserver` user) and is stopped on exit."""
    env = {"JOBQUEUE_DEV_DATA": str(tmp_path / "data"), "JOBQUEUE_DEV_REDIS": "memory"}
    with dev_server(tmp_path, env, timeout_s=60) as dev:
        banner = dev.banner()
        assert f"Postgres   embedded (pgserver, data in {tmp_path / 'data' / 'pg'})" in banner
        with Client(dev.url, "dev-token") as jobs:
            job = jobs.enqueue("echo", {"fresh": True})
            done = jobs.wait(job["id"], timeout=2.0)
        assert (done["status"], done["result"]) == ("completed", {"fresh": True})
        assert (tmp_path / "data" / "pg" / "postmaster.pid").exists()
        assert dev.stop(signal.SIGINT) == 0  # Ctrl-C
    # pg_ctl stop removes the pid file once the server is down
    assert not (tmp_path / "data" / "pg" / "postmaster.pid").exists()
    assert (tmp_path / "data" / "pg" / "PG_VERSION").exists()
