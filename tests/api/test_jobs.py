"""`/api/jobs`: enqueue, idempotency, batch, get, list with paging, cancel and retry."""

from __future__ import annotations

from typing import Any

import httpx

from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue

from .conftest import AUTH, iso

ECHO_BACKOFF = {"type": "exponential", "delay_ms": 1000, "max_delay_ms": 3_600_000, "jitter": 0.0}


def expected_job(job_id: int, clock: FakeClock, **changes: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": job_id,
        "queue": "default",
        "type": "echo",
        "payload": {"hello": "world"},
        "status": "pending",
        "priority": 5,
        "attempts": 0,
        "max_attempts": 3,
        "backoff": ECHO_BACKOFF,
        "timeout_ms": 10_000,
        "idempotency_key": None,
        "result": None,
        "error": None,
        "history": [],
        "run_at": iso(clock.now()),
        "created_at": iso(clock.now()),
        "started_at": None,
        "finished_at": None,
        "schedule_id": None,
        "scheduled_for": None,
        "progress": None,
        "callback_url": None,
        "created_by": None,
        "group": None,
        "depends_on": [],
        "dependents": [],
        "on_dependency_failure": None,
    }
    job.update(changes)
    return job


async def test_enqueue_answers_201_with_the_job(client: httpx.AsyncClient, jq: JobQueue, clock: FakeClock) -> None:
    r = await client.post("/api/jobs", json={"type": "echo", "payload": {"hello": "world"}}, headers=AUTH)
    assert r.status_code == 201
    body = r.json()
    assert body == expected_job(body["id"], clock)
    row = await jq.get(body["id"])
    assert row["status"] == "pending" and row["payload"] == {"hello": "world"}


async def test_enqueue_with_every_option(client: httpx.AsyncClient, clock: FakeClock) -> None:
    req = {
        "type": "echo",
        "payload": {"hello": "world"},
        "queue": "mail",
        "priority": 9,
        "delay_ms": 60_000,
        "max_attempts": 7,
        "backoff": {"type": "fixed", "delay_ms": 250, "max_delay_ms": 1000, "jitter": 0.5},
        "timeout_ms": 1234,
        "idempotency_key": "order-1",
    }
    r = await client.post("/api/jobs", json=req, headers=AUTH)
    assert r.status_code == 201
    body = r.json()
    clock.advance(60_000)
    assert body == expected_job(
        body["id"],
        clock,
        queue="mail",
        status="scheduled",
        priority=9,
        max_attempts=7,
        backoff=req["backoff"],
        timeout_ms=1234,
        idempotency_key="order-1",
        run_at=iso(clock.now()),
        created_at=body["created_at"],
    )


async def test_idempotency_key_answers_the_existing_job(client: httpx.AsyncClient, jq: JobQueue) -> None:
    req = {"type": "echo", "payload": {"hello": "world"}, "idempotency_key": "k-1"}
    first = await client.post("/api/jobs", json=req, headers=AUTH)
    again = await client.post("/api/jobs", json={**req, "payload": {"other": 1}}, headers=AUTH)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    # The same key in another queue is another job.
    other = await client.post("/api/jobs", json={**req, "queue": "other"}, headers=AUTH)
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert len(await jq.list_jobs()) and len((await jq.list_jobs())[0]) == 2


async def test_batch_enqueues_all_in_order(client: httpx.AsyncClient, jq: JobQueue, clock: FakeClock) -> None:
    jobs = [{"type": "echo", "payload": {"i": i}, "priority": i % 10} for i in range(5)]
    r = await client.post("/api/jobs/batch", json={"jobs": jobs}, headers=AUTH)
    assert r.status_code == 201
    out = r.json()["jobs"]
    assert list(r.json()) == ["jobs"]
    assert [j["payload"] for j in out] == [{"i": i} for i in range(5)]
    assert out == [expected_job(j["id"], clock, payload={"i": i}, priority=i % 10) for i, j in enumerate(out)]
    assert sorted(row["id"] for row in (await jq.list_jobs())[0]) == sorted(j["id"] for j in out)


async def test_batch_empty_and_with_repeated_key(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/jobs/batch", json={"jobs": []}, headers=AUTH)
    assert (r.status_code, r.json()) == (201, {"jobs": []})
    job = {"type": "echo", "payload": {}, "idempotency_key": "same"}
    r = await client.post("/api/jobs/batch", json={"jobs": [job, job]}, headers=AUTH)
    assert r.status_code == 201
    a, b = r.json()["jobs"]
    assert a == b


async def test_get_job_and_404(client: httpx.AsyncClient, clock: FakeClock) -> None:
    created = (
        await client.post("/api/jobs", json={"type": "echo", "payload": {"hello": "world"}}, headers=AUTH)
    ).json()
    r = await client.get(f"/api/jobs/{created['id']}", headers=AUTH)
    assert (r.status_code, r.json()) == (200, created)
    r = await client.get("/api/jobs/999999", headers=AUTH)
    assert r.status_code == 404
    assert r.json() == {"error": {"code": "job_not_found", "message": "job 999999 not found"}}


async def test_get_after_completion_shows_result_and_history(
    client: httpx.AsyncClient, jq: JobQueue, clock: FakeClock
) -> None:
    created = (await client.post("/api/jobs", json={"type": "echo", "payload": {"x": 1}}, headers=AUTH)).json()
    await jq.drain(5)
    job = (await client.get(f"/api/jobs/{created['id']}", headers=AUTH)).json()
    assert job["status"] == "completed" and job["result"] == {"x": 1} and job["attempts"] == 1
    assert job["run_at"] is None and job["started_at"] == job["finished_at"] == iso(clock.now())
    assert [h["outcome"] for h in job["history"]] == ["completed"]


async def test_list_pages_newest_first_across_three_pages(client: httpx.AsyncClient) -> None:
    ids = []
    for i in range(7):
        r = await client.post("/api/jobs", json={"type": "echo", "payload": {"i": i}}, headers=AUTH)
        ids.append(r.json()["id"])
    pages: list[list[int]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        r = await client.get("/api/jobs", params=params, headers=AUTH)
        assert r.status_code == 200 and set(r.json()) == {"jobs", "next_cursor"}
        pages.append([j["id"] for j in r.json()["jobs"]])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and not cursor.isdigit()  # opaque, not the raw id
    assert pages == [ids[::-1][0:3], ids[::-1][3:6], ids[::-1][6:7]]


async def test_list_default_limit_and_filters(client: httpx.AsyncClient) -> None:
    await client.post("/api/jobs", json={"type": "echo", "payload": {}, "queue": "a"}, headers=AUTH)
    await client.post("/api/jobs", json={"type": "strict", "payload": {"n": 1}, "queue": "b"}, headers=AUTH)
    await client.post("/api/jobs", json={"type": "echo", "payload": {}, "queue": "b", "delay_ms": 5000}, headers=AUTH)

    async def listed(**params: Any) -> list[tuple[str, str, str]]:
        r = await client.get("/api/jobs", params=params, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["next_cursor"] is None
        return [(j["queue"], j["type"], j["status"]) for j in r.json()["jobs"]]

    assert await listed() == [("b", "echo", "scheduled"), ("b", "strict", "pending"), ("a", "echo", "pending")]
    assert await listed(queue="b") == [("b", "echo", "scheduled"), ("b", "strict", "pending")]
    assert await listed(type="echo") == [("b", "echo", "scheduled"), ("a", "echo", "pending")]
    assert await listed(status="pending", queue="b") == [("b", "strict", "pending")]
    assert await listed(status="failed") == []


async def test_list_rejects_a_tampered_cursor_and_bad_params(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await client.post("/api/jobs", json={"type": "echo", "payload": {"i": i}}, headers=AUTH)
    good = (await client.get("/api/jobs", params={"limit": 1}, headers=AUTH)).json()["next_cursor"]
    assert (await client.get("/api/jobs", params={"cursor": good}, headers=AUTH)).status_code == 200
    for bad in ["x", good + "A", good[:-1], "aWQ6LTE", "aWQ6YWJj", "bm9wZTox", good + "=="]:
        r = await client.get("/api/jobs", params={"cursor": bad}, headers=AUTH)
        assert r.status_code == 422, bad
        assert r.json()["error"]["field"] == "cursor"
    for params, field in [({"limit": 0}, "limit"), ({"limit": 201}, "limit"), ({"status": "nope"}, "status")]:
        r = await client.get("/api/jobs", params=params, headers=AUTH)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
        assert r.json()["error"]["code"] == "invalid_request"


async def test_cancel_and_retry(client: httpx.AsyncClient, jq: JobQueue) -> None:
    job = (
        await client.post("/api/jobs", json={"type": "echo", "payload": {}, "delay_ms": 60_000}, headers=AUTH)
    ).json()
    r = await client.post(f"/api/jobs/{job['id']}/cancel", headers=AUTH)
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled" and r.json()["finished_at"] is not None and r.json()["run_at"] is None

    r = await client.post(f"/api/jobs/{job['id']}/cancel", headers=AUTH)
    assert r.status_code == 409
    assert r.json() == {
        "error": {
            "code": "invalid_state",
            "message": f"job {job['id']} is cancelled; only waiting, pending or scheduled jobs can be cancelled",
        }
    }

    r = await client.post(f"/api/jobs/{job['id']}/retry", headers=AUTH)
    assert r.status_code == 200
    retried = r.json()
    assert retried["status"] == "pending" and retried["attempts"] == 0 and retried["finished_at"] is None
    assert [h.get("previous_status") for h in retried["history"]] == ["cancelled"]

    r = await client.post(f"/api/jobs/{job['id']}/retry", headers=AUTH)
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"
    assert "only failed or cancelled jobs can be retried" in r.json()["error"]["message"]

    await jq.drain(5)
    assert (await jq.get(job["id"]))["status"] == "completed"
    r = await client.post(f"/api/jobs/{job['id']}/cancel", headers=AUTH)
    assert r.status_code == 409


async def test_cancel_and_retry_unknown_and_out_of_range_ids(client: httpx.AsyncClient) -> None:
    for action in ("cancel", "retry"):
        r = await client.post(f"/api/jobs/424242/{action}", headers=AUTH)
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
        for bad in ("0", "-1", str(2**63), "abc"):
            r = await client.post(f"/api/jobs/{bad}/{action}", headers=AUTH)
            assert r.status_code == 422 and r.json()["error"]["field"] == "job_id", (bad, r.text)


async def test_retry_of_a_dead_job_via_api(client: httpx.AsyncClient, jq: JobQueue) -> None:
    job = (await client.post("/api/jobs", json={"type": "boom", "payload": {}}, headers=AUTH)).json()
    await jq.drain(5)
    failed = (await client.get(f"/api/jobs/{job['id']}", headers=AUTH)).json()
    assert failed["status"] == "failed" and failed["attempts"] == 1 and "boom" in failed["error"]
    r = await client.post(f"/api/jobs/{job['id']}/retry", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "pending" and r.json()["attempts"] == 0


async def test_priorities_by_name_are_stored_as_numbers(client: httpx.AsyncClient, jq: JobQueue) -> None:
    names = {"low": 2, "normal": 5, "high": 7, "urgent": 9}
    for name, number in names.items():
        r = await client.post("/api/jobs", json={"type": "echo", "payload": {}, "priority": name}, headers=AUTH)
        assert r.status_code == 201 and r.json()["priority"] == number, r.text
        assert (await jq.get(r.json()["id"]))["priority"] == number
    batch = [{"type": "echo", "payload": {}, "priority": p} for p in ("urgent", 0, "low", "7")]
    r = await client.post("/api/jobs/batch", json={"jobs": batch}, headers=AUTH)
    assert [j["priority"] for j in r.json()["jobs"]] == [9, 0, 2, 7]
    row, _ = await jq.enqueue({"type": "echo", "payload": {}, "priority": "high"})  # in-process too
    assert row["priority"] == 7


async def test_history_entries_keep_their_two_shapes(client: httpx.AsyncClient, jq: JobQueue) -> None:
    job = (await client.post("/api/jobs", json={"type": "boom", "payload": {}}, headers=AUTH)).json()
    await jq.drain(5)
    assert (await client.post(f"/api/jobs/{job['id']}/retry", headers=AUTH)).status_code == 200
    await jq.drain(5)
    history = (await client.get(f"/api/jobs/{job['id']}", headers=AUTH)).json()["history"]
    attempt = {"attempt", "started_at", "ended_at", "outcome", "error", "duration_ms"}
    assert [set(h) for h in history] == [attempt, {"requeued_at", "previous_status"}, attempt]
    assert [h.get("outcome") for h in history] == ["failed", None, "failed"]
    assert history[1]["previous_status"] == "failed" and history[2]["attempt"] == 1
    stored = (await jq.get(job["id"]))["history"]
    assert history == stored  # as the SQL wrote it: nothing added, nothing reformatted
