"""Retry -> backoff -> failed; permanent errors; retry-after; timeouts; the dead-letter queue."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue
from jobqueue.errors import InvalidState, PermanentError, RetryAfter
from jobqueue.registry import JobContext, Registry


@pytest.fixture
def flaky(registry: Registry) -> dict[str, int]:
    calls = {"boom": 0, "perm": 0, "later": 0, "slow": 0, "until3": 0}

    @registry.job("boom", max_attempts=3)
    async def boom(payload: dict[str, Any], ctx: JobContext) -> None:
        calls["boom"] += 1
        raise ValueError(f"attempt {ctx.attempt} broke")

    @registry.job("perm", max_attempts=5)
    async def perm(payload: dict[str, Any], ctx: JobContext) -> None:
        calls["perm"] += 1
        raise PermanentError("the card was declined")

    @registry.job("later", max_attempts=5)
    async def later(payload: dict[str, Any], ctx: JobContext) -> str:
        calls["later"] += 1
        if ctx.attempt == 1:
            raise RetryAfter(42_000, "rate limited")
        return "ok"

    @registry.job("slow", max_attempts=2, timeout_ms=50)
    async def slow(payload: dict[str, Any], ctx: JobContext) -> None:
        calls["slow"] += 1
        await asyncio.sleep(5)

    @registry.job("until3", max_attempts=5)
    async def until3(payload: dict[str, Any], ctx: JobContext) -> int:
        calls["until3"] += 1
        if ctx.attempt < 3:
            raise RuntimeError("not yet")
        return ctx.attempt

    return calls


async def test_exponential_backoff_then_failed(
    make_jq: Any, flaky: dict[str, int], clock: FakeClock, transport_kind: str
) -> None:
    jq: JobQueue = make_jq()
    row, _ = await jq.enqueue(
        {"type": "boom", "payload": {}, "backoff": {"type": "exponential", "delay_ms": 1000, "max_delay_ms": 1500}}
    )
    r = await jq.drain(5)
    assert (r.claimed, r.retried) == (1, 1)
    job = await jq.get(row["id"])
    assert job["status"] == "scheduled" and job["attempts"] == 1
    assert (job["run_at"] - clock.now()).total_seconds() == 1.0  # 1000 * 2^0
    assert (await jq.drain(5)).claimed == 0  # not due yet
    clock.advance(1000)
    r = await jq.drain(5)
    assert r.retried == 1
    job = await jq.get(row["id"])
    assert (job["run_at"] - clock.now()).total_seconds() == 1.5  # 2000 capped at 1500
    clock.advance(1500)
    r = await jq.drain(5)
    assert r.failed == 1
    job = await jq.get(row["id"])
    assert job["status"] == "failed" and job["attempts"] == 3
    assert job["error"].startswith("ValueError: attempt 3 broke")
    assert [h["outcome"] for h in job["history"]] == ["retried", "retried", "failed"]
    assert all(h["error"].startswith("ValueError") for h in job["history"])
    assert flaky["boom"] == 3
    failed, _ = await jq.list_jobs(status="failed")
    assert [j["id"] for j in failed] == [row["id"]]


async def test_fixed_backoff(make_jq: Any, flaky: dict[str, int], clock: FakeClock) -> None:
    jq: JobQueue = make_jq()
    row, _ = await jq.enqueue({"type": "until3", "payload": {}, "backoff": {"type": "fixed", "delay_ms": 250}})
    await jq.drain(5)
    for _ in range(2):
        job = await jq.get(row["id"])
        assert (job["run_at"] - clock.now()).total_seconds() == 0.25
        clock.advance(250)
        await jq.drain(5)
    job = await jq.get(row["id"])
    assert job["status"] == "completed" and job["result"] == 3 and job["error"] is None
    assert [h["outcome"] for h in job["history"]] == ["retried", "retried", "completed"]


async def test_permanent_error_skips_retries(make_jq: Any, flaky: dict[str, int], transport_kind: str) -> None:
    jq: JobQueue = make_jq()
    row, _ = await jq.enqueue({"type": "perm", "payload": {}})
    r = await jq.drain(5)
    assert r.failed == 1 and r.retried == 0
    job = await jq.get(row["id"])
    assert job["status"] == "failed" and job["attempts"] == 1
    assert "card was declined" in job["error"]
    assert flaky["perm"] == 1


async def test_retry_after_sets_next_run(make_jq: Any, flaky: dict[str, int], clock: FakeClock) -> None:
    jq: JobQueue = make_jq()
    row, _ = await jq.enqueue({"type": "later", "payload": {}})
    await jq.drain(5)
    job = await jq.get(row["id"])
    assert job["status"] == "scheduled"
    assert (job["run_at"] - clock.now()).total_seconds() == 42
    clock.advance(41_999)
    assert (await jq.drain(5)).claimed == 0
    clock.advance(1)
    assert (await jq.drain(5)).completed == 1
    assert (await jq.get(row["id"]))["result"] == "ok"


async def test_timeout_counts_as_a_failed_attempt(make_jq: Any, flaky: dict[str, int], clock: FakeClock) -> None:
    jq: JobQueue = make_jq()
    row, _ = await jq.enqueue({"type": "slow", "payload": {}, "backoff": {"type": "fixed", "delay_ms": 0}})
    r = await jq.drain(5)
    assert r.retried == 1 and r.failed == 1  # delay 0: the retry runs in the same drain
    job = await jq.get(row["id"])
    assert job["status"] == "failed" and job["attempts"] == 2
    assert job["error"].startswith("TimeoutError: timed out after 50 ms")
    assert flaky["slow"] == 2


async def test_cancel_retry_and_replay(make_jq: Any, flaky: dict[str, int], clock: FakeClock) -> None:
    jq: JobQueue = make_jq()
    a, _ = await jq.enqueue({"type": "perm", "payload": {}})
    b, _ = await jq.enqueue({"type": "echo", "payload": {"x": 1}, "delay_ms": 10_000})
    cancelled = await jq.cancel(b["id"])
    assert cancelled["status"] == "cancelled"
    with pytest.raises(InvalidState):
        await jq.cancel(b["id"])
    await jq.drain(5)
    assert (await jq.get(a["id"]))["status"] == "failed"
    with pytest.raises(InvalidState):
        await jq.retry((await jq.enqueue({"type": "echo", "payload": {}}))[0]["id"])
    clock.advance(20_000)
    await jq.drain(5)
    assert (await jq.get(b["id"]))["status"] == "cancelled"  # its id was in Redis: never ran
    rerun = await jq.retry(b["id"])
    assert rerun["status"] == "pending" and rerun["attempts"] == 0
    await jq.drain(5)
    assert (await jq.get(b["id"]))["status"] == "completed"
    # replay the dead-letter queue by filter: a fresh set of attempts, history kept
    assert await jq.replay(type="perm") == 1
    await jq.drain(5)
    job = await jq.get(a["id"])
    assert job["status"] == "failed" and flaky["perm"] == 2
    outcomes = [h.get("outcome") for h in job["history"]]
    assert outcomes == ["failed", None, "failed"]  # the middle entry records the requeue
    assert await jq.replay([a["id"]]) == 1
    assert await jq.replay([a["id"]]) == 0  # no longer failed


async def test_purge_old_failed_jobs(make_jq: Any, flaky: dict[str, int], clock: FakeClock) -> None:
    jq: JobQueue = make_jq()
    _old, _ = await jq.enqueue({"type": "perm", "payload": {}})
    await jq.drain(5)
    clock.advance(seconds=3 * 86400)
    new, _ = await jq.enqueue({"type": "perm", "payload": {}})
    await jq.drain(5)
    assert await jq.purge(2) == 1
    failed, _ = await jq.list_jobs(status="failed")
    assert [j["id"] for j in failed] == [new["id"]]
