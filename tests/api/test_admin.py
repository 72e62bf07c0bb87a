"""Operator routes: the dead-letter queue, queue counts with pause/resume, and health (including
the 503s that name the dependency that is down)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue
from jobqueue.registry import Registry
from jobqueue.settings import Settings
from jobqueue.store import Store
from jobqueue.transports import RedisPyTransport
from jobqueue.web.app import create_app

from .conftest import APP_SETTINGS, AUTH, WORKER_AUTH, redis_keys, stored

ZERO = {"waiting": 0, "pending": 0, "scheduled": 0, "processing": 0, "completed": 0, "failed": 0, "cancelled": 0}
UNSET = {
    "defaults": None,
    "concurrency": None,
    "rate": None,
    "group_concurrency": None,
    "group_rate": None,
    "retention": None,
    "aging_ms": None,
}


async def _enqueue(client: httpx.AsyncClient, **job: Any) -> int:
    r = await client.post("/api/jobs", json={"payload": {}, **job}, headers=AUTH)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def _dead(client: httpx.AsyncClient, jq: JobQueue, n: int, **job: Any) -> list[int]:
    ids = [await _enqueue(client, type="boom", **job) for _ in range(n)]
    await jq.drain(5)
    assert {(await jq.get(i))["status"] for i in ids} == {"failed"}
    return ids


# --- DLQ ---------------------------------------------------------------------------------------


async def test_dlq_lists_only_failed_jobs_with_filters_and_paging(client: httpx.AsyncClient, jq: JobQueue) -> None:
    dead = await _dead(client, jq, 3)
    dead_other = await _dead(client, jq, 1, queue="other")
    await _enqueue(client, type="echo")
    r = await client.get("/api/dlq", headers=AUTH)
    assert r.status_code == 200
    assert [j["id"] for j in r.json()["jobs"]] == (dead + dead_other)[::-1]
    assert {j["status"] for j in r.json()["jobs"]} == {"failed"} and r.json()["next_cursor"] is None
    r = await client.get("/api/dlq", params={"queue": "other"}, headers=AUTH)
    assert [j["id"] for j in r.json()["jobs"]] == dead_other
    r = await client.get("/api/dlq", params={"type": "echo"}, headers=AUTH)
    assert r.json() == {"jobs": [], "next_cursor": None}

    first = (await client.get("/api/dlq", params={"limit": 2}, headers=AUTH)).json()
    second = (await client.get("/api/dlq", params={"limit": 2, "cursor": first["next_cursor"]}, headers=AUTH)).json()
    assert [j["id"] for j in first["jobs"] + second["jobs"]] == (dead + dead_other)[::-1]
    assert second["next_cursor"] is None


async def test_dlq_replay_by_ids(client: httpx.AsyncClient, jq: JobQueue) -> None:
    a, b, c = await _dead(client, jq, 3)
    alive = await _enqueue(client, type="echo")
    r = await client.post("/api/dlq/replay", json={"ids": [a, c, alive, 999_999]}, headers=AUTH)
    assert (r.status_code, r.json()) == (200, {"replayed": 2})
    statuses = {i: (await jq.get(i))["status"] for i in (a, b, c)}
    assert statuses == {a: "pending", b: "failed", c: "pending"}
    replayed = await jq.get(a)
    assert replayed["attempts"] == 0 and replayed["history"][-1]["previous_status"] == "failed"
    await jq.drain(5)  # they run (and fail) again: really back in the queue
    assert (await jq.get(a))["attempts"] == 1


async def test_dlq_replay_by_filter(client: httpx.AsyncClient, jq: JobQueue) -> None:
    default = await _dead(client, jq, 2)
    other = await _dead(client, jq, 2, queue="other")
    r = await client.post("/api/dlq/replay", json={"queue": "other"}, headers=AUTH)
    assert r.json() == {"replayed": 2}
    assert {(await jq.get(i))["status"] for i in other} == {"pending"}
    assert {(await jq.get(i))["status"] for i in default} == {"failed"}
    r = await client.post("/api/dlq/replay", json={"type": "boom", "queue": "default"}, headers=AUTH)
    assert r.json() == {"replayed": 2}
    r = await client.post("/api/dlq/replay", json={"type": "boom"}, headers=AUTH)
    assert r.json() == {"replayed": 0}


@pytest.mark.parametrize(
    ("body", "field", "phrase"),
    [
        ({}, "ids", "give ids, or a queue and/or type"),
        ({"ids": [1], "queue": "default"}, "queue", "not both"),
        ({"ids": [1], "type": "boom"}, "type", "not both"),
        ({"ids": [0]}, "ids.0", "greater than or equal to 1"),
        ({"ids": "1"}, "ids", "valid list"),
        ({"everything": True}, "everything", "Extra inputs"),
    ],
)
async def test_dlq_replay_rejects_bad_bodies(client: httpx.AsyncClient, body: Any, field: str, phrase: str) -> None:
    r = await client.post("/api/dlq/replay", json=body, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert phrase in r.json()["error"]["message"] and r.json()["error"]["field"] == field
    r = await client.post("/api/dlq/replay", content=b"{nope", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


async def test_dlq_purge_older_than(client: httpx.AsyncClient, jq: JobQueue, clock: FakeClock) -> None:
    old = await _dead(client, jq, 2)
    clock.advance(seconds=3 * 86_400)
    recent = await _dead(client, jq, 1)
    completed = await _enqueue(client, type="echo")
    await jq.drain(5)
    clock.advance(seconds=3600)
    r = await client.delete("/api/dlq", params={"older_than_days": 1}, headers=AUTH)
    assert (r.status_code, r.json()) == (200, {"purged": 2})
    assert sorted(row["id"] for row in await stored(jq)) == sorted([*recent, completed])
    for params in ({}, {"older_than_days": -1}, {"older_than_days": "x"}, {"older_than_days": 1e9}):
        r = await client.delete("/api/dlq", params=params, headers=AUTH)
        assert r.status_code == 422 and r.json()["error"]["field"] == "older_than_days", params
    r = await client.delete("/api/dlq", params={"older_than_days": 0}, headers=AUTH)
    assert r.json() == {"purged": 1}
    assert old  # (kept for the reader: the two purged above)


# --- queues ------------------------------------------------------------------------------------


async def test_queue_counts(client: httpx.AsyncClient, jq: JobQueue) -> None:
    await _enqueue(client, type="echo")
    await _enqueue(client, type="echo", delay_ms=60_000)
    await _enqueue(client, type="echo", queue="mail")
    await client.post("/api/queues/idle/pause", headers=AUTH)
    r = await client.get("/api/queues", headers=AUTH)
    assert r.status_code == 200
    assert r.json() == {
        "queues": [
            {"name": "default", "paused": False, "counts": ZERO | {"pending": 1, "scheduled": 1}, "settings": UNSET},
            {"name": "idle", "paused": True, "counts": ZERO, "settings": UNSET},
            {"name": "mail", "paused": False, "counts": ZERO | {"pending": 1}, "settings": UNSET},
        ]
    }


async def test_pause_prevents_draining_and_resume_allows_it(client: httpx.AsyncClient, jq: JobQueue) -> None:
    r = await client.post("/api/queues/default/pause", headers=AUTH)
    assert (r.status_code, r.json()) == (200, {"name": "default", "paused": True})
    job = await _enqueue(client, type="echo")
    r = await client.post("/api/workers", headers=WORKER_AUTH)
    assert r.status_code == 200 and r.json()["claimed"] == 0
    assert (await jq.get(job))["status"] == "pending"
    queues = (await client.get("/api/queues", headers=AUTH)).json()["queues"]
    assert queues == [{"name": "default", "paused": True, "counts": ZERO | {"pending": 1}, "settings": UNSET}]

    r = await client.post("/api/queues/default/resume", headers=AUTH)
    assert (r.status_code, r.json()) == (200, {"name": "default", "paused": False})
    r = await client.post("/api/workers", headers=WORKER_AUTH)
    assert r.json()["claimed"] == 1 and r.json()["completed"] == 1
    assert (await jq.get(job))["status"] == "completed"


@pytest.mark.parametrize("name", ["bad name", "a" * 101, "x:y"])
async def test_pause_rejects_bad_queue_names(client: httpx.AsyncClient, jq: JobQueue, name: str) -> None:
    r = await client.post(f"/api/queues/{name}/pause", headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["field"] == "name"
    assert await jq.broker.paused() == set()


# --- queue settings ------------------------------------------------------------------------------

LIMITS = {"concurrency": 4, "rate": {"limit": 10, "period_ms": 1000, "burst": 5}, "group_concurrency": 1}


async def _put_settings(client: httpx.AsyncClient, name: str, body: Any) -> httpx.Response:
    return await client.put(f"/api/queues/{name}", json=body, headers=AUTH)


async def test_put_settings_sets_the_fields_given_and_answers_the_queue(
    client: httpx.AsyncClient, jq: JobQueue
) -> None:
    await _enqueue(client, type="echo", queue="mail")
    await client.post("/api/queues/mail/pause", headers=AUTH)
    r = await _put_settings(client, "mail", LIMITS)
    assert r.status_code == 200, r.text
    want = UNSET | LIMITS
    assert r.json() == {"name": "mail", "paused": True, "counts": ZERO | {"pending": 1}, "settings": want}
    # A second PUT changes only what it names; null clears; the pause flag is kept.
    retention = {"completed": {"age_days": 1.5, "count": None}, "failed": None}
    r = await _put_settings(
        client, "mail", {"rate": None, "aging_ms": 30_000, "retention": {"completed": {"age_days": 1.5}}}
    )
    want = want | {"rate": None, "aging_ms": 30_000, "retention": retention}
    assert (r.status_code, r.json()["settings"], r.json()["paused"]) == (200, want, True)
    listed = (await client.get("/api/queues", headers=AUTH)).json()["queues"]
    assert [q for q in listed if q["name"] == "mail"] == [r.json()]
    assert (await jq.queue_settings("mail")).rate is None
    # The claims read the limits from Redis: they were mirrored there.
    limits = await jq.redis.command("HGETALL", jq.keys.limits("mail"))
    pairs = dict(zip(limits[::2], limits[1::2], strict=True)) if isinstance(limits, list) else limits
    assert {k: pairs[k] for k in ("c", "gc", "aging")} == {"c": "4", "gc": "1", "aging": "30000"} and "r" not in pairs


async def test_put_settings_on_a_new_queue_and_clearing_everything(client: httpx.AsyncClient) -> None:
    r = await _put_settings(client, "fresh", {"defaults": {"max_attempts": 7, "timeout_ms": 5000}})
    assert r.status_code == 200, r.text
    assert r.json()["counts"] == ZERO and r.json()["settings"]["defaults"] == {
        "max_attempts": 7,
        "backoff": None,
        "timeout_ms": 5000,
    }
    r = await _put_settings(client, "fresh", {"defaults": None})
    assert (r.status_code, r.json()) == (200, {"name": "fresh", "paused": False, "counts": ZERO, "settings": UNSET})
    assert (await _put_settings(client, "fresh", {})).json()["settings"] == UNSET  # nothing given: nothing changes


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"concurrency": -1}, "concurrency"),
        ({"concurrency": 0}, "concurrency"),
        ({"group_concurrency": "many"}, "group_concurrency"),
        ({"rate": {"limit": 10, "period_ms": 0}}, "rate.period_ms"),
        ({"rate": {"limit": -5, "period_ms": 1000}}, "rate.limit"),
        ({"group_rate": {"limit": 1}}, "group_rate.period_ms"),
        ({"rate": {"limit": 1, "period_ms": 1000, "extra": 1}}, "rate.extra"),
        ({"aging_ms": 0}, "aging_ms"),
        ({"defaults": {"max_attempts": 0}}, "defaults.max_attempts"),
        ({"retention": {"failed": {"age_days": -1}}}, "retention.failed.age_days"),
        ({"concurrency": 2, "max_concurrency": 3}, "max_concurrency"),
        ([1, 2], "body"),
    ],
)
async def test_put_settings_refuses_bad_values_naming_the_field_and_changes_nothing(
    client: httpx.AsyncClient, jq: JobQueue, body: Any, field: str
) -> None:
    assert (await _put_settings(client, "mail", {"concurrency": 3})).status_code == 200
    r = await _put_settings(client, "mail", body)
    assert r.status_code == 422, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == ("invalid_request", field)
    assert (await jq.queue_settings("mail")).model_dump(exclude_none=True) == {"concurrency": 3}


async def test_put_settings_refuses_malformed_oversized_and_misnamed(client: httpx.AsyncClient, jq: JobQueue) -> None:
    r = await client.put("/api/queues/mail", content=b"{nope", headers=AUTH)
    assert (r.status_code, r.json()["error"]["field"]) == (422, "body")
    r = await client.put("/api/queues/mail", content=b'{"concurrency": ' + b" " * 20_000 + b"1}", headers=AUTH)
    assert r.status_code == 413
    r = await _put_settings(client, "bad name", {"concurrency": 1})
    assert (r.status_code, r.json()["error"]["field"]) == (422, "name")
    assert (await jq.queue_settings("mail")).model_dump(exclude_none=True) == {}


# --- health and unavailable dependencies -------------------------------------------------------


async def test_health_ok(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok", "postgres": "ok", "redis": "ok"})


@pytest.fixture
async def broken(
    database_url: str, redis_server: str, prefix: str, registry: Registry, clock: FakeClock
) -> AsyncIterator[Callable[..., FastAPI]]:
    """Apps whose engine points one dependency at a closed port."""
    made: list[JobQueue] = []

    def make(*, postgres: bool = True, redis: bool = True) -> FastAPI:
        settings = Settings(JOBQUEUE_PREFIX=prefix, DATABASE_URL=database_url, **APP_SETTINGS)
        store = Store(database_url if postgres else "postgresql://postgres@127.0.0.1:1/nope", timeout_s=2)
        transport = RedisPyTransport.from_url(redis_server if redis else "redis://127.0.0.1:1/0", timeout_s=1)
        jq = JobQueue(store, transport, registry, settings, clock)
        made.append(jq)
        return create_app(jq=jq)

    yield make
    for jq in made:
        await jq.close()


async def test_health_503_names_redis(broken: Callable[..., FastAPI], make_client: Any) -> None:
    async with make_client(broken(redis=False)) as c:
        r = await c.get("/api/health")
    assert (r.status_code, r.json()) == (503, {"status": "unavailable", "postgres": "ok", "redis": "down"})
    assert "127.0.0.1" not in r.text


async def test_health_503_names_postgres(broken: Callable[..., FastAPI], make_client: Any) -> None:
    async with make_client(broken(postgres=False)) as c:
        r = await c.get("/api/health")
    assert (r.status_code, r.json()) == (503, {"status": "unavailable", "postgres": "down", "redis": "ok"})


async def test_health_503_when_nothing_is_configured(make_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "UPSTASH_REDIS_REST_URL", "KV_REST_API_URL"):
        monkeypatch.delenv(name, raising=False)
    app = create_app(Settings(**APP_SETTINGS))
    async with make_client(app) as c:
        r = await c.get("/api/health")
        assert (r.status_code, r.json()) == (
            503,
            {"status": "unavailable", "postgres": "not configured", "redis": "not configured"},
        )
        r = await c.get("/api/jobs", headers=AUTH)
        assert r.status_code == 503
        assert r.json() == {
            "error": {"code": "unavailable", "message": "postgres is unavailable", "dependency": "postgres"}
        }


async def test_enqueue_with_postgres_down_is_503_and_stores_nothing_in_redis(
    broken: Callable[..., FastAPI], make_client: Any, redis_server: str, prefix: str
) -> None:
    async with make_client(broken(postgres=False)) as c:
        r = await c.post("/api/jobs", json={"type": "echo", "payload": {}}, headers=AUTH)
        assert r.status_code == 503
        assert r.json() == {
            "error": {"code": "unavailable", "message": "postgres is unavailable", "dependency": "postgres"}
        }
        r = await c.post("/api/jobs/batch", json={"jobs": [{"type": "echo", "payload": {}}]}, headers=AUTH)
        assert r.status_code == 503 and r.json()["error"]["dependency"] == "postgres"
        r = await c.get("/api/workers", headers=WORKER_AUTH)
        assert r.status_code == 503 and r.json()["error"]["dependency"] == "postgres"
    assert [k for k in redis_keys(redis_server, prefix) if ":ready:" in k or k.endswith(":delayed")] == []


async def test_enqueue_with_redis_down_still_stores_the_job(
    broken: Callable[..., FastAPI], make_client: Any, make_jq: Callable[..., JobQueue]
) -> None:
    # Postgres is the truth: the row is written, and a later drain re-indexes it (reconcile).
    async with make_client(broken(redis=False)) as c:
        r = await c.post("/api/jobs", json={"type": "echo", "payload": {}}, headers=AUTH)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        r = await c.get("/api/workers", headers=WORKER_AUTH)
        assert r.status_code == 503 and r.json()["error"]["dependency"] == "redis"
    healthy = make_jq()
    await healthy.drain(5)  # the first drain finds no index epoch and rebuilds it from Postgres
    assert (await healthy.get(job_id))["status"] == "completed"
