"""Holes in the dashboard and in body handling (issue 8), each reproduced on the old code: a NUL in
a filter reached asyncpg (500), digit-like search terms crashed `int()` (500), `%` and `_` were
LIKE wildcards, and bodies were read to the end before a 401/403/303."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from jobqueue.engine import JobQueue
from jobqueue.validation import like_pattern, search_id

from .conftest import AUTH
from .test_dashboard import enqueue, ids, login, with_dashboard


@pytest.fixture
async def dash(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=with_dashboard(app)), base_url="http://t") as c:
        yield c


@pytest.mark.parametrize(
    "query",
    [
        "/dashboard/jobs?search=a%00b",
        "/dashboard/jobs?queue=a%00b",
        "/dashboard/jobs?type=a%00b",
        "/dashboard/dlq?queue=a%00b",
        "/dashboard/dlq?type=a%00b",
    ],
)
async def test_a_nul_in_a_dashboard_filter_is_a_422_page_not_a_500(dash: httpx.AsyncClient, query: str) -> None:
    await login(dash)
    r = await dash.get(query)
    assert r.status_code == 422 and "NUL" in r.text


@pytest.mark.parametrize("term", ["²", "¹²³", "①", "٣", "1" * 19])
async def test_digit_like_search_terms_are_not_ids_and_do_not_crash(dash: httpx.AsyncClient, term: str) -> None:
    await login(dash)
    job = await enqueue(dash, payload={"note": term})
    r = await dash.get("/dashboard/jobs", params={"search": term})
    assert r.status_code == 200, r.text
    assert ids(r.text) == [job]  # found by its payload text, and nothing crashed on int()


async def test_search_by_id_uses_ascii_digits(dash: httpx.AsyncClient) -> None:
    await login(dash)
    a, _ = await enqueue(dash), await enqueue(dash)
    assert ids((await dash.get("/dashboard/jobs", params={"search": str(a)})).text) == [a]


async def test_percent_and_underscore_in_a_search_are_literal(dash: httpx.AsyncClient) -> None:
    await login(dash)
    plain = await enqueue(dash, payload={"note": "nothing special"})
    pct = await enqueue(dash, payload={"note": "50% off"})
    under = await enqueue(dash, payload={"note": "snake_case"})
    back = await enqueue(dash, payload={"path": "a\\b"})
    assert ids((await dash.get("/dashboard/jobs", params={"search": "%"})).text) == [pct]
    assert ids((await dash.get("/dashboard/jobs", params={"search": "_"})).text) == [under]
    assert ids((await dash.get("/dashboard/jobs", params={"search": "e_c"})).text) == [under]
    # jsonb text doubles the backslash: the search for the JSON spelling finds it literally.
    assert ids((await dash.get("/dashboard/jobs", params={"search": "a\\\\b"})).text) == [back]
    everything = (await dash.get("/dashboard/jobs", params={"search": "o"})).text
    assert plain in ids(everything) and pct in ids(everything)


def test_like_pattern_and_search_id() -> None:
    assert like_pattern("50%_a\\b") == "%50\\%\\_a\\\\b%"
    assert like_pattern("") == "%%"
    assert [search_id(t) for t in ("42", "007", "²", "①", "٣", "1" * 18, "1" * 19, "4 2", "-1")] == [
        42,
        7,
        None,
        None,
        None,
        int("1" * 18),
        None,
        None,
        None,
    ]


# --- bodies are bounded before parsing, and unauthenticated ones are not read ----------------------

BIG = 50 * 1024 * 1024


class Counted:
    """A request body that counts what the app pulled from it."""

    def __init__(self, size: int = BIG) -> None:
        self.size = size
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunk = b"token=" + b"x" * (65536 - 6)
        while self.pulled < self.size:
            self.pulled += len(chunk)
            yield chunk
            chunk = b"x" * 65536


FORM = {"Content-Type": "application/x-www-form-urlencoded"}
PATHS = ["/dashboard/login", "/dashboard/queues/default/pause", "/dashboard/dlq/replay", "/api/jobs", "/api/workers"]


@pytest.mark.parametrize("path", PATHS)
async def test_a_declared_50_mb_body_is_refused_without_reading_it(dash: httpx.AsyncClient, path: str) -> None:
    body = Counted()
    r = await dash.post(path, content=body, headers={**FORM, **AUTH, "Content-Length": str(BIG)})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert body.pulled == 0


@pytest.mark.parametrize(
    ("path", "status", "most"),
    [
        ("/dashboard/login", 413, 2 * 65536),  # capped at 4 KB (one chunk arrives before the cut)
        ("/dashboard/queues/default/pause", 303, 0),  # no session: redirected, body unread
        ("/dashboard/dlq/replay", 303, 0),
        ("/api/jobs", 401, 0),  # no token: refused before the route reads
        ("/api/workers", 401, 0),
    ],
)
async def test_a_chunked_50_mb_body_without_credentials_is_never_read(
    dash: httpx.AsyncClient, jq: JobQueue, path: str, status: int, most: int
) -> None:
    body = Counted()
    r = await dash.post(path, content=body, headers=FORM)
    assert r.status_code == status
    assert body.pulled <= most
    assert await jq.broker.paused() == set()


async def test_a_chunked_body_over_the_limit_is_cut_for_a_logged_in_session(dash: httpx.AsyncClient) -> None:
    csrf = await login(dash)
    assert csrf
    body = Counted()
    r = await dash.post("/dashboard/dlq/replay", content=body, headers=FORM)
    assert r.status_code == 413
    assert body.pulled <= 64 * 1024 + 65536


async def test_a_nul_in_the_replay_matching_form_is_a_422_page(dash: httpx.AsyncClient) -> None:
    csrf = await login(dash)
    r = await dash.post("/dashboard/dlq/replay-matching", data={"csrf": csrf, "queue": "a\x00b"})
    assert r.status_code == 422
