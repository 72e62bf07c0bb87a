"""The auth matrix over every route, and the worker route's four ways in (worker secret, cron
secret, QStash signature with either key) with every way a signature can be wrong."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI

from jobqueue.engine import JobQueue
from jobqueue.web.app import create_app

from .conftest import (
    API_TOKEN,
    APP_SETTINGS,
    AUTH,
    CRON_SECRET,
    QSTASH_CURRENT,
    QSTASH_NEXT,
    WORKER_AUTH,
    WORKER_SECRET,
    assert_nothing_stored,
    sign_qstash,
)

ECHO = {"type": "echo", "payload": {}}

# (method, path, JSON body, status with the right token)
API_ROUTES: list[tuple[str, str, Any, int]] = [
    ("POST", "/api/jobs", ECHO, 201),
    ("POST", "/api/jobs/batch", {"jobs": [ECHO]}, 201),
    ("GET", "/api/jobs", None, 200),
    ("GET", "/api/jobs/1", None, 404),
    ("POST", "/api/jobs/1/cancel", None, 404),
    ("POST", "/api/jobs/1/retry", None, 404),
    ("GET", "/api/dlq", None, 200),
    ("POST", "/api/dlq/replay", {"ids": [1]}, 200),
    ("DELETE", "/api/dlq?older_than_days=1", None, 200),
    ("GET", "/api/queues", None, 200),
    ("POST", "/api/queues/default/pause", None, 200),
    ("POST", "/api/queues/default/resume", None, 200),
    ("GET", "/api/metrics", None, 200),
    ("GET", "/api/metrics/prometheus", None, 200),
]
WORKER_ROUTES = [("GET", "/api/workers"), ("POST", "/api/workers")]
OPEN_ROUTES = [("GET", "/api/health")]

WRONG_HEADERS: dict[str, dict[str, str]] = {
    "no header": {},
    "wrong token": {"Authorization": "Bearer not-the-token"},
    "token with another scheme": {"Authorization": f"Basic {API_TOKEN}"},
    "token without a scheme": {"Authorization": API_TOKEN},
    "token prefix": {"Authorization": f"Bearer {API_TOKEN[:-1]}"},
    "worker secret on the API": WORKER_AUTH,
    "cron secret on the API": {"Authorization": f"Bearer {CRON_SECRET}"},
}


def _route_table(app: FastAPI) -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops}


def test_the_matrix_covers_every_route(app: FastAPI) -> None:
    documented = {(m, p.split("?")[0]) for m, p, _, _ in API_ROUTES}
    documented = {(m, p.replace("/1", "/{job_id}").replace("/default/", "/{name}/")) for m, p in documented}
    # A new route fails here until it joins the matrix below with its expected auth.
    assert _route_table(app) == documented | set(WORKER_ROUTES) | set(OPEN_ROUTES)


def _assert_401(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("method", "path", "body", "ok_status"), API_ROUTES, ids=[f"{m} {p}" for m, p, _, _ in API_ROUTES]
)
async def test_api_routes_need_the_api_token(
    client: httpx.AsyncClient,
    jq: JobQueue,
    redis_server: str,
    method: str,
    path: str,
    body: Any,
    ok_status: int,
) -> None:
    for name, headers in WRONG_HEADERS.items():
        r = await client.request(method, path, json=body, headers=headers)
        _assert_401(r)
        assert API_TOKEN not in r.text, name
    await assert_nothing_stored(jq, redis_server)
    assert await jq.broker.paused() == set()
    r = await client.request(method, path, json=body, headers=AUTH)
    assert r.status_code == ok_status, r.text


@pytest.mark.parametrize(("method", "path"), WORKER_ROUTES)
async def test_worker_route_refuses_wrong_credentials(client: httpx.AsyncClient, method: str, path: str) -> None:
    for headers in [{}, {"Authorization": "Bearer nope"}, AUTH, {"Authorization": WORKER_SECRET}]:
        _assert_401(await client.request(method, path, headers=headers))


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("GET", {"Authorization": f"Bearer {CRON_SECRET}"}),  # Vercel Cron
        ("POST", {"Authorization": f"Bearer {CRON_SECRET}"}),
        ("GET", WORKER_AUTH),
        ("POST", WORKER_AUTH),
        ("POST", {"Authorization": f"bearer {WORKER_SECRET}"}),  # the scheme is case-insensitive
    ],
)
async def test_worker_route_accepts_its_secrets(
    client: httpx.AsyncClient, method: str, headers: dict[str, str]
) -> None:
    r = await client.request(method, "/api/workers", headers=headers)
    assert r.status_code == 200, r.text


async def test_health_needs_no_auth(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/health")).status_code == 200


@pytest.mark.parametrize("token", [None, ""])
async def test_an_unset_or_empty_token_lets_nobody_in(
    make_jq: Callable[..., JobQueue], make_client: Callable[[FastAPI], httpx.AsyncClient], token: str | None
) -> None:
    settings = {**APP_SETTINGS, "JOBS_API_TOKEN": token, "WORKER_SECRET": token, "CRON_SECRET": token}
    app = create_app(jq=make_jq(**settings))
    async with make_client(app) as c:
        for headers in [{}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"}, {"Authorization": ""}]:
            _assert_401(await c.get("/api/jobs", headers=headers))
            _assert_401(await c.get("/api/workers", headers=headers))


# --- QStash ------------------------------------------------------------------------------------


async def _qstash(client: httpx.AsyncClient, token: str, body: bytes = b"") -> httpx.Response:
    return await client.post("/api/workers", content=body, headers={"Upstash-Signature": token})


async def test_qstash_signature_with_the_current_key(client: httpx.AsyncClient) -> None:
    r = await _qstash(client, sign_qstash(QSTASH_CURRENT))
    assert r.status_code == 200, r.text


async def test_qstash_signature_with_the_next_key_is_accepted(client: httpx.AsyncClient) -> None:
    r = await _qstash(client, sign_qstash(QSTASH_NEXT))
    assert r.status_code == 200, r.text


async def test_qstash_signature_covers_a_body(client: httpx.AsyncClient) -> None:
    body = b'{"scheduled": true}'
    assert (await _qstash(client, sign_qstash(body=body), body)).status_code == 200
    # Upstash may send the digest without padding; both spellings verify.
    claims = jwt.decode(sign_qstash(body=body), QSTASH_CURRENT, algorithms=["HS256"], audience=None)
    assert claims["body"].endswith("=")
    claims.update(body=claims["body"].rstrip("="), jti="jwt_unpadded")
    assert (await _qstash(client, jwt.encode(claims, QSTASH_CURRENT, algorithm="HS256"), body)).status_code == 200


QSTASH_REFUSALS: list[tuple[str, Callable[[], str], bytes, str]] = [
    ("wrong key", lambda: sign_qstash("sig_wrong_0123456789abcdefghijklmnopq"), b"", "matches neither signing key"),
    ("wrong url", lambda: sign_qstash(url="https://evil.example/api/workers"), b"", "issued for another URL"),
    ("other path", lambda: sign_qstash(url="https://jobs.example.test/api/jobs"), b"", "issued for another URL"),
    ("expired", lambda: sign_qstash(expires_in=-60), b"", "expired"),
    ("not yet valid", lambda: sign_qstash(not_before=120), b"", "not valid yet"),
    ("tampered body", lambda: sign_qstash(body=b"{}"), b'{"more": 1}', "does not match the request body"),
    ("wrong issuer", lambda: sign_qstash(iss="Someone"), b"", "invalid Upstash-Signature"),
    ("no jti", lambda: sign_qstash(drop=("jti",)), b"", "jti"),
    ("no body claim", lambda: sign_qstash(drop=("body",)), b"", "body"),
    ("no exp", lambda: sign_qstash(drop=("exp",)), b"", "exp"),
    ("not a JWT", lambda: "garbage", b"", "invalid Upstash-Signature"),
    (
        "alg none",
        lambda: jwt.encode({"iss": "Upstash", "sub": "x"}, None, algorithm="none"),
        b"",
        "invalid Upstash-Signature",
    ),
]


@pytest.mark.parametrize(
    ("make_token", "body", "reason"), [c[1:] for c in QSTASH_REFUSALS], ids=[c[0] for c in QSTASH_REFUSALS]
)
async def test_qstash_signature_refusals(
    client: httpx.AsyncClient, make_token: Callable[[], str], body: bytes, reason: str
) -> None:
    r = await _qstash(client, make_token(), body)
    _assert_401(r)
    assert reason in r.json()["error"]["message"]


async def test_qstash_replayed_token_is_refused(client: httpx.AsyncClient, jq: JobQueue) -> None:
    token = sign_qstash(jti="jwt_replay_me")
    assert (await _qstash(client, token)).status_code == 200
    r = await _qstash(client, token)
    _assert_401(r)
    assert r.json()["error"]["message"] == "Upstash-Signature was already used"
    ttl = await jq.redis.command("PTTL", f"{jq.keys.nonce_prefix}jwt_replay_me")
    assert 290_000 < ttl <= 305_000  # kept until the token expires (plus the clock slack)


async def test_qstash_without_configured_keys_is_refused(
    make_jq: Callable[..., JobQueue], make_client: Callable[[FastAPI], httpx.AsyncClient]
) -> None:
    settings = {**APP_SETTINGS, "QSTASH_CURRENT_SIGNING_KEY": None, "QSTASH_NEXT_SIGNING_KEY": None}
    async with make_client(create_app(jq=make_jq(**settings))) as c:
        r = await _qstash(c, sign_qstash())
    _assert_401(r)
    assert r.json()["error"]["message"] == "QStash signing keys are not configured"


async def test_qstash_sub_is_the_request_url_without_a_public_url(
    make_jq: Callable[..., JobQueue], make_client: Callable[[FastAPI], httpx.AsyncClient]
) -> None:
    app = create_app(jq=make_jq(**{**APP_SETTINGS, "JOBQUEUE_PUBLIC_URL": None}))
    async with make_client(app) as c:
        assert (await _qstash(c, sign_qstash(url="http://testserver/api/workers"))).status_code == 200
        _assert_401(await _qstash(c, sign_qstash(url="https://jobs.example.test/api/workers")))


async def test_qstash_public_url_keeps_the_query_string(client: httpx.AsyncClient) -> None:
    token = sign_qstash(url="https://jobs.example.test/api/workers?source=schedule")
    r = await client.post("/api/workers?source=schedule", headers={"Upstash-Signature": token})
    assert r.status_code == 200, r.text


async def test_qstash_oversized_body_is_refused(client: httpx.AsyncClient) -> None:
    body = b" " * (64 * 1024 + 1)
    r = await _qstash(client, sign_qstash(body=body), body)
    assert r.status_code == 413
