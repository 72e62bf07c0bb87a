"""Every 4xx of the enqueue routes, and for each one: nothing was stored, in Postgres or Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from jobqueue.engine import JobQueue
from jobqueue.web.app import create_app

from .conftest import APP_SETTINGS, AUTH, assert_nothing_stored

ECHO = {"type": "echo", "payload": {}}
LIMIT = 1024  # JOBQUEUE_MAX_PAYLOAD_BYTES for these tests


@pytest.fixture
def jq(make_jq: Callable[..., JobQueue]) -> JobQueue:
    return make_jq(**APP_SETTINGS, JOBQUEUE_MAX_PAYLOAD_BYTES=LIMIT)


@pytest.fixture
def app(jq: JobQueue) -> FastAPI:
    return create_app(jq=jq)


def raw(text: str) -> bytes:
    return text.encode()


ONE_JOB_CASES: list[tuple[str, Any, int, str, str]] = [
    # (id, body (dict = JSON, bytes = raw), status, field, a phrase of the message)
    ("unknown type", {"type": "nope", "payload": {}}, 422, "type", "unknown job type 'nope'"),
    ("missing type", {"payload": {}}, 422, "type", "Field required"),
    ("payload fails the model", {"type": "strict", "payload": {"n": "x"}}, 422, "payload.n", "valid integer"),
    ("payload misses a field", {"type": "strict", "payload": {}}, 422, "payload.n", "Field required"),
    ("priority 10", {**ECHO, "priority": 10}, 422, "priority", "less than or equal to 9"),
    ("callback_url not http", {**ECHO, "callback_url": "ftp://h.example/x"}, 422, "callback_url", "http or https"),
    ("callback_url no host", {**ECHO, "callback_url": "https:///x"}, 422, "callback_url", "no host"),
    ("callback_url a number", {**ECHO, "callback_url": 5}, 422, "callback_url", "valid string"),
    ("priority -1", {**ECHO, "priority": -1}, 422, "priority", "greater than or equal to 0"),
    ("max_attempts 0", {**ECHO, "max_attempts": 0}, 422, "max_attempts", "greater than or equal to 1"),
    ("max_attempts 101", {**ECHO, "max_attempts": 101}, 422, "max_attempts", "less than or equal to 100"),
    ("negative delay_ms", {**ECHO, "delay_ms": -1}, 422, "delay_ms", "greater than or equal to 0"),
    ("delay_ms with run_at", {**ECHO, "delay_ms": 5, "run_at": "2030-01-01T00:00:00Z"}, 422, "run_at", "not both"),
    ("naive run_at", {**ECHO, "run_at": "2030-01-01T00:00:00"}, 422, "run_at", "timezone"),
    ("run_at past a year", {**ECHO, "run_at": "2999-01-01T00:00:00Z"}, 422, "run_at", "within 365 days"),
    ("unknown priority name", {**ECHO, "priority": "asap"}, 422, "priority", "one of low (2), normal (5)"),
    ("priority name in capitals", {**ECHO, "priority": "HIGH"}, 422, "priority", "one of low (2)"),
    ("unknown field", {**ECHO, "bogus": 1}, 422, "bogus", "Extra inputs are not permitted"),
    ("bad backoff", {**ECHO, "backoff": {"type": "linear"}}, 422, "backoff.type", "'fixed' or 'exponential'"),
    ("payload not an object", {"type": "echo", "payload": [1, 2]}, 422, "payload", "valid dictionary"),
    ("body not an object", [ECHO], 422, "body", "must be a JSON object, got list"),
    ("malformed JSON", raw('{"type": "echo",'), 422, "body", "malformed JSON: Expecting property name"),
    ("empty body", b"", 422, "body", "malformed JSON: Expecting value"),
    ("not UTF-8", b'{"type": "\xff"}', 422, "body", "malformed JSON"),
    ("NaN", raw('{"type": "echo", "payload": {"x": NaN}}'), 422, "body", "NaN is not valid JSON"),
    ("NUL in a string", raw('{"type": "echo", "payload": {"x": "a\\u0000b"}}'), 422, "body", "NUL"),
    ("lone surrogate", raw('{"type": "echo", "payload": {"x": "\\ud800"}}'), 422, "body", "surrogate"),
    ("body over the limit", {"type": "echo", "payload": {"x": "a" * LIMIT}}, 413, "", "the limit is 1024"),
]


def _content(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


@pytest.mark.parametrize(
    ("body", "status", "field", "phrase"), [c[1:] for c in ONE_JOB_CASES], ids=[c[0] for c in ONE_JOB_CASES]
)
async def test_enqueue_rejects_and_stores_nothing(
    client: httpx.AsyncClient, jq: JobQueue, redis_server: str, body: Any, status: int, field: str, phrase: str
) -> None:
    r = await client.post("/api/jobs", content=_content(body), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err.get("field", "") == field
    assert phrase in err["message"]
    # Unparseable bodies are the request's fault (invalid_request); the rest the job's (invalid_job).
    msg = err["message"]
    request_level = status == 422 and (msg.startswith("malformed JSON") or "must be a JSON object" in msg)
    assert err["code"] == {413: "payload_too_large", 422: "invalid_request" if request_level else "invalid_job"}[status]
    await assert_nothing_stored(jq, redis_server)


async def test_credentials_are_checked_before_the_body_is_read(
    client: httpx.AsyncClient, jq: JobQueue, redis_server: str
) -> None:
    for path in ("/api/jobs", "/api/jobs/batch", "/api/dlq/replay"):
        # Over the route's own limit but within the most any API route reads (BodyLimit's cap).
        for content in (b"{not json", b"x" * (LIMIT * 900)):
            r = await client.post(path, content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == 401, (path, r.text)
        # Declared beyond anything an API route reads: 413 before anything, credentials included.
        r = await client.post(path, content=b"x" * (LIMIT * 2000), headers={"Content-Type": "application/json"})
        assert r.status_code == 413, (path, r.text)
    await assert_nothing_stored(jq, redis_server)


async def test_oversized_chunked_body_is_refused_while_streaming(
    client: httpx.AsyncClient, jq: JobQueue, redis_server: str
) -> None:
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the limit must hold while reading, and reading stops at the limit.
        for _ in range(100):
            sent.append(1)
            yield b" " * 512

    r = await client.post("/api/jobs", content=chunks(), headers=AUTH)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert len(sent) < 100
    await assert_nothing_stored(jq, redis_server)


async def test_content_length_over_the_limit_is_refused_before_reading(
    client: httpx.AsyncClient, jq: JobQueue, redis_server: str
) -> None:
    headers = {**AUTH, "Content-Length": str(LIMIT + 1)}
    r = await client.post("/api/jobs", content=b"x" * (LIMIT + 1), headers=headers)
    assert r.status_code == 413
    assert r.json()["error"]["message"] == f"request body is {LIMIT + 1} bytes; the limit is {LIMIT}"
    await assert_nothing_stored(jq, redis_server)


async def test_body_at_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    body = json.dumps({"type": "echo", "payload": {"x": ""}})
    padded = body[:-1] + " " * (LIMIT - len(body)) + "}"
    assert len(padded) == LIMIT
    r = await client.post("/api/jobs", content=padded.encode(), headers=AUTH)
    assert r.status_code == 201, r.text


BATCH_CASES: list[tuple[str, Any, int, str, str]] = [
    ("over 1000", {"jobs": [ECHO] * 1001}, 422, "jobs", "at most 1000 jobs per batch, got 1001"),
    ("bad index 1", {"jobs": [ECHO, {"type": "nope", "payload": {}}, ECHO]}, 422, "jobs.1.type", "jobs[1]"),
    ("bad payload at 2", {"jobs": [ECHO, ECHO, {"type": "strict", "payload": {}}]}, 422, "jobs.2.payload.n", "jobs[2]"),
    ("bad option at 0", {"jobs": [{**ECHO, "priority": 10}, ECHO]}, 422, "jobs.0.priority", "jobs[0]"),
    ("bad callback at 1", {"jobs": [ECHO, {**ECHO, "callback_url": "x"}]}, 422, "jobs.1.callback_url", "jobs[1]"),
    ("naive run_at at 1", {"jobs": [ECHO, {**ECHO, "run_at": "2030-01-01T00:00"}]}, 422, "jobs.1.run_at", "timezone"),
    ("item not an object", {"jobs": [ECHO, ECHO, "x"]}, 422, "jobs.2", "jobs[2] must be a JSON object"),
    ("jobs not a list", {"jobs": {"a": ECHO}}, 422, "jobs", "list of job objects"),
    ("jobs missing", {}, 422, "jobs", "list of job objects"),
    ("unknown key", {"jobs": [ECHO], "extra": 1}, 422, "extra", "unknown field 'extra'"),
    ("body a list", [ECHO], 422, "body", "must be a JSON object"),
    ("malformed JSON", raw('{"jobs": [}'), 422, "body", "malformed JSON"),
    ("body over the limit", raw('{"jobs": [' + " " * (LIMIT * 1000) + "]}"), 413, "", "the limit is 1024000"),
]


@pytest.mark.parametrize(
    ("body", "status", "field", "phrase"), [c[1:] for c in BATCH_CASES], ids=[c[0] for c in BATCH_CASES]
)
async def test_batch_rejects_all_or_nothing(
    client: httpx.AsyncClient, jq: JobQueue, redis_server: str, body: Any, status: int, field: str, phrase: str
) -> None:
    r = await client.post("/api/jobs/batch", content=_content(body), headers=AUTH)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err.get("field", "") == field
    assert phrase in err["message"]
    await assert_nothing_stored(jq, redis_server)


async def test_batch_of_exactly_1000_is_accepted(client: httpx.AsyncClient, jq: JobQueue) -> None:
    r = await client.post("/api/jobs/batch", json={"jobs": [ECHO] * 1000}, headers=AUTH)
    assert r.status_code == 201 and len(r.json()["jobs"]) == 1000
    assert len({j["id"] for j in r.json()["jobs"]}) == 1000
