"""The engine through a real transaction-mode pooler (PgBouncer, as Neon's `-pooler` host runs).

Each transaction may land on another server connection, so named prepared statements and session
state do not survive; the store must work with its statement cache off. PgBouncer 1.18 (Debian
12) does not track prepared statements at all, which makes it the strictest pooler to test with.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue
from jobqueue.store import Store
from jobqueue.transports import RedisPyTransport
from tests.conftest import ADMIN_URL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pgbouncer() -> Iterator[int]:
    binary = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if binary is None:
        pytest.skip("pgbouncer is not installed (.ci/run installs it)")
    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="jq-pgbouncer-"))
    tmp.chmod(0o755)
    (tmp / "userlist.txt").write_text('"postgres" ""\n')
    (tmp / "pgbouncer.ini").write_text(
        "[databases]\n* = host=127.0.0.1 port=5432\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"auth_type = trust\nauth_file = {tmp / 'userlist.txt'}\n"
        "pool_mode = transaction\nunix_socket_dir =\n"
        "default_pool_size = 4\nmax_client_conn = 200\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for f in tmp.iterdir():
        f.chmod(0o644)
    cmd = [binary, str(tmp / "pgbouncer.ini")]
    if os.geteuid() == 0:
        cmd[1:1] = ["-u", "postgres"]  # PgBouncer refuses to run as root
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                    break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"pgbouncer exited: {proc.stderr.read().decode() if proc.stderr else ''}")
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def pooled_url(database_url: str, pgbouncer: int) -> str:
    name = database_url.rpartition("/")[2]
    host = ADMIN_URL.split("@", 1)[0]  # postgresql://postgres
    return f"{host}@127.0.0.1:{pgbouncer}/{name}"


async def test_engine_through_a_transaction_pooler(
    pooled_url: str, prefix: str, redis_server: str, clock: FakeClock, registry: Any
) -> None:
    from jobqueue.settings import Settings

    settings = Settings(DATABASE_URL=pooled_url, JOBQUEUE_PREFIX=prefix, JOBQUEUE_PG_STATEMENT_CACHE=False)
    store = Store(pooled_url, pool_max=8, statement_cache=settings.pg_statement_cache)
    assert store.statement_cache is False
    jq = JobQueue(store, RedisPyTransport.from_url(redis_server), registry, settings, clock)
    try:
        await store.migrate()
        rows = await jq.enqueue_many([{"type": "echo", "payload": {"i": i}} for i in range(300)])
        again, created = await jq.enqueue({"type": "echo", "payload": {}, "idempotency_key": "k"})
        same, created2 = await jq.enqueue({"type": "echo", "payload": {}, "idempotency_key": "k"})
        assert created and not created2 and same["id"] == again["id"]
        for _ in range(3):  # many statements over few server connections, interleaved
            await jq.drain(10)
        done, _ = await jq.list_jobs(status="completed", limit=200)
        counts = await jq.queue_counts()
        assert counts["default"]["counts"]["completed"] == len(rows) + 1
        assert len(done) == 200
        await jq.cancel((await jq.enqueue({"type": "echo", "payload": {}, "delay_ms": 1000}))[0]["id"])
        assert (await jq.queue_counts())["default"]["counts"]["cancelled"] == 1
    finally:
        await jq.close()
