"""The auth matrix: every route (derived from the app's own routes, so a route added later fails
here until it is listed) with every credential (none, wrong, admin, enqueue, metrics, worker
secret), in `create_app()` and in a mounted `router()`; the scoped credentials and the throttle;
and the worker route's four ways in (worker secret, cron secret, QStash signature with either key)
with every way a signature can be wrong."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI

from jobqueue.engine import JobQueue
from jobqueue.web import router
from jobqueue.web.app import create_app
from jobqueue.web.mount import effective_routes

from .conftest import (
    API_TOKEN,
    APP_SETTINGS,
    AUTH,
    CRON_SECRET,
    ENQUEUE_AUTH,
    ENQUEUE_TOKEN,
    METRICS_AUTH,
    METRICS_TOKEN,
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
    ("PUT", "/api/queues/default", {"concurrency": 2}, 200),
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


# --- the matrix ----------------------------------------------------------------------------------

CREDENTIALS: dict[str, dict[str, str]] = {
    "none": {},
    "wrong": {"Authorization": "Bearer not-a-credential"},
    "worker": WORKER_AUTH,
    "metrics": METRICS_AUTH,
    "enqueue": ENQUEUE_AUTH,
    "admin": AUTH,
}
SECRETS = [API_TOKEN, ENQUEUE_TOKEN, METRICS_TOKEN, WORKER_SECRET, CRON_SECRET]


def api(ok: int, **scoped: int) -> dict[str, int]:
    """An API route: the admin token gets `ok`; a scoped token 403 unless given here."""
    return {"none": 401, "wrong": 401, "worker": 401, "metrics": 403, "enqueue": 403, **scoped, "admin": ok}


WORKER = {"none": 401, "wrong": 401, "worker": 200, "metrics": 403, "enqueue": 403, "admin": 401}
OPEN = dict.fromkeys(CREDENTIALS, 200)
# The dashboard takes no bearer credential at all: its pages want a session (303 to the login).
SESSION_ONLY = dict.fromkeys(CREDENTIALS, 303)


@dataclass(frozen=True)
class Row:
    method: str  # "*" for a route that takes every method
    route: str  # the route's path template, as the app lists it
    path: str  # a concrete request
    body: Any
    expect: dict[str, int]
    app_only: bool = False  # the docs belong to create_app(), not to the router

    @property
    def id(self) -> str:
        return f"{self.method} {self.route}"


MATRIX: list[Row] = [
    Row("POST", "/api/jobs", "/api/jobs", ECHO, api(201, enqueue=201)),
    Row("POST", "/api/jobs/batch", "/api/jobs/batch", {"jobs": [ECHO]}, api(201, enqueue=201)),
    Row("GET", "/api/jobs/{job_id}", "/api/jobs/1", None, api(404, enqueue=404)),
    Row("GET", "/api/jobs", "/api/jobs", None, api(200)),
    Row("POST", "/api/jobs/{job_id}/cancel", "/api/jobs/1/cancel", None, api(404)),
    Row("POST", "/api/jobs/{job_id}/retry", "/api/jobs/1/retry", None, api(404)),
    Row("GET", "/api/dlq", "/api/dlq", None, api(200)),
    Row("POST", "/api/dlq/replay", "/api/dlq/replay", {"ids": [1]}, api(200)),
    Row("DELETE", "/api/dlq", "/api/dlq?older_than_days=1", None, api(200)),
    Row("GET", "/api/queues", "/api/queues", None, api(200)),
    Row("PUT", "/api/queues/{name}", "/api/queues/default", {"concurrency": 2}, api(200)),
    Row("POST", "/api/queues/{name}/pause", "/api/queues/default/pause", None, api(200)),
    Row("POST", "/api/queues/{name}/resume", "/api/queues/default/resume", None, api(200)),
    Row("GET", "/api/metrics", "/api/metrics", None, api(200, metrics=200)),
    Row("GET", "/api/metrics/prometheus", "/api/metrics/prometheus", None, api(200, metrics=200)),
    Row("GET", "/api/schedules", "/api/schedules", None, api(200)),
    Row("PUT", "/api/schedules/{schedule_id}", "/api/schedules/s", {"type": "echo", "every_ms": 60000}, api(201)),
    Row("GET", "/api/schedules/{schedule_id}", "/api/schedules/nope", None, api(404)),
    Row("DELETE", "/api/schedules/{schedule_id}", "/api/schedules/nope", None, api(404)),
    Row("POST", "/api/schedules/{schedule_id}/pause", "/api/schedules/nope/pause", None, api(404)),
    Row("POST", "/api/schedules/{schedule_id}/resume", "/api/schedules/nope/resume", None, api(404)),
    Row("POST", "/api/schedules/{schedule_id}/trigger", "/api/schedules/nope/trigger", None, api(404)),
    Row("GET", "/api/workers", "/api/workers", None, WORKER),
    Row("POST", "/api/workers", "/api/workers", None, WORKER),
    Row("GET", "/api/health", "/api/health", None, OPEN),
    Row("*", "/dashboard{rest:path}", "/dashboard/jobs", None, SESSION_ONLY),
    Row("GET", "/api/openapi.json", "/api/openapi.json", None, OPEN, app_only=True),
    Row("GET", "/api/docs", "/api/docs", None, OPEN, app_only=True),
    Row("GET", "/api/docs/{name}", "/api/docs/swagger-ui.css", None, OPEN, app_only=True),
]
PREFIX = "/jobs"  # where the matrix mounts router()


def route_table(app: FastAPI, prefix: str = "") -> set[tuple[str, str]]:
    """(method, path template) of every route the app serves under `prefix` (HEAD aside)."""
    table = set()
    for route in effective_routes(app.routes):
        path = getattr(route, "path", None)
        if path is None or not path.startswith(prefix + "/"):
            continue
        methods = set(getattr(route, "methods", None) or {"*"}) - {"HEAD"}
        table |= {(m, path.removeprefix(prefix)) for m in methods}
    return table


def unlisted(app: FastAPI, prefix: str = "", *, mounted: bool = False) -> tuple[set[Any], set[Any]]:
    """Routes the app has that the matrix lacks, and rows the app lacks."""
    listed = {(r.method, r.route) for r in MATRIX if not (mounted and r.app_only)}
    table = route_table(app, prefix)
    return table - listed, listed - table


def host_app(jq: JobQueue) -> FastAPI:
    """An app of the user's own, with the routes mounted under a prefix (and its own docs)."""
    host = FastAPI()
    host.include_router(router(jq=jq), prefix=PREFIX)
    return host


def test_the_matrix_lists_every_route(app: FastAPI, jq: JobQueue) -> None:
    assert unlisted(app) == (set(), set())
    assert unlisted(host_app(jq), PREFIX, mounted=True) == (set(), set())


def test_a_route_missing_from_the_matrix_is_caught(app: FastAPI) -> None:
    async def new_route() -> dict[str, str]:
        return {}

    app.add_api_route("/api/new", new_route, methods=["GET"])
    assert unlisted(app) == ({("GET", "/api/new")}, set())


CASES = [
    (mount, row) for mount in ("create_app", "router") for row in MATRIX if not (mount == "router" and row.app_only)
]


@pytest.mark.parametrize(("mount", "row"), CASES, ids=[f"{m}: {r.id}" for m, r in CASES])
async def test_every_route_with_every_credential(
    app: FastAPI, jq: JobQueue, redis_server: str, mount: str, row: Row
) -> None:
    prefix = "" if mount == "create_app" else PREFIX
    target = app if mount == "create_app" else host_app(jq)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=target), base_url="http://testserver") as c:
        got = await _run_row(c, jq, redis_server, row, prefix)
    assert got == row.expect


async def _run_row(c: httpx.AsyncClient, jq: JobQueue, redis_server: str, row: Row, prefix: str) -> dict[str, int]:
    got: dict[str, int] = {}
    # Refusals first: nothing they send may be stored or change anything.
    order = sorted(CREDENTIALS, key=lambda name: row.expect[name] < 400)
    refused_done = False
    for name in order:
        if row.expect[name] < 400 and not refused_done:
            refused_done = True
            await assert_nothing_stored(jq, redis_server)
            assert await jq.broker.paused() == set()
        method = row.method.replace("*", "GET")
        r = await c.request(method, prefix + row.path, json=row.body, headers=CREDENTIALS[name])
        got[name] = r.status_code
        assert not any(secret in r.text for secret in SECRETS), (name, r.text[:200])
        if r.status_code == 401:
            _assert_401(r)
        elif r.status_code == 403:
            assert r.json()["error"]["code"] == "forbidden" and "www-authenticate" not in r.headers
            assert "may only" in r.json()["error"]["message"]
        elif r.status_code == 303:
            target = f"{prefix}/dashboard/jobs".replace("/", "%2F")
            assert r.headers["location"] == f"{prefix}/dashboard/login?next={target}"
    return got


def _assert_401(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "unauthorized"


# --- scoped credentials ----------------------------------------------------------------------------


async def test_a_scoped_token_outside_its_scope_is_not_a_failed_credential(
    make_jq: Callable[..., JobQueue], make_client: Callable[[FastAPI], httpx.AsyncClient]
) -> None:
    jq = make_jq(**APP_SETTINGS, JOBQUEUE_AUTH_FAILURES_PER_ADDRESS=2)
    async with make_client(create_app(jq=jq)) as c:
        await c.get("/dashboard/login")  # builds the dashboard (nothing counted either)
        before = jq.redis.requests
        for _ in range(5):
            assert (await c.get("/api/queues", headers=ENQUEUE_AUTH)).status_code == 403
            assert (await c.post("/api/jobs", json=ECHO, headers=METRICS_AUTH)).status_code == 403
            assert (await c.post("/api/workers", headers=ENQUEUE_AUTH)).status_code == 403
            assert (await c.post("/dashboard/login", data={"token": METRICS_TOKEN})).status_code == 403
        assert jq.redis.requests == before  # not one failure counted (a count is a Redis request)
        wrong = {"Authorization": "Bearer nope"}
        assert [(await c.get("/api/jobs", headers=wrong)).status_code for _ in range(3)] == [401, 401, 429]
        # The address is throttled now; valid credentials are not: in scope 200, outside it 403.
        assert (await c.get("/api/metrics", headers=METRICS_AUTH)).status_code == 200
        assert (await c.get("/api/queues", headers=ENQUEUE_AUTH)).status_code == 403
        r = await c.post("/api/jobs", json={**ECHO, "priority": "urgent"}, headers=ENQUEUE_AUTH)
        assert r.status_code == 201 and r.json()["priority"] == 9
        assert (await c.get(f"/api/jobs/{r.json()['id']}", headers=ENQUEUE_AUTH)).status_code == 200


@pytest.mark.parametrize(
    ("credential", "status"),
    [("admin", 303), ("enqueue", 403), ("metrics", 403), ("worker", 401), ("wrong", 401), ("none", 401)],
)
async def test_the_dashboard_login_takes_only_the_admin_token(
    client: httpx.AsyncClient, credential: str, status: int
) -> None:
    header = CREDENTIALS[credential].get("Authorization", "")
    r = await client.post("/dashboard/login", data={"token": header.removeprefix("Bearer ")})
    assert r.status_code == status, r.text
    assert ("set-cookie" in r.headers) == (status == 303)
    if status == 403:
        assert "That token may not open the dashboard" in r.text


def _forbidden_message(r: httpx.Response) -> str:
    assert r.status_code == 403, r.text
    message: str = r.json()["error"]["message"]
    return message


async def test_a_403_says_what_the_token_may_do(client: httpx.AsyncClient) -> None:
    assert "only enqueue" in _forbidden_message(await client.get("/api/jobs", headers=ENQUEUE_AUTH))
    assert "only read /api/metrics" in _forbidden_message(await client.get("/api/jobs/1", headers=METRICS_AUTH))


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
    names = ["JOBS_API_TOKEN", "JOBS_ENQUEUE_TOKEN", "JOBS_METRICS_TOKEN", "WORKER_SECRET", "CRON_SECRET"]
    settings = {**APP_SETTINGS, **dict.fromkeys(names, token), "JOBQUEUE_AUTH_FAILURES_PER_ADDRESS": 1000}
    app = create_app(jq=make_jq(**settings))
    async with make_client(app) as c:
        for headers in [{}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"}, {"Authorization": ""}]:
            _assert_401(await c.get("/api/jobs", headers=headers))
            _assert_401(await c.post("/api/jobs", json=ECHO, headers=headers))
            _assert_401(await c.get("/api/metrics", headers=headers))
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
