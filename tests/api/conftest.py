"""API tests: the FastAPI app over a real engine (real Postgres and Redis, fresh per test), driven
in-process with httpx's ASGI transport. Credentials are fixed test values; QStash signatures are
signed here with PyJWT, exactly as Upstash would."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import httpx
import jwt
import pytest
import redis as redis_sync
from fastapi import FastAPI
from pydantic import BaseModel, TypeAdapter

from jobqueue import PermanentError
from jobqueue.builtins import default_registry
from jobqueue.engine import JobQueue
from jobqueue.registry import JobContext, Registry
from jobqueue.web.app import create_app

API_TOKEN = "test-api-token-0123456789abcdef"
WORKER_SECRET = "test-worker-secret-0123456789abcdef"
CRON_SECRET = "test-cron-secret-0123456789abcdef"
ENQUEUE_TOKEN = "test-enqueue-token-0123456789abcdef"
METRICS_TOKEN = "test-metrics-token-0123456789abcdef"
# HS256 keys of 32+ bytes, as Upstash issues them (shorter ones make PyJWT warn).
QSTASH_CURRENT = "sig_current_0123456789abcdefghijklmnop"
QSTASH_NEXT = "sig_next_0123456789abcdefghijklmnopqrs"
PUBLIC_URL = "https://jobs.example.test"
WORKERS_URL = f"{PUBLIC_URL}/api/workers"

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
WORKER_AUTH = {"Authorization": f"Bearer {WORKER_SECRET}"}
ENQUEUE_AUTH = {"Authorization": f"Bearer {ENQUEUE_TOKEN}"}
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}

APP_SETTINGS: dict[str, Any] = {
    "JOBS_API_TOKEN": API_TOKEN,
    "JOBS_ENQUEUE_TOKEN": ENQUEUE_TOKEN,
    "JOBS_METRICS_TOKEN": METRICS_TOKEN,
    "WORKER_SECRET": WORKER_SECRET,
    "CRON_SECRET": CRON_SECRET,
    "QSTASH_CURRENT_SIGNING_KEY": QSTASH_CURRENT,
    "QSTASH_NEXT_SIGNING_KEY": QSTASH_NEXT,
    "JOBQUEUE_PUBLIC_URL": PUBLIC_URL,
}


class StrictPayload(BaseModel):
    n: int


@pytest.fixture
def registry() -> Registry:
    """The default registry plus types the API tests need (overrides tests/conftest.py's)."""
    reg = default_registry()

    @reg.job("strict", model=StrictPayload)
    async def strict(payload: StrictPayload, ctx: JobContext) -> int:
        return payload.n

    @reg.job("boom", max_attempts=1)
    async def boom(payload: dict[str, Any], ctx: JobContext) -> None:
        raise PermanentError("boom")

    return reg


@pytest.fixture
def jq(make_jq: Callable[..., JobQueue]) -> JobQueue:
    return make_jq(**APP_SETTINGS)


@pytest.fixture
def app(jq: JobQueue) -> FastAPI:
    return create_app(jq=jq)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c


@pytest.fixture
def make_client() -> Callable[[FastAPI], httpx.AsyncClient]:
    """For tests that build their own app (use as `async with make_client(app) as c`)."""

    def make(app: FastAPI) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")

    return make


def iso(dt: datetime | None) -> Any:
    """A datetime as the API renders it."""
    return TypeAdapter(datetime | None).dump_python(dt, mode="json")


def sign_qstash(
    key: str = QSTASH_CURRENT,
    body: bytes = b"",
    *,
    url: str = WORKERS_URL,
    expires_in: int = 300,
    not_before: int = -1,
    jti: str | None = None,
    drop: tuple[str, ...] = (),
    **overrides: Any,
) -> str:
    now = int(time.time())
    digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode()
    claims: dict[str, Any] = {
        "iss": "Upstash",
        "sub": url,
        "exp": now + expires_in,
        "nbf": now + not_before,
        "iat": now,
        "jti": jti or f"jwt_{uuid.uuid4().hex}",
        "body": digest,
    }
    claims.update(overrides)
    for name in drop:
        claims.pop(name)
    return jwt.encode(claims, key, algorithm="HS256")


async def stored(jq: JobQueue) -> list[dict[str, Any]]:
    rows, _ = await jq.list_jobs(limit=200)
    return rows


def redis_keys(redis_url: str, prefix: str, pattern: str = "*") -> list[str]:
    r = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    try:
        return sorted(r.scan_iter(match=f"{prefix}:{pattern}", count=1000))
    finally:
        r.close()


async def assert_nothing_stored(jq: JobQueue, redis_url: str) -> None:
    """No row in Postgres and no job in any ready list or delayed set."""
    assert await stored(jq) == []
    queued = [k for k in redis_keys(redis_url, jq.keys.prefix) if ":ready:" in k or k.endswith(":delayed")]
    assert queued == []
