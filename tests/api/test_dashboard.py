"""The dashboard over the real engine: login and signed sessions, redirects when logged out, every
page with data, escaping of untrusted payloads and errors, CSRF and origin checks on every action,
and the actions themselves (with their confirmation step)."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI

from jobqueue import PermanentError
from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue
from jobqueue.registry import JobContext, Registry
from jobqueue.store import Store
from jobqueue.transports import RedisPyTransport
from jobqueue.web import dashboard as _dashboard
from jobqueue.web.app import create_app
from jobqueue.web.dashboard_auth import COOKIE, SESSION_TTL_S, issue_session, verify_session
from jobqueue.web.dashboard_charts import line, nice_max, stacked_bars
from jobqueue.web.dashboard_render import CSP

from .conftest import API_TOKEN, AUTH

XSS = '<script>alert(1)</script>"><img src=x onerror=alert(1)>'
PAGES = ["/dashboard", "/dashboard/jobs", "/dashboard/jobs/1", "/dashboard/dlq", "/dashboard/schedules"]


@pytest.fixture
def registry(registry: Registry) -> Registry:
    @registry.job("xss", max_attempts=1)
    async def xss(payload: dict[str, Any], ctx: JobContext) -> None:
        raise PermanentError(f"{XSS}\nsecond line")

    @registry.job("multiline", max_attempts=1)
    async def multiline(payload: dict[str, Any], ctx: JobContext) -> None:
        raise PermanentError("ConnectionError: " + "x" * 200 + "\n  File handler.py, line 3")

    return registry


def with_dashboard(app: FastAPI) -> FastAPI:
    """The app with the dashboard's routes (once: create_app may already include them)."""
    if not any(getattr(r, "path", None) == "/dashboard" for r in app.routes):
        app.include_router(_dashboard.router)
    return app


@pytest.fixture
def dash_app(app: FastAPI) -> FastAPI:
    return with_dashboard(app)


@pytest.fixture
async def dash(dash_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=dash_app), base_url="http://testserver") as c:
        yield c


async def login(c: httpx.AsyncClient) -> str:
    """Log in and answer the session's CSRF token."""
    r = await c.post("/dashboard/login", data={"token": API_TOKEN})
    assert r.status_code == 303, r.text
    return csrf_of((await c.get("/dashboard/jobs")).text)


def csrf_of(page: str) -> str:
    found = set(re.findall(r'name="csrf" value="([^"]+)"', page))
    assert len(found) == 1, found
    return found.pop()


def metric(page: str, key: str) -> str:
    m = re.search(rf'data-metric="{re.escape(key)}">([^<]*)<', page)
    assert m, key
    return m.group(1)


def field(page: str, name: str) -> str:
    m = re.search(rf'data-field="{name}">(.*?)</', page, re.DOTALL)
    assert m, name
    return html.unescape(m.group(1))


def ids(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-job-id="(\d+)"', page)]


async def enqueue(c: httpx.AsyncClient, type: str = "echo", **job: Any) -> int:
    r = await c.post("/api/jobs", json={"type": type, "payload": job.pop("payload", {}), **job}, headers=AUTH)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def statuses(jq: JobQueue, *job_ids: int) -> list[str]:
    return [(await jq.get(i))["status"] for i in job_ids]


# --- login, sessions ---------------------------------------------------------------------------


async def test_wrong_token_is_refused_without_a_cookie(dash: httpx.AsyncClient, dash_app: FastAPI) -> None:
    assert (await dash.get("/dashboard/login")).status_code == 200
    for token in ("", "nope", API_TOKEN[:-1], API_TOKEN + "x"):
        r = await dash.post("/dashboard/login", data={"token": token})
        assert r.status_code == 401 and "That token is not valid." in r.text
        assert "set-cookie" not in r.headers
    assert (await dash.get("/dashboard")).status_code == 303
    r = await dash.post("/dashboard/login", data={"token": API_TOKEN}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "set-cookie" not in r.headers
    settings = dash_app.state.resources.settings
    dash_app.state.resources.settings = settings.model_copy(update={"api_token": None})
    r = await dash.post("/dashboard/login", data={"token": ""})
    assert r.status_code == 401 and "The dashboard is locked: JOBS_API_TOKEN is not set." in r.text


async def test_login_sets_a_signed_httponly_lax_cookie_that_is_not_the_token(dash: httpx.AsyncClient) -> None:
    r = await dash.post("/dashboard/login", data={"token": API_TOKEN, "next": "/dashboard/dlq?queue=a"})
    assert (r.status_code, r.headers["location"]) == (303, "/dashboard/dlq?queue=a")
    cookie = r.headers["set-cookie"]
    value = cookie.split(";")[0].removeprefix(f"{COOKIE}=")
    attrs = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")[1:]}
    assert attrs["httponly"] == "HttpOnly" and attrs["samesite"] == "SameSite=lax"
    assert attrs["path"] == "Path=/dashboard" and attrs["max-age"] == f"Max-Age={SESSION_TTL_S}"
    assert "secure" not in attrs  # plain http: a Secure cookie would never come back
    assert API_TOKEN not in value and API_TOKEN[:8] not in value
    assert verify_session(value, API_TOKEN) is not None
    assert (await dash.get("/dashboard")).status_code == 200
    r = await dash.post("/dashboard/login", data={"token": API_TOKEN}, headers={"X-Forwarded-Proto": "https"})
    assert "; secure" in r.headers["set-cookie"].lower()


@pytest.mark.parametrize("path", [*PAGES, "/dashboard/jobs?status=failed"])
async def test_pages_redirect_to_login_when_logged_out(dash: httpx.AsyncClient, path: str) -> None:
    r = await dash.get(path)
    want = "/dashboard/login" + ("" if path == "/dashboard" else "?" + urlencode({"next": path}))
    assert (r.status_code, r.headers["location"]) == (303, want)
    assert r.headers["content-security-policy"].startswith("default-src 'none'")


@pytest.mark.parametrize(
    ("next_url", "lands"),
    [
        ("/dashboard/jobs/7", "/dashboard/jobs/7"),
        ("https://evil.example/dashboard", "/dashboard"),
        ("//evil.example/dashboard", "/dashboard"),
        ("/api/jobs", "/dashboard"),
        ("/dashboard\\@evil.example", "/dashboard"),
    ],
)
async def test_login_follows_next_only_within_the_dashboard(dash: httpx.AsyncClient, next_url: str, lands: str) -> None:
    r = await dash.post("/dashboard/login", data={"token": API_TOKEN, "next": next_url})
    assert (r.status_code, r.headers["location"]) == (303, lands)


async def test_forged_foreign_tampered_and_expired_cookies_are_refused(dash: httpx.AsyncClient) -> None:
    good = issue_session(API_TOKEN)
    sid, expires, mac = good.split(".")
    bad = {
        "random": "abc.123.def",
        "the token itself": API_TOKEN,
        "signed by another token": issue_session("another-token-0123456789"),
        "extended expiry": f"{sid}.{int(expires) + 3600}.{mac}",
        "other session id": f"{'y' if sid[0] == 'x' else 'x'}{sid[1:]}.{expires}.{mac}",  # never the same id
        "expired": issue_session(API_TOKEN, now=time.time() - SESSION_TTL_S - 1),
    }
    for name, value in bad.items():
        r = await dash.get("/dashboard/jobs", headers={"Cookie": f"{COOKIE}={value}"})
        assert (r.status_code, r.headers.get("location")) == (303, "/dashboard/login?next=%2Fdashboard%2Fjobs"), name
    r = await dash.get("/dashboard/jobs", headers={"Cookie": f"{COOKIE}={good}"})
    assert r.status_code == 200
    assert verify_session(good, "a-rotated-token") is None  # rotating the token logs everyone out


async def test_logout_needs_csrf_and_clears_the_cookie(dash: httpx.AsyncClient) -> None:
    csrf = await login(dash)
    assert (await dash.post("/dashboard/logout")).status_code == 403
    assert (await dash.get("/dashboard/jobs")).status_code == 200
    r = await dash.post("/dashboard/logout", data={"csrf": csrf})
    assert (r.status_code, r.headers["location"]) == (303, "/dashboard/login?msg=loggedout")
    assert 'jq_dashboard=""' in r.headers["set-cookie"] and "Max-Age=0" in r.headers["set-cookie"]
    assert (await dash.get("/dashboard/jobs")).status_code == 303
    assert "You are logged out." in (await dash.get("/dashboard/login?msg=loggedout")).text


# --- pages -------------------------------------------------------------------------------------


async def test_overview_counts_rates_and_charts(dash: httpx.AsyncClient, jq: JobQueue, clock: FakeClock) -> None:
    for _ in range(2):
        await enqueue(dash)
    await enqueue(dash, "boom")
    await jq.drain(5)
    clock.advance(seconds=2 * 3600 + 60)  # those three finished in the "2 to 3 h ago" bar
    await enqueue(dash, queue="mail")
    await jq.drain(5)
    await enqueue(dash)
    await enqueue(dash, delay_ms=60_000)
    await jq.set_paused("mail", True)
    await login(dash)
    page = (await dash.get("/dashboard")).text
    totals = {k: metric(page, f"total:{k}") for k in ("pending", "scheduled", "processing", "failed")}
    assert totals == {"pending": "1", "scheduled": "1", "processing": "0", "failed": "1"}
    assert (metric(page, "total:completed_24h"), metric(page, "total:rate_24h")) == ("3", "75.0%")
    assert (metric(page, "total:failed_24h"), metric(page, "total:throughput_1h")) == ("1", "1")
    default = {k: metric(page, f"queue:default:{k}") for k in ("state", "pending", "failed", "completed_24h")}
    assert default == {"state": "running", "pending": "1", "failed": "1", "completed_24h": "2"}
    assert (metric(page, "queue:default:rate_1h"), metric(page, "queue:default:rate_24h")) == ("—", "66.7%")
    assert (metric(page, "queue:mail:state"), metric(page, "queue:mail:rate_1h")) == ("paused", "100.0%")
    assert 'action="/dashboard/queues/mail/resume"' in page and 'action="/dashboard/queues/default/pause"' in page
    # The day chart has a bar for each hour with finishes; each queue's mini chart one for its own.
    assert page.count('class="bar bar-completed"') == 4 and page.count('class="bar bar-failed"') == 2
    assert "<title>2 to 3 h ago: 2 completed, 1 failed</title>" in page
    assert "<title>the last hour: 1 completed, 0 failed</title>" in page


async def test_jobs_list_filters_search_and_paging(dash: httpx.AsyncClient, jq: JobQueue) -> None:
    a = await enqueue(dash, payload={"city": "Lisbon"}, idempotency_key="order-1")
    b = await enqueue(dash, payload={"city": "Porto"}, queue="mail", idempotency_key="order-2")
    c = await enqueue(dash, "boom")
    await jq.drain(5)
    d = await enqueue(dash, delay_ms=60_000)
    await login(dash)
    cases = {
        "": [d, c, b, a],
        "?status=&queue=&type=&search=": [d, c, b, a],  # what an untouched filter form submits
        "?status=failed": [c],
        "?status=scheduled": [d],
        "?queue=mail": [b],
        "?type=boom": [c],
        "?search=order-2": [b],
        "?search=Lisb": [a],
        f"?search={c}": [c],
        "?status=completed&search=Porto": [b],
        "?search=nowhere": [],
    }
    for query, want in cases.items():
        r = await dash.get(f"/dashboard/jobs{query}")
        assert (r.status_code, ids(r.text)) == (200, want), query
    first = (await dash.get("/dashboard/jobs?limit=3")).text
    assert ids(first) == [d, c, b]
    next_url = html.unescape(re.findall(r'href="([^"]+)" rel="next"', first)[0])
    second = (await dash.get(next_url)).text
    assert ids(second) == [a] and 'rel="next"' not in second and "← Newest" in second
    for query, phrase in (("?status=bogus", "unknown status"), ("?cursor=zzz", "cursor is malformed")):
        r = await dash.get(f"/dashboard/jobs{query}")
        assert r.status_code == 422 and phrase in r.text


async def test_job_detail_payload_result_attempts_and_buttons(dash: httpx.AsyncClient, jq: JobQueue) -> None:
    done = await enqueue(dash, payload={"city": "Lisbon", "n": [1, 2]})
    dead = await enqueue(dash, "boom")
    await jq.drain(5)
    later = await enqueue(dash, delay_ms=60_000)
    await login(dash)
    page = (await dash.get(f"/dashboard/jobs/{done}")).text
    for name in ("payload", "result"):  # pretty-printed (jsonb orders the keys its own way)
        shown = field(page, name)
        assert json.loads(shown) == {"city": "Lisbon", "n": [1, 2]} and shown == json.dumps(json.loads(shown), indent=2)
    assert field(page, "attempts") == "1 of 3" and 'data-attempt="1"' in page
    assert "/cancel" not in page and "/retry" not in page
    page = (await dash.get(f"/dashboard/jobs/{dead}")).text
    row = re.search(r'data-attempt="1">(.*?)</tr>', page, re.DOTALL)
    assert (
        row and "outcome-failed" in row.group(1) and '<td class="error-cell">PermanentError: boom</td>' in row.group(1)
    )
    assert f'action="/dashboard/jobs/{dead}/retry"' in page and "/cancel" not in page
    page = (await dash.get(f"/dashboard/jobs/{later}")).text
    run_at = (await jq.get(later))["run_at"].strftime("%Y-%m-%d %H:%M:%S UTC")
    assert field(page, "run_at") == run_at and "Not started yet." in page
    assert f'action="/dashboard/jobs/{later}/cancel"' in page and "/retry" not in page
    r = await dash.get("/dashboard/jobs/999999")
    assert r.status_code == 404 and "job 999999 not found" in r.text
    assert (await dash.get("/dashboard/jobs/0")).status_code == 422


async def test_dlq_lists_failed_jobs_with_the_first_line_of_their_error(dash: httpx.AsyncClient, jq: JobQueue) -> None:
    long = await enqueue(dash, "multiline")
    other = await enqueue(dash, "boom", queue="other")
    await enqueue(dash)
    await jq.drain(5)
    await login(dash)
    page = (await dash.get("/dashboard/dlq")).text
    assert ids(page) == [other, long] and metric(page, "dlq:total") == "2"
    line = "PermanentError: ConnectionError: " + "x" * 200  # the error's first line, shortened to 140
    assert f'<td class="error-cell" title="{line}">{line[:139]}…</td>' in page
    assert "File handler.py" not in page
    page = (await dash.get("/dashboard/dlq?queue=other")).text
    assert ids(page) == [other] and metric(page, "dlq:total") == "1"
    assert '<input type="hidden" name="queue" value="other">' in page


async def test_untrusted_values_render_as_text(dash: httpx.AsyncClient, jq: JobQueue) -> None:
    job = await enqueue(dash, "xss", payload={"html": XSS, XSS: 1}, idempotency_key=XSS)
    await jq.drain(5)
    await login(dash)
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"
    for path in (f"/dashboard/jobs/{job}", "/dashboard/jobs", "/dashboard/dlq", "/dashboard/jobs?search=<script>"):
        page = (await dash.get(path)).text
        assert "<script>alert(1)" not in page and "<img src=x" not in page, path
        assert escaped in page, path
    page = (await dash.get(f"/dashboard/jobs/{job}")).text
    assert json.loads(field(page, "payload")) == {"html": XSS, XSS: 1}


# --- actions -----------------------------------------------------------------------------------


@pytest.fixture
async def targets(dash: httpx.AsyncClient, jq: JobQueue) -> dict[str, int]:
    failed = await enqueue(dash, "boom")
    await jq.drain(5)
    await jq.schedules.put("nightly", {"type": "echo", "every_ms": 3_600_000})
    return {"failed": failed, "pending": await enqueue(dash)}


ACTIONS: list[tuple[str, dict[str, Any]]] = [
    ("/dashboard/queues/default/pause", {}),
    ("/dashboard/queues/default/settings", {"concurrency": "3"}),
    ("/dashboard/schedules/nightly/pause", {}),
    ("/dashboard/schedules/nightly/trigger", {"confirm": "yes"}),
    ("/dashboard/jobs/{pending}/cancel", {"confirm": "yes"}),
    ("/dashboard/jobs/{failed}/retry", {"confirm": "yes"}),
    ("/dashboard/dlq/replay", {"ids": "{failed}", "confirm": "yes"}),
    ("/dashboard/dlq/replay-matching", {"queue": "default", "confirm": "yes"}),
    ("/dashboard/dlq/purge", {"older_than_days": "0", "confirm": "yes"}),
]


@pytest.mark.parametrize(("path", "form"), ACTIONS, ids=[p for p, _ in ACTIONS])
async def test_actions_without_the_csrf_token_or_from_another_site_change_nothing(
    dash: httpx.AsyncClient, jq: JobQueue, targets: dict[str, int], path: str, form: dict[str, Any]
) -> None:
    path = path.format(**targets)
    form = {k: v.format(**targets) for k, v in form.items()}
    other_session = verify_session(issue_session(API_TOKEN), API_TOKEN)
    assert other_session is not None
    csrf = await login(dash)
    refused = [
        ({}, {}),
        ({"csrf": "wrong"}, {}),
        ({"csrf": csrf[:-1]}, {}),
        ({"csrf": other_session.csrf}, {}),  # valid for another session, not this one
        ({"csrf": csrf}, {"Origin": "https://evil.example"}),
        ({"csrf": csrf}, {"Origin": "null"}),
        ({"csrf": csrf}, {"Referer": "https://evil.example/page"}),
    ]
    for extra, headers in refused:
        r = await dash.post(path, data={**form, **extra}, headers=headers)
        assert r.status_code == 403, (extra, headers)
        assert "Request refused" in r.text
    assert await statuses(jq, targets["failed"], targets["pending"]) == ["failed", "pending"]
    assert await jq.broker.paused() == set()
    assert (await jq.queue_settings("default")).concurrency is None
    nightly = await jq.schedules.get("nightly")
    assert (nightly.paused, nightly.last_job_id) == (False, None)
    r = await dash.post(path, data={**form, "csrf": csrf}, headers={"Origin": "http://testserver"})
    assert r.status_code == 303, r.text


async def test_cancel_and_retry_confirm_first(dash: httpx.AsyncClient, jq: JobQueue) -> None:
    job = await enqueue(dash, delay_ms=60_000)
    csrf = await login(dash)
    r = await dash.post(f"/dashboard/jobs/{job}/cancel", data={"csrf": csrf})
    assert r.status_code == 200 and f"Cancel job #{job}?" in r.text
    assert '<input type="hidden" name="confirm" value="yes">' in r.text
    assert await statuses(jq, job) == ["scheduled"]
    r = await dash.post(f"/dashboard/jobs/{job}/cancel", data={"csrf": csrf, "confirm": "yes"})
    assert (r.status_code, r.headers["location"]) == (303, f"/dashboard/jobs/{job}?msg=cancelled")
    assert await statuses(jq, job) == ["cancelled"]
    assert "The job was cancelled." in (await dash.get(r.headers["location"])).text
    r = await dash.post(f"/dashboard/jobs/{job}/cancel", data={"csrf": csrf, "confirm": "yes"})
    assert r.status_code == 409 and "only waiting, pending or scheduled jobs can be cancelled" in r.text
    r = await dash.post(f"/dashboard/jobs/{job}/retry", data={"csrf": csrf})
    assert r.status_code == 200 and "fresh set of 3 attempt(s)" in r.text and await statuses(jq, job) == ["cancelled"]
    r = await dash.post(f"/dashboard/jobs/{job}/retry", data={"csrf": csrf, "confirm": "yes"})
    assert (r.status_code, r.headers["location"]) == (303, f"/dashboard/jobs/{job}?msg=retried")
    assert await statuses(jq, job) == ["pending"]


async def test_replay_selected_and_everything_matching(dash: httpx.AsyncClient, jq: JobQueue) -> None:
    a, b, c = [await enqueue(dash, "boom") for _ in range(3)]
    await jq.drain(5)
    others = [await enqueue(dash, "boom", queue="other") for _ in range(2)]
    await jq.drain(5)
    csrf = await login(dash)
    r = await dash.post("/dashboard/dlq/replay", data={"csrf": csrf, "ids": [c, a]})
    assert r.status_code == 200 and "Replay 2 job(s)?" in r.text and f"#{a}, #{c}." in r.text
    assert await statuses(jq, a, b, c) == ["failed"] * 3
    r = await dash.post("/dashboard/dlq/replay", data={"csrf": csrf, "ids": [c, a], "confirm": "yes"})
    assert (r.status_code, r.headers["location"]) == (303, "/dashboard/dlq?msg=replayed&n=2")
    assert await statuses(jq, a, b, c) == ["pending", "failed", "pending"]
    assert "2 job(s) queued again" in (await dash.get(r.headers["location"])).text
    r = await dash.post("/dashboard/dlq/replay", data={"csrf": csrf, "confirm": "yes"})
    assert r.headers["location"] == "/dashboard/dlq?msg=nothing"
    r = await dash.post("/dashboard/dlq/replay-matching", data={"csrf": csrf, "queue": "other", "type": ""})
    assert "Replay 2 dead-lettered job(s)?" in r.text and "queue other" in r.text
    form = {"csrf": csrf, "queue": "other", "type": "", "confirm": "yes"}
    r = await dash.post("/dashboard/dlq/replay-matching", data=form)
    assert r.headers["location"] == "/dashboard/dlq?msg=replayed&n=2"
    assert await statuses(jq, b, *others) == ["failed", "pending", "pending"]


async def test_purge_older_than(dash: httpx.AsyncClient, jq: JobQueue, clock: FakeClock) -> None:
    old = await enqueue(dash, "boom")
    await jq.drain(5)
    clock.advance(seconds=3 * 86_400)
    recent = await enqueue(dash, "boom")
    await jq.drain(5)
    csrf = await login(dash)
    r = await dash.post("/dashboard/dlq/purge", data={"csrf": csrf, "older_than_days": "2"})
    assert r.status_code == 200 and "Delete 1 dead-lettered job(s)?" in r.text
    r = await dash.post("/dashboard/dlq/purge", data={"csrf": csrf, "older_than_days": "2", "confirm": "yes"})
    assert r.headers["location"] == "/dashboard/dlq?msg=purged&n=1"
    assert [row["id"] for row in (await jq.list_jobs())[0]] == [recent]
    assert old != recent
    r = await dash.post("/dashboard/dlq/purge", data={"csrf": csrf, "older_than_days": "-1", "confirm": "yes"})
    assert r.status_code == 422 and "older_than_days" in r.text


async def test_pause_and_resume(dash: httpx.AsyncClient, jq: JobQueue) -> None:
    csrf = await login(dash)
    r = await dash.post("/dashboard/queues/default/pause", data={"csrf": csrf})
    assert (r.status_code, r.headers["location"]) == (303, "/dashboard?msg=paused&q=default")
    assert await jq.broker.paused() == {"default"}
    page = (await dash.get(r.headers["location"])).text
    assert "Queue default is paused" in page and metric(page, "queue:default:state") == "paused"
    r = await dash.post("/dashboard/queues/default/resume", data={"csrf": csrf})
    assert r.headers["location"] == "/dashboard?msg=resumed&q=default" and await jq.broker.paused() == set()
    assert (await dash.post("/dashboard/queues/a b/pause", data={"csrf": csrf})).status_code == 422


# --- the shell -----------------------------------------------------------------------------------


async def test_headers_assets_and_notices(dash: httpx.AsyncClient) -> None:
    r = await dash.get("/dashboard/login")
    assert r.headers["content-security-policy"] == CSP
    assert (r.headers["x-frame-options"], r.headers["cache-control"]) == ("DENY", "no-store")
    assert "<script>" not in r.text and " style=" not in r.text  # nothing inline: the CSP allows none
    css = await dash.get("/dashboard/static/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"] == "text/css; charset=utf-8"
    assert (await dash.get("/dashboard/static/secret.py")).status_code == 404
    assert (await dash.get("/dashboard/static/..%2F_auth.py")).status_code == 404
    page = (await dash.get("/dashboard/login?msg=paused&q=<b>x</b>")).text
    assert "Queue ? is paused" in page  # only a valid queue name goes into a notice


async def test_a_database_outage_is_a_503_page_naming_postgres(
    jq: JobQueue, redis_server: str, registry: Registry, clock: FakeClock
) -> None:
    store = Store("postgresql://postgres@127.0.0.1:1/nope", timeout_s=2)
    down = JobQueue(store, RedisPyTransport.from_url(redis_server), registry, jq.settings, clock)
    app = with_dashboard(create_app(jq=down))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
            assert (await c.post("/dashboard/login", data={"token": API_TOKEN})).status_code == 303
            for path in ("/dashboard", "/dashboard/jobs", "/dashboard/dlq"):
                r = await c.get(path)
                assert r.status_code == 503 and "postgres is unavailable" in r.text, path
                assert "127.0.0.1" not in r.text
    finally:
        await down.close()


def test_a_wired_dashboard_keeps_the_cold_import_lazy() -> None:
    lazy = [
        "jinja2",
        "jobqueue.metrics",
        "prometheus_client",
        "asyncpg",
        "httpx",
        "jobqueue.engine",
        "handlers",
        "jobqueue.builtins",
    ]
    code = (
        "import sys, api.index, jobqueue.web.dashboard as d; api.index.app.include_router(d.router); "
        f"print([m for m in {lazy!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_chart_geometry() -> None:
    values = (0, 1, 1.1, 3, 7, 10, 11, 55, 180, 501, 9000)
    assert [nice_max(v) for v in values] == [1, 1, 2, 3, 8, 10, 12, 60, 200, 600, 10000]
    chart = stacked_bars([{"ok": 3, "bad": 1}, {}], ("ok", "bad"), ["a", "b"], height=100)
    assert chart.top == 4 and [s.x for s in chart.slots] == [0, 300]
    (ok, bad), empty = chart.slots[0].bars, chart.slots[1].bars
    assert (ok.y, ok.height, bad.y, bad.height, empty) == (25, 75, 0, 25, [])
    assert line([0, 2], height=100).points == "0,100 600,0"
