"""Test your own job types the way jobqueue tests its own: against a real Postgres and Redis, in an
isolated database and key prefix, with an injected clock.

As a pytest plugin (add `pytest_plugins = ["jobqueue.testing"]` to your conftest.py, or run
`pytest -p jobqueue.testing`), override `jobqueue_registry` with your app's registry and use the
`jobqueue` fixture:

    @pytest.fixture
    def jobqueue_registry():
        return myapp.jobs.registry()

    async def test_receipts(jobqueue):
        job = await jobqueue.enqueue("email.receipt", {"order_id": "42"})
        await jobqueue.drain_until_idle()
        assert (await jobqueue.get(job.id)).status == "completed"

Or without pytest: `async with harness(registry) as h: ...`.

Where the servers are: JOBQUEUE_TEST_DATABASE_URL (a role that may CREATE DATABASE; default
postgresql://postgres@127.0.0.1:5432/postgres) and JOBQUEUE_TEST_REDIS_URL (default
redis://127.0.0.1:6379/15). Each harness makes its own database from a template migrated once per
process, and a key prefix of its own, and removes both afterwards. The clock is a `FakeClock`:
`h.clock.advance(seconds=...)` moves leases, retries' backoff, delays and schedules without
sleeping; `drain_until_idle()` advances it to the next due retry or delayed job by itself.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .builtins import default_registry
from .clock import FakeClock
from .drain import DrainReport
from .engine import JobQueue
from .models import JobView
from .registry import Registry
from .settings import Settings
from .store import Store
from .transports import RedisPyTransport

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"

_templates: dict[str, str] = {}  # admin URL -> the migrated template database of this process
_template_lock: asyncio.Lock | None = None


def admin_url() -> str:
    return os.environ.get("JOBQUEUE_TEST_DATABASE_URL", DEFAULT_ADMIN_URL)


def redis_url() -> str:
    return os.environ.get("JOBQUEUE_TEST_REDIS_URL", DEFAULT_REDIS_URL)


def _db_url(admin: str, name: str) -> str:
    return admin.rpartition("/")[0] + "/" + name


async def _template(admin: str) -> str:
    global _template_lock
    if _template_lock is None:
        _template_lock = asyncio.Lock()
    async with _template_lock:
        if admin not in _templates:
            name = f"jobqueue_test_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
            await Store.create_database(admin, name)
            store = Store(_db_url(admin, name))
            try:
                await store.migrate()
            finally:
                await store.close()
            _templates[admin] = name
    return _templates[admin]


@dataclass
class Harness:
    """A queue of your own for one test: `enqueue`, `drain`, `drain_until_idle`, `get`, `jobs`."""

    jq: JobQueue
    clock: FakeClock
    reports: list[DrainReport] = field(default_factory=list)

    async def enqueue(self, type: str, payload: Mapping[str, Any] | None = None, **options: Any) -> JobView:
        """As `POST /api/jobs` takes it (queue, priority, delay_ms, max_attempts, ...)."""
        row, _ = await self.jq.enqueue({"type": type, "payload": dict(payload or {}), **options})
        return JobView.from_row(row)

    async def drain(self, budget_s: float = 30.0) -> DrainReport:
        report = await self.jq.drain(budget_s)
        self.reports.append(report)
        return report

    async def drain_until_idle(self, *, max_drains: int = 100, advance: bool = True) -> list[DrainReport]:
        """Drain until nothing is left to run. With `advance`, a drain that finds nothing moves
        the clock to the next delayed job or retry and goes on, so retries with backoff run in
        the same call; jobs due further away than that (a year, a schedule) are left alone only
        if nothing else is pending. Raises if the queue is still busy after `max_drains`."""
        made: list[DrainReport] = []
        for _ in range(max_drains):
            report = await self.drain()
            made.append(report)
            if report.claimed or report.more or report.reconciled:
                continue
            due = await self._next_due() if advance else None
            if due is None:
                return made
            self.clock.advance(max(0, int((due - self.clock.now()).total_seconds() * 1000)) + 1)
        raise AssertionError(f"the queue was still busy after {max_drains} drains")

    async def get(self, job_id: int) -> JobView:
        return JobView.from_row(await self.jq.get(job_id))

    async def jobs(
        self, *, status: str | None = None, queue: str | None = None, type: str | None = None
    ) -> list[JobView]:
        """Every job matching the filter, newest first."""
        out: list[JobView] = []
        cursor = None
        while True:
            rows, cursor = await self.jq.list_jobs(status=status, queue=queue, type=type, limit=200, cursor=cursor)
            out += [JobView.from_row(r) for r in rows]
            if cursor is None:
                return out

    async def _next_due(self) -> datetime | None:
        pending = await self.jobs(status="scheduled")
        return min((j.run_at for j in pending if j.run_at is not None), default=None)


@asynccontextmanager
async def harness(registry: Registry | None = None, **settings: Any) -> AsyncIterator[Harness]:
    """An isolated queue (its own database and key prefix) for the length of the block."""
    admin = admin_url()
    template = await _template(admin)
    name = f"jobqueue_test_{uuid.uuid4().hex[:12]}"
    await Store.create_database(admin, name, template=template)
    url = _db_url(admin, name)
    prefix = f"jqtest{uuid.uuid4().hex[:8]}"
    clock = FakeClock()
    s = Settings.model_validate({"DATABASE_URL": url, "JOBQUEUE_PREFIX": prefix, "REDIS_URL": redis_url(), **settings})
    transport = RedisPyTransport.from_url(redis_url())
    jq = JobQueue(Store(url, pool_max=5), transport, registry or default_registry(), s, clock)
    try:
        yield Harness(jq, clock)
    finally:
        await jq.broker.forget_prefix()
        await jq.close()
        await Store.drop_database(admin, name)


# --- the pytest plugin -------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the harness works without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def jobqueue_registry() -> Registry:
        """The job types under test: override this fixture with your app's registry."""
        return default_registry()

    @pytest.fixture
    def jobqueue_settings() -> dict[str, Any]:
        """Settings for the queue under test (environment names: JOBQUEUE_BATCH_SIZE=...)."""
        return {}

    @pytest.fixture
    async def jobqueue(jobqueue_registry: Registry, jobqueue_settings: dict[str, Any]) -> AsyncIterator[Harness]:
        """A Harness over your registry, in a database and key prefix of its own."""
        async with harness(jobqueue_registry, **jobqueue_settings) as h:
            yield h
