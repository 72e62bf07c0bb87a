"""Fresh state per test against the machine's real Postgres and Redis.

- Postgres: a template database, migrated to head, is made once per session; each test gets
  `CREATE DATABASE ... TEMPLATE` (procrastinate's approach) and drops it afterwards.
- Redis: database 9, a fresh key prefix per test; its keys are deleted afterwards.
- The Upstash transport runs through `jobqueue upstash-proxy` (a real server process) over the
  same Redis, so the engine's contract tests run over both transports.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import pytest
import redis as redis_sync

from jobqueue.builtins import default_registry
from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue
from jobqueue.registry import Registry
from jobqueue.settings import Settings
from jobqueue.store import Store
from jobqueue.transports import RedisPyTransport, UpstashTransport

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
# Per run, so two test runs on one machine never fight over the template.
TEMPLATE = f"jobqueue_tpl_{os.getpid()}"
PROXY_TOKEN = "test-upstash-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _db_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    async def make() -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            await conn.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await conn.close()
        store = Store(_db_url(TEMPLATE))
        try:
            await store.migrate()  # the shipped migrations, as `jobqueue migrate` applies them
        finally:
            await store.close()

    async def drop() -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        finally:
            await conn.close()

    try:
        asyncio.run(make())
    except (OSError, asyncpg.PostgresError) as e:
        pytest.skip(f"PostgreSQL is not reachable at {ADMIN_URL}: {e}")
    yield TEMPLATE
    asyncio.run(drop())


@pytest.fixture
async def database_url(pg_template: str) -> AsyncIterator[str]:
    name = f"jq_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    finally:
        await conn.close()
    yield _db_url(name)
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def redis_server() -> str:
    try:
        redis_sync.Redis.from_url(REDIS_URL).ping()
    except redis_sync.exceptions.ConnectionError as e:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {e}")
    return REDIS_URL


@pytest.fixture
def prefix(redis_server: str) -> Iterator[str]:
    p = f"t{uuid.uuid4().hex[:10]}"
    yield p
    r = redis_sync.Redis.from_url(redis_server)
    keys = list(r.scan_iter(match=f"{p}:*", count=1000))
    if keys:
        r.delete(*keys)


@pytest.fixture(scope="session")
def upstash_proxy(redis_server: str) -> Iterator[str]:
    """A real `jobqueue upstash-proxy` process for the session."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobqueue",
            "upstash-proxy",
            "--redis",
            redis_server,
            "--port",
            str(port),
            "--token",
            PROXY_TOKEN,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
        except OSError:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"upstash-proxy exited: {err}") from None
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    if proc.stderr:
        proc.stderr.close()


def _setting_names() -> set[str]:
    """Every environment name Settings reads (its aliases)."""
    names: set[str] = set()
    for f in Settings.model_fields.values():
        alias = f.validation_alias
        choices = getattr(alias, "choices", None)
        if choices is not None:
            names.update(str(c) for c in choices)
        elif alias is not None:
            names.add(str(alias))
    return names


SETTING_NAMES = _setting_names()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment: a variable the developer exported (JOBQUEUE_BATCH_SIZE, a
    real DATABASE_URL...) must not change what a test sees. Tests set what they need explicitly."""
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=["redis", "upstash"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry() -> Registry:
    return default_registry()


MakeJQ = Callable[..., JobQueue]


@pytest.fixture
async def make_jq(
    request: pytest.FixtureRequest,
    database_url: str,
    prefix: str,
    redis_server: str,
    clock: FakeClock,
    registry: Registry,
) -> AsyncIterator[MakeJQ]:
    """Build engines sharing this test's database, prefix and clock (several = several workers)."""
    made: list[JobQueue] = []
    kind = getattr(request, "param", None) or (
        request.getfixturevalue("transport_kind") if "transport_kind" in request.fixturenames else "redis"
    )

    def make(reg: Registry | None = None, transport: str | None = None, **overrides: Any) -> JobQueue:
        settings = Settings(JOBQUEUE_PREFIX=prefix, DATABASE_URL=database_url, **overrides)
        t = transport or kind
        if t == "upstash":
            url = request.getfixturevalue("upstash_proxy")
            redis: Any = UpstashTransport(url, PROXY_TOKEN, timeout_s=5)
        else:
            redis = RedisPyTransport.from_url(redis_server)
        jq = JobQueue(Store(database_url, pool_max=settings.pg_pool_max), redis, reg or registry, settings, clock)
        made.append(jq)
        return jq

    yield make
    for jq in made:
        await jq.close()


@pytest.fixture
async def jq(make_jq: MakeJQ) -> JobQueue:
    return make_jq()
