"""Holes in the credentials checks (issue 8), each reproduced on the old code: tokens padded with a
no-break space or NEL, QStash retries refused after a failed drain, duplicates of a running
token, and no throttle on failed credentials."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request

from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue
from jobqueue.errors import PostgresUnavailable, RedisUnavailable
from jobqueue.settings import Settings
from jobqueue.web.app import create_app
from jobqueue.web.auth import client_address

from .conftest import API_TOKEN, APP_SETTINGS, AUTH, WORKER_SECRET, sign_qstash
from .test_auth import API_ROUTES, WORKER_ROUTES

# --- padding --------------------------------------------------------------------------------------

ROUTES = [(m, p, b) for m, p, b, _ in API_ROUTES] + [(m, p, None) for m, p in WORKER_ROUTES]
assert len(ROUTES) == 17


@pytest.mark.parametrize("pad", [b"\xa0", b"\x85", b"\x0b", b"\x0c"], ids=["nbsp", "nel", "vt", "ff"])
async def test_tokens_padded_with_non_http_whitespace_are_refused_on_every_route(
    make_jq: Callable[..., JobQueue], make_client: Callable[[FastAPI], httpx.AsyncClient], pad: bytes
) -> None:
    app = create_app(jq=make_jq(**APP_SETTINGS, JOBQUEUE_AUTH_FAILURES_PER_ADDRESS=1000))  # no 429s here
    async with make_client(app) as client:
        for method, path, body in ROUTES:
            secret = WORKER_SECRET if path.startswith("/api/workers") else API_TOKEN
            for value in (secret.encode() + pad, pad + secret.encode()):
                r = await client.request(method, path, json=body, headers={"Authorization": b"Bearer " + value})
                assert r.status_code == 401, (method, path, pad)


async def test_tokens_padded_with_spaces_or_tabs_are_accepted(client: httpx.AsyncClient) -> None:
    for value in (f" {API_TOKEN}", f"{API_TOKEN}\t", f"\t {API_TOKEN} "):
        assert (await client.get("/api/jobs", headers={"Authorization": f"Bearer {value}"})).status_code == 200


# --- QStash: a failed delivery's retry is accepted, a succeeded one's is not -------------------------


async def _qstash(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/workers", headers={"Upstash-Signature": token})


def fail_once(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str, exc: Exception) -> list[int]:
    """Make `obj.name` raise `exc` on its first call (for `claim` statements only, on a store)."""
    real = getattr(obj, name)
    calls: list[int] = []

    async def flaky(*args: Any, **kw: Any) -> Any:
        if obj.__class__.__name__ == "Store" and args[0] != "claim":
            return await real(*args, **kw)
        calls.append(1)
        if len(calls) == 1:
            raise exc
        return await real(*args, **kw)

    monkeypatch.setattr(obj, name, flaky)
    return calls


@pytest.mark.parametrize("fault", ["redis", "postgres"])
async def test_qstash_retry_of_a_failed_delivery_drains_exactly_once(
    client: httpx.AsyncClient, jq: JobQueue, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    await jq.drain(1)  # the index exists, as on a running system
    row, _ = await jq.enqueue({"type": "echo", "payload": {"n": 1}})
    if fault == "redis":
        fail_once(monkeypatch, jq.broker, "claim", RedisUnavailable("injected"))
    else:
        fail_once(monkeypatch, jq.store, "fetch", PostgresUnavailable("injected"))
    drains: list[Any] = []
    real_drain = jq.drain

    async def counted(*args: Any, **kw: Any) -> Any:
        report = await real_drain(*args, **kw)
        drains.append(report)
        return report

    monkeypatch.setattr(jq, "drain", counted)
    token = sign_qstash(jti="jwt_retried")
    first = await _qstash(client, token)
    assert first.status_code == 503 and first.json()["error"]["dependency"] == fault
    retry = await _qstash(client, token)  # QStash's retry: the same signed token
    assert retry.status_code == 200, retry.text
    assert len(drains) == 1  # the failed one raised; exactly one drain completed
    if fault == "redis":  # nothing was popped before the fault: the retry runs the job, once
        assert retry.json()["completed"] == 1
        job = await jq.get(row["id"])
        assert (job["status"], job["attempts"]) == ("completed", 1)
    replay = await _qstash(client, token)  # its drain succeeded: now it is a replay
    assert replay.status_code == 401
    assert replay.json()["error"]["message"] == "Upstash-Signature was already used"
    assert len(drains) == 1
    ttl = await jq.redis.command("PTTL", f"{jq.keys.nonce_prefix}jwt_retried")
    assert 290_000 < ttl <= 305_000  # kept until the token expires (plus the clock slack)


async def test_a_duplicate_of_a_running_qstash_token_runs_no_second_drain(
    client: httpx.AsyncClient, jq: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()
    started: list[int] = []
    real_drain = jq.drain

    async def slow(*args: Any, **kw: Any) -> Any:
        started.append(1)
        await release.wait()
        return await real_drain(*args, **kw)

    monkeypatch.setattr(jq, "drain", slow)
    token = sign_qstash(jti="jwt_twice")
    first = asyncio.create_task(_qstash(client, token))
    while not started:
        await asyncio.sleep(0.01)
    dup = await _qstash(client, token)
    assert dup.status_code == 409 and dup.headers["retry-after"] == "60"
    assert dup.json()["error"]["code"] == "token_in_use"
    release.set()
    assert (await first).status_code == 200
    assert len(started) == 1
    assert (await _qstash(client, token)).status_code == 401


# --- throttling failed credentials ----------------------------------------------------------------


async def test_failed_api_credentials_are_throttled_with_retry_after(
    client: httpx.AsyncClient, jq: JobQueue, clock: FakeClock
) -> None:
    clock.advance(60_000 - clock.ms() % 60_000 + 15_000)  # 15 s into a window
    wrong = {"Authorization": "Bearer nope"}
    statuses = [(await client.get("/api/jobs", headers=wrong)).status_code for _ in range(25)]
    assert statuses == [401] * 20 + [429] * 5
    r = await client.get("/api/jobs", headers=wrong)
    assert r.status_code == 429 and r.headers["retry-after"] == "45"
    assert r.json()["error"]["code"] == "too_many_attempts"
    assert (await client.get("/api/workers")).status_code == 429  # the same address, another route
    # A valid credential is checked first: never throttled, and no Redis request for the check.
    before = jq.redis.requests
    assert (await client.get("/api/jobs/1", headers=AUTH)).status_code == 404
    assert jq.redis.requests == before
    clock.advance(45_000)  # the next window
    assert (await client.get("/api/jobs", headers=wrong)).status_code == 401


async def test_failures_are_limited_overall_across_addresses(
    make_jq: Callable[..., JobQueue], make_client: Callable[[FastAPI], httpx.AsyncClient]
) -> None:
    settings = {**APP_SETTINGS, "JOBQUEUE_AUTH_TRUST_PROXY": True, "JOBQUEUE_AUTH_FAILURES_TOTAL": 6}
    async with make_client(create_app(jq=make_jq(**settings))) as c:
        codes = [
            (await c.get("/api/jobs", headers={"X-Forwarded-For": f"203.0.113.{i}, 10.0.0.1"})).status_code
            for i in range(8)
        ]
        assert codes == [401] * 6 + [429] * 2
        assert (await c.get("/api/jobs", headers={**AUTH, "X-Forwarded-For": "203.0.113.99"})).status_code == 200


async def test_wrong_dashboard_logins_are_throttled(client: httpx.AsyncClient, app: FastAPI) -> None:
    from .test_dashboard import with_dashboard

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=with_dashboard(app)), base_url="http://t") as c:
        codes = [(await c.post("/dashboard/login", data={"token": "nope"})).status_code for _ in range(22)]
        assert codes == [401] * 20 + [429] * 2
        r = await c.post("/dashboard/login", data={"token": "nope"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "Too many" in r.text
        assert (await c.post("/dashboard/login", data={"token": API_TOKEN})).status_code == 303


def _request(peer: str, headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "headers": raw, "client": (peer, 1234), "method": "GET", "path": "/"})


@pytest.mark.parametrize(
    ("trust", "env", "peer", "headers", "address"),
    [
        (None, None, "198.51.100.7", {"X-Forwarded-For": "203.0.113.1"}, "198.51.100.7"),  # not trusted
        (None, "production", "10.0.0.2", {"X-Forwarded-For": "203.0.113.1, 10.0.0.9"}, "203.0.113.1"),  # Vercel
        (True, None, "10.0.0.2", {"X-Real-IP": "203.0.113.5"}, "203.0.113.5"),
        (True, None, "10.0.0.2", {"X-Forwarded-For": "not-an-ip"}, "10.0.0.2"),
        (False, "production", "10.0.0.2", {"X-Forwarded-For": "203.0.113.1"}, "10.0.0.2"),
        (None, None, "2001:db8:1:2:3:4:5:6", {}, "2001:db8:1:2::/64"),
        (None, None, "::ffff:198.51.100.7", {}, "198.51.100.7"),
    ],
)
def test_client_address(trust: bool | None, env: str | None, peer: str, headers: dict[str, str], address: str) -> None:
    settings = Settings(JOBQUEUE_AUTH_TRUST_PROXY=trust, VERCEL_ENV=env)
    assert client_address(_request(peer, headers), settings) == address
