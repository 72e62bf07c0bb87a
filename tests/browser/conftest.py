"""Browser tests: the real app (API and dashboard) served by uvicorn in a thread on a free port,
over this test's fresh database and Redis prefix, driven by headless Chromium through Playwright.

The system Chromium is used (Debian's package; `.ci/run` installs it), never a browser that
`playwright install` downloads. Without it the tests skip and say why.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import uvicorn

from jobqueue import PermanentError
from jobqueue.builtins import default_registry
from jobqueue.registry import JobContext, Registry
from jobqueue.settings import Settings
from jobqueue.web import dashboard as _dashboard
from jobqueue.web.app import create_app
from tests.conftest import _free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
API_TOKEN = "browser-test-token-0123456789abcdef"
WORKER_SECRET = "browser-test-worker-0123456789abcdef"


@pytest.fixture(scope="session")
def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[dev]')")
    return CHROMIUM


@dataclass
class LiveServer:
    url: str
    # Flipped by the test: while True the `charge` handler fails for good (the job is dead-lettered).
    declines: dict[str, bool] = field(default_factory=lambda: {"on": True})


def browser_registry(declines: dict[str, bool]) -> Registry:
    registry = default_registry()

    @registry.job("charge", queue="payments", max_attempts=1)
    async def charge(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        if declines["on"]:
            raise PermanentError("card_declined: the issuer refused the charge (code 51)\nupdate the card, then retry")
        return {"charged_cents": payload.get("amount_cents"), "receipt": f"rcpt_{ctx.job_id}"}

    return registry


@pytest.fixture
async def live_server(
    request: pytest.FixtureRequest, database_url: str, redis_server: str, prefix: str
) -> AsyncIterator[LiveServer]:
    """The server; `@pytest.mark.parametrize("live_server", [{SETTING: value}], indirect=True)`
    changes its settings."""
    server_state = LiveServer(url="")
    settings = Settings(
        DATABASE_URL=database_url,
        REDIS_URL=redis_server,
        JOBQUEUE_PREFIX=prefix,
        JOBS_API_TOKEN=API_TOKEN,
        WORKER_SECRET=WORKER_SECRET,
        **getattr(request, "param", {}),
    )
    app = create_app(settings, registry=browser_registry(server_state.declines))
    if not any(getattr(r, "path", None) == "/dashboard" for r in app.routes):  # unless create_app has it
        app.include_router(_dashboard.router)
    port = _free_port()
    # ws="none": nothing here speaks WebSocket, and the websockets import warns (warnings are errors).
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    for _ in range(200):
        if server.started or not thread.is_alive():
            break
        await asyncio.sleep(0.025)
    if not server.started:
        raise RuntimeError("uvicorn did not start")
    server_state.url = f"http://127.0.0.1:{port}"
    yield server_state
    server.should_exit = True
    await asyncio.to_thread(thread.join, 10)


async def seed_history(database_url: str, now: datetime) -> None:
    """A day of finished jobs written straight into Postgres, so the overview's charts have a shape
    (jobs run through the API all finish within the test's few seconds)."""
    rng = random.Random(7)
    rows: list[tuple[Any, ...]] = []
    error = "TimeoutError: upstream took too long"
    for queue, per_hour, fail_rate in (("default", 30, 0.03), ("emails", 14, 0.04), ("payments", 6, 0.02)):
        for minute in range(24 * 60 - 5, -1, -5):  # one slot per five minutes, oldest first
            hour = (now - timedelta(minutes=minute)).hour
            busy = 1.7 if 9 <= hour <= 18 else 1.0  # office hours are busier
            for _ in range(rng.randint(0, round(per_hour * busy / 6))):
                finished = now - timedelta(minutes=minute, seconds=rng.randint(0, 290))
                failed = rng.random() < fail_rate
                duration = rng.randint(20, 900)
                started = finished - timedelta(milliseconds=duration)
                attempt = {"attempt": 1, "started_at": started.isoformat(), "ended_at": finished.isoformat(),
                           "outcome": "failed" if failed else "completed", "duration_ms": duration,
                           "error": error if failed else None}  # fmt: skip
                rows.append((queue, "failed" if failed else "completed", json.dumps([attempt]),
                             error if failed else None, started - timedelta(seconds=rng.randint(0, 5)),
                             started, finished))  # fmt: skip
    conn = await asyncpg.connect(database_url)
    try:
        await conn.executemany(
            """INSERT INTO jobs (queue, type, payload, status, attempts, max_attempts, history, error,
                                 run_at, created_at, started_at, finished_at, result)
               VALUES ($1, 'echo', '{"seeded": true}', $2, 1, 1, $3::jsonb, $4, $5, $5, $6, $7,
                       CASE WHEN $2 = 'completed' THEN '{"ok": true}'::jsonb END)""",
            rows,
        )
    finally:
        await conn.close()


def utcnow() -> datetime:
    return datetime.now(UTC)
