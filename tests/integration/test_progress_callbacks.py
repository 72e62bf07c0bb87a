"""Progress reports, completion callbacks and follow-up links through the real engine (Postgres and
Redis, both transports): progress is throttled to one write per job per second on the engine's
clock, visible while the job runs and kept with the outcome; a completion callback is a signed
webhook.deliver job created in the outcome's own statement, for completed, failed and cancelled
jobs; a job enqueued by a handler names the job that made it."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from standardwebhooks import Webhook

from jobqueue.clock import FakeClock
from jobqueue.engine import view
from jobqueue.errors import InvalidJob, PermanentError
from jobqueue.registry import JobContext, Registry
from tests.conftest import MakeJQ
from tests.helpers.receivers import Receiver

SECRET = "whsec_" + base64.b64encode(b"test-signing-key-32-bytes-long!!").decode()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


async def until(check: Any, timeout_s: float = 5.0) -> None:
    """Wait (polling) until `await check()` is true."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not await check():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.01)


# --- progress -------------------------------------------------------------------------------------


async def test_progress_is_throttled_visible_while_running_and_kept_with_the_outcome(
    make_jq: MakeJQ, registry: Registry, clock: FakeClock
) -> None:
    step = [asyncio.Event() for _ in range(3)]
    reached = [asyncio.Event() for _ in range(3)]

    @registry.job("long")
    async def long(payload: dict[str, Any], ctx: JobContext) -> str:
        await ctx.progress(10, "started")
        reached[0].set()
        await step[0].wait()
        for p in (20, 30, 40):  # within the same second: only the latest is written
            await ctx.progress(p, f"at {p}", {"done": p})
        reached[1].set()
        await step[1].wait()
        await ctx.progress(99.5, "finishing", {"rows": [1, 2]})  # never written to Redis: kept by finish
        return "ok"

    jq = make_jq(JOBQUEUE_HEARTBEAT_MS=20)
    writes: list[tuple[str, int, str]] = []  # (lease token, job id, report): one per job written
    real_extend = jq.broker.extend

    async def counting_extend(leases: Any, progress: Any = ()) -> None:
        progress = list(progress)
        writes.extend((token, jid, value) for token, reports, _ in progress for jid, value in reports)
        await real_extend(leases, progress)

    jq.broker.extend = counting_extend  # type: ignore[method-assign]
    row, _ = await jq.enqueue({"type": "long"})
    drain = asyncio.create_task(jq.drain(10))

    async def progress_is(percent: float) -> bool:
        p = view(await jq.view(row["id"]))["progress"]
        return p is not None and p["percent"] == percent

    await reached[0].wait()
    await until(lambda: progress_is(10))
    got = view(await jq.view(row["id"]))
    assert got["status"] == "processing"
    assert got["progress"]["message"] == "started" and got["progress"]["data"] is None
    assert len(writes) == 1

    step[0].set()
    await reached[1].wait()
    await asyncio.sleep(0.2)  # ten heartbeats: the clock has not moved, so nothing more is written
    assert len(writes) == 1
    assert view(await jq.view(row["id"]))["progress"]["percent"] == 10

    clock.advance(1000)  # a second later, on the engine's clock: the latest value goes out, once
    await until(lambda: progress_is(40))
    await asyncio.sleep(0.1)
    assert len(writes) == 2
    assert view(await jq.view(row["id"]))["progress"] == {
        "percent": 40,
        "message": "at 40",
        "data": {"done": 40},
        "updated_at": view(await jq.view(row["id"]))["progress"]["updated_at"],
    }

    step[1].set()
    await drain
    final = view(await jq.view(row["id"]))
    assert final["status"] == "completed"
    assert final["progress"]["percent"] == 99.5 and final["progress"]["data"] == {"rows": [1, 2]}
    assert len(writes) == 2  # the last report went to Postgres with the outcome, not to Redis
    assert (await jq.get(row["id"]))["progress"]["message"] == "finishing"


async def test_bad_progress_is_a_clear_error_to_the_handler(make_jq: MakeJQ, registry: Registry) -> None:
    seen: list[str] = []

    @registry.job("bad")
    async def bad(payload: dict[str, Any], ctx: JobContext) -> None:
        for args in ((101,), (-1,), (float("nan"),), ("50",), (True,), (5, "x" * 501), (5, None, {"b": b"x"})):
            try:
                await ctx.progress(*args)
            except ValueError as e:
                seen.append(str(e))
        await ctx.progress(5, None, {"big": "x" * 5000})

    jq = make_jq()
    row, _ = await jq.enqueue({"type": "bad", "max_attempts": 1})
    await jq.drain(5)
    assert len(seen) == 7
    assert "0 to 100" in seen[0] and "0 to 100" in seen[2] and "not str" in seen[3]
    assert "500" in seen[5] and "JSON" in seen[6]
    failed = await jq.get(row["id"])
    assert failed["status"] == "failed"
    assert failed["error"].startswith("InvalidProgress: progress data is") and "4096" in failed["error"]


async def test_a_retry_does_not_show_the_previous_attempts_report_as_live(
    make_jq: MakeJQ, registry: Registry, clock: FakeClock
) -> None:
    @registry.job("flaky")
    async def flaky(payload: dict[str, Any], ctx: JobContext) -> None:
        await ctx.progress(50, f"attempt {ctx.attempt}")
        await asyncio.sleep(0.1)  # long enough for a heartbeat to write it
        raise RuntimeError("again")

    jq = make_jq(JOBQUEUE_HEARTBEAT_MS=20)
    claims: list[tuple[str, list[tuple[int, str]], int]] = []
    real_extend = jq.broker.extend

    async def recording_extend(leases: Any, progress: Any = ()) -> None:
        progress = list(progress)
        claims.extend(progress)
        await real_extend(leases, progress)

    jq.broker.extend = recording_extend  # type: ignore[method-assign]
    row, _ = await jq.enqueue({"type": "flaky", "max_attempts": 2, "backoff": {"type": "fixed", "delay_ms": 0}})
    await jq.drain(5)
    after = await jq.get(row["id"])
    assert after["status"] == "failed" and after["attempts"] == 2
    assert after["progress"]["message"] == "attempt 2"
    # Each attempt wrote under its own claim's lease token (one HSET + PEXPIRE per claim and beat),
    # so a new attempt never reads the last one's copy; the copies expire with their claims' leases.
    from jobqueue.progress import live

    tokens = list(dict.fromkeys(token for token, _, _ in claims))
    assert len(tokens) == 2 and all(0 < ttl <= 45_000 for _, _, ttl in claims)
    first = (await jq.broker.progress([(row["id"], tokens[0])]))[row["id"]]
    assert live(first, 1) == {
        "percent": 50,
        "message": "attempt 1",
        "data": None,
        "updated_at": live(first, 1)["updated_at"],
    }  # type: ignore[index]
    assert live(first, 2) is None
    both = await jq.broker.progress([(row["id"], tokens[1]), (row["id"] + 1, tokens[0])])
    assert live(both[row["id"]], 2) is not None and both[row["id"] + 1] is None


# --- created_by -----------------------------------------------------------------------------------


async def test_a_follow_up_names_the_job_that_created_it(make_jq: MakeJQ, registry: Registry) -> None:
    @registry.job("parent")
    async def parent(payload: dict[str, Any], ctx: JobContext) -> int:
        child = await ctx.enqueue({"type": "echo", "payload": {"from": ctx.job_id}})
        assert child.created_by == ctx.job_id
        return child.id

    jq = make_jq()
    row, _ = await jq.enqueue({"type": "parent"})
    await jq.drain(5)
    child_id = (await jq.get(row["id"]))["result"]
    child = view(await jq.get(child_id))
    assert child["created_by"] == row["id"] and child["status"] == "completed"
    assert view(await jq.get(row["id"]))["created_by"] is None


# --- completion callbacks ---------------------------------------------------------------------------


async def test_callbacks_arrive_signed_for_completed_failed_and_cancelled_jobs(
    make_jq: MakeJQ, registry: Registry, receiver: Receiver
) -> None:
    @registry.job("boom")
    async def boom(payload: dict[str, Any], ctx: JobContext) -> None:
        await ctx.progress(70, "nearly")
        raise PermanentError("it broke")

    jq = make_jq(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, WEBHOOK_SIGNING_SECRET=SECRET)
    url = receiver.url("/done")
    ok, _ = await jq.enqueue({"type": "echo", "payload": {"n": 1}, "callback_url": url})
    bad, _ = await jq.enqueue({"type": "boom", "callback_url": url})
    later, _ = await jq.enqueue({"type": "echo", "delay_ms": 60_000, "callback_url": url})
    plain, _ = await jq.enqueue({"type": "echo"})
    assert view(ok)["callback_url"] == url and view(plain)["callback_url"] is None

    cancelled = await jq.cancel(later["id"])
    assert cancelled["status"] == "cancelled" and not any(k.startswith("cb_") for k in cancelled)
    for _ in range(5):
        await jq.drain(5)
        if len(receiver.requests) >= 3:
            break
    assert len(receiver.requests) == 3

    by_job: dict[int, dict[str, Any]] = {}
    for req in receiver.requests:
        headers = {k: req.header(k) or "" for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
        body = Webhook(SECRET).verify(req.body, headers)  # raises unless signed with our secret
        assert req.head.startswith(b"POST /done ")
        by_job[body["data"]["id"]] = body
    assert sorted(by_job) == sorted([ok["id"], bad["id"], later["id"]])
    assert {j: b["type"] for j, b in by_job.items()} == {
        ok["id"]: "job.completed",
        bad["id"]: "job.failed",
        later["id"]: "job.cancelled",
    }
    done = by_job[ok["id"]]["data"]
    expected = view(await jq.get(ok["id"]))
    assert {k: done[k] for k in ("status", "result", "payload", "attempts", "callback_url", "type", "queue")} == {
        k: expected[k] for k in ("status", "result", "payload", "attempts", "callback_url", "type", "queue")
    }
    assert set(done) == set(expected)
    for k in ("created_at", "started_at", "finished_at"):
        assert _instant(done[k]) == _instant(expected[k])
    failed = by_job[bad["id"]]["data"]
    assert failed["error"] == "PermanentError: it broke" and failed["progress"]["percent"] == 70
    assert by_job[later["id"]]["data"]["started_at"] is None

    # Each callback is a webhook.deliver job that names the job it reports on; the plain job has none.
    rows, _ = await jq.list_jobs(type="webhook.deliver")
    assert sorted(r["created_by"] for r in rows) == sorted([ok["id"], bad["id"], later["id"]])
    assert all(r["status"] == "completed" and r["max_attempts"] == 12 for r in rows)
    assert all(r["group_key"] == f"127.0.0.1:{receiver.port}" for r in rows)


def _instant(text: str | None) -> Any:
    from datetime import datetime

    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_a_callback_to_a_private_address_is_refused_at_delivery(make_jq: MakeJQ, receiver: Receiver) -> None:
    jq = make_jq()  # private networks not allowed: the default
    row, _ = await jq.enqueue({"type": "echo", "callback_url": receiver.url()})
    await jq.drain(5)
    await jq.drain(5)
    assert receiver.requests == []
    rows, _ = await jq.list_jobs(type="webhook.deliver")
    assert [(r["status"], r["created_by"]) for r in rows] == [("failed", row["id"])]
    assert "refusing to deliver to 127.0.0.1" in rows[0]["error"]


class WorkerKilled(BaseException):
    """Stands for the process dying mid-job (a BaseException: the drain stops as if it had died)."""


async def test_a_job_whose_lease_ran_out_on_its_last_attempt_gets_its_callback(
    make_jq: MakeJQ, registry: Registry, clock: FakeClock, receiver: Receiver
) -> None:
    @registry.job("killer", max_attempts=1, timeout_ms=1000)
    async def killer(payload: dict[str, Any], ctx: JobContext) -> None:
        raise WorkerKilled

    jq = make_jq(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, JOBQUEUE_LEASE_GRACE_MS=1000)
    row, _ = await jq.enqueue({"type": "killer", "callback_url": receiver.url()})
    with pytest.raises(WorkerKilled):
        await jq.drain(2)
    clock.advance(seconds=10)  # past the lease: the next claim fails the job, and makes its callback
    report = await jq.drain(5)
    assert report.failed == 1
    await jq.drain(5)
    assert (await jq.get(row["id"]))["status"] == "failed"
    assert len(receiver.requests) == 1
    body = json.loads(receiver.requests[0].body)
    assert body["type"] == "job.failed" and "lease expired" in body["data"]["error"]


async def test_jobs_without_callbacks_keep_todays_statements_and_requests(make_jq: MakeJQ) -> None:
    jq = make_jq()
    await jq.drain(1)  # the first drain indexes the empty database (epoch marker)
    await jq.enqueue_many([{"type": "echo"} for _ in range(20)])
    s0, r0 = jq.store.statements, jq.redis.requests  # type: ignore[attr-defined]
    report = await jq.drain(5)
    assert report.completed == 20
    # claim + grant + finish + ack (+ the idle claim that ends the drain); no push of callbacks
    assert jq.store.statements - s0 == 2
    assert jq.redis.requests - r0 <= 3  # type: ignore[attr-defined]


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "http or https"),
        ("example.com/hook", "http or https"),
        ("https:///nohost", "no host"),
        ("https://example.com/a b", "spaces"),
        ("https://example.com/" + "x" * 2100, "at most 2048"),
    ],
)
async def test_a_bad_callback_url_is_refused_at_enqueue(make_jq: MakeJQ, url: str, reason: str) -> None:
    jq = make_jq()
    with pytest.raises(InvalidJob) as e:
        await jq.enqueue({"type": "echo", "callback_url": url})
    assert e.value.field == "callback_url" and reason in e.value.message
    assert (await jq.list_jobs())[0] == []


async def test_callback_url_needs_webhook_deliver_in_the_registry(make_jq: MakeJQ) -> None:
    from jobqueue.builtins import echo

    jq = make_jq(Registry([echo.blueprint]))
    with pytest.raises(InvalidJob, match=r"webhook\.deliver") as e:
        await jq.enqueue({"type": "echo", "callback_url": "https://example.com/hook"})
    assert e.value.field == "callback_url"


# --- waiting (both transports) --------------------------------------------------------------------


async def test_a_waiter_in_another_engine_hears_of_the_end_through_the_done_set(
    make_jq: MakeJQ, registry: Registry
) -> None:
    go = asyncio.Event()

    @registry.job("held")
    async def held(payload: dict[str, Any], ctx: JobContext) -> str:
        await go.wait()
        return "done"

    drainer, waiter = make_jq(), make_jq()
    row, _ = await drainer.enqueue({"type": "held"})
    drain = asyncio.create_task(drainer.drain(10))
    waiting = asyncio.create_task(waiter.view(row["id"], 10))
    await asyncio.sleep(0.3)
    assert not waiting.done() and waiter.waiters.polls >= 3
    go.set()
    got = await asyncio.wait_for(waiting, 2)
    await drain
    assert (got["status"], got["result"]) == ("completed", "done")
    ended = await waiter.broker.ended_at([row["id"], row["id"] + 1000])
    assert list(ended) == [row["id"]]


async def test_a_stale_done_entry_does_not_end_a_wait(make_jq: MakeJQ) -> None:
    jq = make_jq()
    row, _ = await jq.enqueue({"type": "echo", "delay_ms": 60_000})
    await jq.cancel(row["id"])
    await jq.retry(row["id"])  # pending again, while its done entry from the cancel is still there
    jq.waiters.notify = lambda ids: None  # type: ignore[method-assign]  # only the done set speaks
    s0 = jq.store.statements
    got = await jq.view(row["id"], 0.4)
    assert got["status"] == "pending"
    assert jq.store.statements - s0 == 3  # first read, the stale entry's read, the timeout's read


async def test_a_beat_writes_a_claims_reports_in_two_commands_whatever_their_number(
    make_jq: MakeJQ, clock: FakeClock
) -> None:
    from jobqueue.progress import ProgressBoard, live, snapshot

    jq = make_jq()
    board = ProgressBoard(clock)
    for jid in (1, 2, 3):
        board.start(jid, 1, "tok-a", 30_000)
    board.start(4, 2, "tok-b", 60_000)
    for n in range(10):  # ten reports each within the same second: only the last of each is written
        for jid in (1, 2, 3, 4):
            board.report(jid, snapshot(clock, n * 10 + jid, f"job {jid}"))
    due = board.due()
    assert [(t, [j for j, _ in r], ttl) for t, r, ttl in due] == [("tok-a", [1, 2, 3], 30_000), ("tok-b", [4], 60_000)]
    cmds = sum(2 for _ in due)  # HSET + PEXPIRE per claim
    assert cmds == 4 and board.writes == 4
    r0 = jq.redis.requests  # type: ignore[attr-defined]
    await jq.broker.extend([], due)
    assert jq.redis.requests - r0 == 1  # one request for all of it
    got = await jq.broker.progress([(1, "tok-a"), (3, "tok-a"), (4, "tok-b")])
    assert [live(got[j], a)["percent"] for j, a in ((1, 1), (3, 1), (4, 2))] == [91, 93, 94]  # type: ignore[index]
    assert board.due() == []  # nothing changed since
    clock.advance(500)
    board.report(1, snapshot(clock, 99))
    assert board.due() == []  # changed, but written less than a second ago
    clock.advance(500)
    assert [(t, [j for j, _ in r]) for t, r, _ in board.due()] == [("tok-a", [1])]
    assert board.finish(1) is not None and board.finish(1) is None


async def test_callbacks_of_a_graph_the_cascade_cancels_and_the_jobs_that_run(
    make_jq: MakeJQ, registry: Registry, receiver: Receiver
) -> None:
    """A failed root: its `fail` dependents are cancelled down the graph, each with its callback
    (created in the statement that cancels it), and its `ignore` dependent runs and reports."""

    @registry.job("boom")
    async def boom(payload: dict[str, Any], ctx: JobContext) -> None:
        raise PermanentError("root broke")

    jq = make_jq(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, WEBHOOK_SIGNING_SECRET=SECRET)
    url = receiver.url("/graph")
    made = await jq.enqueue_many(
        [
            {"type": "boom"},
            {"type": "echo", "depends_on": [{"index": 0}], "callback_url": url},
            {"type": "echo", "depends_on": [{"index": 1}], "callback_url": url},
            {"type": "echo", "depends_on": [{"index": 0}], "on_dependency_failure": "ignore", "callback_url": url},
        ]
    )
    root, child, grandchild, tolerant = (r["id"] for r, _ in made)
    assert [r["status"] for r, _ in made] == ["pending", "waiting", "waiting", "waiting"]
    waiting = asyncio.create_task(jq.view(grandchild, 10))  # answered by the cascade, not the timeout
    for _ in range(6):
        await jq.drain(5)
        if len(receiver.requests) >= 3:
            break
    got = {}
    for req in receiver.requests:
        headers = {k: req.header(k) or "" for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
        body = Webhook(SECRET).verify(req.body, headers)
        got[body["data"]["id"]] = (body["type"], body["data"]["status"], body["data"]["error"])
    assert got == {
        child: ("job.cancelled", "cancelled", f"dependency {root} failed"),
        grandchild: ("job.cancelled", "cancelled", f"dependency {child} was cancelled"),
        tolerant: ("job.completed", "completed", None),
    }
    assert (await asyncio.wait_for(waiting, 2))["status"] == "cancelled"
    # Each callback names the job it reports on.
    callbacks = [r for r in (await jq.list_jobs(type="webhook.deliver"))[0]]
    assert sorted(r["created_by"] for r in callbacks) == sorted([child, grandchild, tolerant])


async def test_only_the_final_outcome_makes_a_callback_not_a_retry_or_a_slow_down(
    make_jq: MakeJQ, registry: Registry, receiver: Receiver, clock: FakeClock
) -> None:
    from jobqueue.errors import RateLimited, RetryAfter

    tries: list[int] = []

    @registry.job("flaky", max_attempts=3)
    async def flaky(payload: dict[str, Any], ctx: JobContext) -> str:
        tries.append(ctx.attempt)
        if len(tries) == 1:
            raise RetryAfter(10)
        if len(tries) == 2:
            raise RateLimited(10)
        return "third time"

    jq = make_jq(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, WEBHOOK_SIGNING_SECRET=SECRET)
    row, _ = await jq.enqueue({"type": "flaky", "callback_url": receiver.url("/final")})
    for _ in range(6):
        await jq.drain(2)
        clock.advance(ms=50)
        if receiver.requests:
            break
    await jq.drain(2)  # anything a retry might have sent would have gone by now
    assert len(tries) == 3
    assert len(receiver.requests) == 1
    body = json.loads(receiver.requests[0].body)
    assert (body["type"], body["data"]["result"]) == ("job.completed", "third time")
    callbacks = (await jq.list_jobs(type="webhook.deliver"))[0]
    assert [r["created_by"] for r in callbacks] == [row["id"]]
