"""Alerts: dead-lettered jobs, DLQ threshold and max wait, each debounced per (kind, queue); sent as
`webhook.deliver` jobs on `_alerts` that never alert about themselves; free on an idle drain.

respx stands in for the alert receiver (routes for ALERT_URL only); engines use the redis-py
transport so respx never sees Redis traffic. WEBHOOK_ALLOW_PRIVATE_NETWORKS skips the DNS check.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import httpx
import pytest
import respx

from jobqueue.alerts import ALERT_QUEUE, alerts_hook
from jobqueue.clock import FakeClock
from jobqueue.drain import DrainReport
from jobqueue.engine import JobQueue
from jobqueue.housekeeping import housekeeping_hook
from jobqueue.registry import JobContext, Registry

ALERT_URL = "https://hooks.slack.test/services/T000/B000/XXXX"
PAYLOAD_SECRET = "tok_live_PAYLOAD_SECRET"


@pytest.fixture
def types(registry: Registry) -> None:
    @registry.job("ok")
    async def ok(payload: dict[str, Any], ctx: JobContext) -> None:
        return None

    @registry.job("boom", max_attempts=1)
    async def boom(payload: dict[str, Any], ctx: JobContext) -> None:
        raise ValueError("kaboom " + "x" * 300 + "\nTraceback (most recent call last): " + PAYLOAD_SECRET)


@pytest.fixture
def make_alerting(make_jq: Any, types: None) -> Any:
    def make(**overrides: Any) -> JobQueue:
        settings: dict[str, Any] = {"ALERT_WEBHOOK_URL": ALERT_URL, "WEBHOOK_ALLOW_PRIVATE_NETWORKS": True}
        jq: JobQueue = make_jq(transport="redis", **(settings | overrides))
        jq.drain_hooks.append(alerts_hook)
        return jq

    return make


async def alert_jobs(jq: JobQueue) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(jq.settings.database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, type, status, payload::text AS p FROM jobs WHERE queue = $1 ORDER BY id", ALERT_QUEUE
        )
    finally:
        await conn.close()
    return [{"id": r["id"], "type": r["type"], "status": r["status"], **json.loads(r["p"])} for r in rows]


async def add_failed(jq: JobQueue, queue: str, n: int) -> None:
    conn = await asyncpg.connect(jq.settings.database_url)
    try:
        await conn.execute(
            "INSERT INTO jobs (queue, type, status, attempts, finished_at) "
            "SELECT $1, 'echo', 'failed', 3, $2 FROM generate_series(1, $3)",
            queue,
            jq.clock.now(),
            n,
        )
    finally:
        await conn.close()


def spy_statements(jq: JobQueue) -> list[str]:
    names: list[str] = []
    fetch = jq.store.fetch

    async def spy(name: str, *args: Any) -> Any:
        names.append(name)
        return await fetch(name, *args)

    jq.store.fetch = spy  # type: ignore[method-assign]
    return names


async def test_dead_job_alerts_once_per_interval_across_drains_and_again_after(
    make_alerting: Any, clock: FakeClock
) -> None:
    jq: JobQueue = make_alerting(ALERT_INTERVAL_S=900)
    with respx.mock(assert_all_called=False) as mock:
        slack = mock.post(ALERT_URL).respond(200, text="ok")
        await jq.enqueue_many([{"type": "boom", "payload": {"card": PAYLOAD_SECRET}}] * 2)
        first = await jq.drain(5)
        assert first.failed == 2
        alerts = await alert_jobs(jq)
        assert len(alerts) == 1
        a = alerts[0]
        assert (a["type"], a["url"], a["event"]) == ("webhook.deliver", ALERT_URL, "jobqueue.alert")
        dead_ids = sorted(d["id"] for d in first.dead)
        assert a["data"]["kind"] == "dead" and a["data"]["queue"] == "default"
        assert (a["data"]["job_id"], a["data"]["type"], a["data"]["count"]) == (dead_ids[0], "boom", 2)
        assert a["data"]["text"].startswith(f'jobqueue: job {dead_ids[0]} (boom) on "default" failed for good')
        assert "(and 1 more in the same drain)" in a["data"]["text"]
        assert a["data"]["error"] == ("ValueError: kaboom " + "x" * 300)[:199] + "…"
        assert PAYLOAD_SECRET not in json.dumps(a) and "Traceback" not in json.dumps(a)

        # a second drain inside the interval: another job dies, the first alert goes out, no new alert
        await jq.enqueue({"type": "boom", "payload": {}})
        clock.advance(seconds=899)  # still inside the interval
        second = await jq.drain(5)
        assert (second.failed, second.completed) == (1, 1)
        assert slack.call_count == 1
        assert len(await alert_jobs(jq)) == 1

        clock.advance(seconds=1)  # the interval is over (the engine's clock, not a Redis expiry)
        await jq.enqueue({"type": "boom", "payload": {}})
        third = await jq.drain(5)
        assert third.failed == 1
        alerts = await alert_jobs(jq)
        assert len(alerts) == 2
        assert alerts[1]["data"]["count"] == 1 and "more in the same drain" not in alerts[1]["data"]["text"]


async def test_alert_job_posts_the_text_to_the_webhook(make_alerting: Any) -> None:
    jq: JobQueue = make_alerting()
    with respx.mock(assert_all_called=False) as mock:
        slack = mock.post(ALERT_URL).respond(200, text="ok")
        await jq.enqueue({"type": "boom", "payload": {"card": PAYLOAD_SECRET}})
        await jq.drain(5)
        (alert,) = await alert_jobs(jq)
        report = await jq.drain(5)
    assert report.completed == 1
    assert slack.call_count == 1
    req: httpx.Request = slack.calls.last.request
    body = json.loads(req.content)
    # body "data": the alert document itself, so a Slack-compatible receiver finds "text" on top
    assert body == alert["data"]
    assert body["text"].startswith(f'jobqueue: job {alert["data"]["job_id"]} (boom) on "default"')
    assert req.headers["webhook-id"] == f"msg_{alert['id']}"
    assert PAYLOAD_SECRET.encode() not in req.content
    assert (await jq.get(alert["id"]))["status"] == "completed"


async def test_alerts_that_dead_letter_raise_no_alert(make_alerting: Any) -> None:
    jq: JobQueue = make_alerting(ALERT_DLQ_THRESHOLD=1)
    with respx.mock(assert_all_called=False) as mock:
        slack = mock.post(ALERT_URL).respond(404, text="no_service")  # permanent: the alert job fails
        await jq.enqueue({"type": "boom", "payload": {}})
        await jq.drain(5)  # the dead job, and the DLQ of "default" reaching 1: two alerts
        assert sorted(a["data"]["kind"] for a in await alert_jobs(jq)) == ["dead", "dlq"]
        report = await jq.drain(5)
    assert report.failed == 2 and {d["queue"] for d in report.dead} == {ALERT_QUEUE}
    assert slack.call_count == 2
    alerts = await alert_jobs(jq)
    assert [a["status"] for a in alerts] == ["failed", "failed"]  # and nothing new about them
    raw = jq.redis
    assert await raw.command("EXISTS", jq.keys.alert("dead", ALERT_QUEUE)) == 0


async def test_dlq_threshold_alert_per_queue(make_alerting: Any) -> None:
    jq: JobQueue = make_alerting(ALERT_DLQ_THRESHOLD=3)
    await add_failed(jq, "reports", 3)
    await add_failed(jq, "mail", 2)  # below the threshold
    await add_failed(jq, ALERT_QUEUE, 5)  # the alerts' own DLQ never alerts
    names = spy_statements(jq)
    await jq.enqueue({"type": "ok", "payload": {}})
    report = await jq.drain(5)
    assert report.completed == 1
    assert names.count("alert_checks") == 1
    (alert,) = [a for a in await alert_jobs(jq) if a["status"] == "pending"]
    assert alert["data"] == {
        "kind": "dlq",
        "queue": "reports",
        "threshold": 3,
        "text": 'jobqueue: the dead-letter queue of "reports" holds at least 3 failed jobs (ALERT_DLQ_THRESHOLD=3)',
    }
    await add_failed(jq, "mail", 1)  # now at the threshold, but the checks ran this interval
    await jq.enqueue({"type": "ok", "payload": {}})
    await jq.drain(5)
    assert names.count("alert_checks") == 1
    assert len([a for a in await alert_jobs(jq) if a["type"] == "webhook.deliver"]) == 1


async def test_max_wait_alert_skips_paused_queues(make_alerting: Any, clock: FakeClock) -> None:
    jq: JobQueue = make_alerting(ALERT_MAX_WAIT_S=60)
    await jq.enqueue_many([{"type": "ok", "payload": {}}] * 2)
    await jq.enqueue({"type": "ok", "queue": "quiet", "payload": {}})
    await jq.set_paused("quiet", True)
    clock.advance(seconds=61)
    report = await jq.drain(5, max_jobs=1)  # one runs; the other has waited 61 s
    assert report.completed == 1
    (alert,) = await alert_jobs(jq)
    assert alert["data"] == {
        "kind": "wait",
        "queue": "default",
        "age_s": 61,
        "max_wait_s": 60,
        "text": 'jobqueue: the oldest job waiting on "default" has waited 61 s (ALERT_MAX_WAIT_S=60); '
        "is the queue being drained?",
    }


async def test_no_wait_alert_within_the_limit(make_alerting: Any, clock: FakeClock) -> None:
    jq: JobQueue = make_alerting(ALERT_MAX_WAIT_S=60)
    await jq.enqueue_many([{"type": "ok", "payload": {}}] * 2)
    clock.advance(seconds=60)
    await jq.drain(5, max_jobs=1)
    assert await alert_jobs(jq) == []


async def test_idle_drain_with_hooks_is_one_redis_request_and_no_postgres(make_alerting: Any) -> None:
    jq: JobQueue = make_alerting()
    jq.drain_hooks.append(housekeeping_hook)
    await jq.drain(1)  # builds the index (epoch marker)
    jq.redis.requests = jq.store.statements = 0
    report = await jq.drain(1)
    assert report.claimed == 0
    assert (jq.redis.requests, jq.store.statements) == (1, 0)


async def test_hook_on_a_busy_drain_costs_one_redis_request_once_the_checks_ran(make_alerting: Any) -> None:
    jq: JobQueue = make_alerting()
    busy = DrainReport(claimed=3, completed=3)
    await alerts_hook(jq, busy)  # takes the checks marker and runs the checks
    jq.redis.requests = jq.store.statements = 0
    await alerts_hook(jq, busy)
    await alerts_hook(jq, DrainReport())  # idle: nothing at all
    assert (jq.redis.requests, jq.store.statements) == (1, 0)


async def test_without_a_webhook_url_nothing_is_sent(make_jq: Any, types: None) -> None:
    jq: JobQueue = make_jq(transport="redis")
    jq.drain_hooks.append(alerts_hook)
    await jq.enqueue({"type": "boom", "payload": {}})
    assert (await jq.drain(5)).failed == 1
    assert await alert_jobs(jq) == []
