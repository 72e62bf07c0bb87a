"""`jobqueue.client` without a server: the sans-IO endpoint descriptions (`_api`), both executors
over an httpx MockTransport (every endpoint, error mapping, paging, `wait()` against a server that
long-polls and one that ignores `wait_s`), the models' tolerance, and the import cost.
The clients against the real app are in tests/integration/test_client.py."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from jobqueue.client import APIError, AsyncClient, Client, Job, WaitTimeout, _api, _time
from jobqueue.client import models as m

Handler = Callable[[httpx.Request], httpx.Response]

CREATED = "2030-01-02T03:04:05Z"


def job(status: str = "pending", id: int = 7, **extra: Any) -> dict[str, Any]:
    """A job as the server renders it (the fields of jobqueue.models.JobView)."""
    return {
        "id": id,
        "queue": "default",
        "type": "echo",
        "payload": {"n": id},
        "status": status,
        "priority": 5,
        "attempts": 0,
        "max_attempts": 3,
        "backoff": {"type": "exponential", "delay_ms": 1000, "max_delay_ms": 3600000, "jitter": 0.0},
        "timeout_ms": 30000,
        "idempotency_key": None,
        "result": None,
        "error": None,
        "history": [],
        "run_at": None,
        "created_at": CREATED,
        "started_at": None,
        "finished_at": None,
        **extra,
    }


class Recorder:
    """A mock API: answers from a list, records what it was sent."""

    def __init__(self, *responses: httpx.Response) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.responses.pop(0)

    def body(self, i: int = 0) -> Any:
        return json.loads(self.requests[i].content)


def sync_client(api: Handler) -> Client:
    return Client("http://jobs.test/", "tok", transport=httpx.MockTransport(api))


def async_client(api: Handler) -> AsyncClient:
    return AsyncClient("http://jobs.test", "tok", transport=httpx.MockTransport(api))


async def call(kind: str, api: Handler, method: str, *args: Any, **kwargs: Any) -> Any:
    """Run one client method on the sync or the async client: the tests below run on both."""
    if kind == "sync":
        with sync_client(api) as c:
            return getattr(c, method)(*args, **kwargs)
    async with async_client(api) as ac:
        return await getattr(ac, method)(*args, **kwargs)


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class FakeTime:
    """Stands in for the client's clock and sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(round(s, 4))
        self.now += s

    async def asleep(self, s: float) -> None:
        self.sleep(s)


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    ft = FakeTime()
    monkeypatch.setattr(_time, "monotonic", ft.monotonic)
    monkeypatch.setattr(_time, "sleep", ft.sleep)
    monkeypatch.setattr(_time, "async_sleep", ft.asleep)
    return ft


# --- the sans-IO layer ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call_", "method", "path", "params", "body"),
    [
        (_api.get(7), "GET", "/api/jobs/7", {}, None),
        (_api.get("7", wait_s=40), "GET", "/api/jobs/7", {"wait_s": 25}, None),  # type: ignore[arg-type]
        (_api.get(7, wait_s=0), "GET", "/api/jobs/7", {}, None),
        (_api.cancel(7), "POST", "/api/jobs/7/cancel", {}, None),
        (_api.retry(7), "POST", "/api/jobs/7/retry", {}, None),
        (_api.list_jobs(), "GET", "/api/jobs", {}, None),
        (
            _api.list_jobs(status="failed", queue="q", type="t", schedule_id="s", limit=10, cursor="c"),
            "GET",
            "/api/jobs",
            {"status": "failed", "queue": "q", "type": "t", "schedule_id": "s", "limit": 10, "cursor": "c"},
            None,
        ),
        (_api.list_dlq(queue="q", limit=5), "GET", "/api/dlq", {"queue": "q", "limit": 5}, None),
        (_api.replay_dlq([3, 4]), "POST", "/api/dlq/replay", {}, {"ids": [3, 4]}),
        (_api.replay_dlq(queue="q"), "POST", "/api/dlq/replay", {}, {"queue": "q"}),
        (_api.replay_dlq(queue="q", type="t"), "POST", "/api/dlq/replay", {}, {"queue": "q", "type": "t"}),
        (_api.purge_dlq(30), "DELETE", "/api/dlq", {"older_than_days": 30}, None),
        (_api.list_queues(), "GET", "/api/queues", {}, None),
        (_api.pause_queue("emails"), "POST", "/api/queues/emails/pause", {}, None),
        (_api.resume_queue("a b/c"), "POST", "/api/queues/a%20b%2Fc/resume", {}, None),
        (
            _api.set_queue("a/b", concurrency=4, rate={"limit": 10, "period_ms": 1000}, aging_ms=None),
            "PUT",
            "/api/queues/a%2Fb",
            {},
            {"concurrency": 4, "rate": {"limit": 10, "period_ms": 1000}, "aging_ms": None},
        ),
        (_api.set_queue("q"), "PUT", "/api/queues/q", {}, {}),
        (_api.metrics(), "GET", "/api/metrics", {}, None),
        (_api.metrics_text(), "GET", "/api/metrics/prometheus", {}, None),
        (_api.health(), "GET", "/api/health", {}, None),
    ],
)
def test_each_endpoint_is_described_once(
    call_: _api.Call[Any], method: str, path: str, params: dict[str, Any], body: Any
) -> None:
    assert (call_.method, call_.path, call_.params, call_.body) == (method, path, params, body)


def test_enqueue_bodies_leave_out_what_was_not_given() -> None:
    run_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    one = _api.enqueue("echo", {"a": 1}, priority="high", run_at=run_at, backoff={"type": "fixed"}, depends_on=(1, 2))
    assert one.body == {
        "type": "echo",
        "payload": {"a": 1},
        "priority": "high",
        "run_at": "2030-01-02T03:04:05+00:00",
        "backoff": {"type": "fixed"},
        "depends_on": [1, 2],
    }
    batch = _api.enqueue_many([{"type": "echo"}, {"type": "echo", "payload": {"i": 1}, "depends_on": [{"index": 0}]}])
    assert batch.body == {
        "jobs": [
            {"type": "echo", "payload": {}},
            {"type": "echo", "payload": {"i": 1}, "depends_on": [{"index": 0}]},
        ]
    }
    with pytest.raises(ValueError, match=r"jobs\[1\] has no type"):
        _api.enqueue_many([{"type": "echo"}, {"payload": {}}])


def test_a_flow_is_one_batch_with_the_parent_last_depending_on_every_child() -> None:
    call = _api.flow({"type": "report", "depends_on": [7]}, [{"type": "shard", "payload": {"n": i}} for i in range(3)])
    assert (call.method, call.path) == ("POST", "/api/jobs/batch")
    assert call.body == {
        "jobs": [
            {"type": "shard", "payload": {"n": 0}},
            {"type": "shard", "payload": {"n": 1}},
            {"type": "shard", "payload": {"n": 2}},
            {"type": "report", "payload": {}, "depends_on": [7, {"index": 0}, {"index": 1}, {"index": 2}]},
        ]
    }
    with pytest.raises(ValueError, match="1 to 999 children"):
        _api.flow({"type": "report"}, [])


def test_replay_refuses_nothing_and_both() -> None:
    with pytest.raises(ValueError, match="give ids, or a queue"):
        _api.replay_dlq()
    with pytest.raises(ValueError, match="not both"):
        _api.replay_dlq([1], queue="q")
    assert _api.replay_dlq([]).body == {"ids": []}  # an explicit empty list replays nothing


def test_answers_are_parsed_into_models() -> None:
    page = _api.list_jobs().read(httpx.Response(200, json={"jobs": [job()], "next_cursor": "abc"}))
    assert isinstance(page, m.JobPage) and page.next_cursor == "abc"
    assert isinstance(page.jobs[0], Job) and page.jobs[0].created_at == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert _api.replay_dlq([1]).read(httpx.Response(200, json={"replayed": 1})) == 1
    assert _api.purge_dlq(1).read(httpx.Response(200, json={"purged": 0})) == 0
    text = "# HELP x\nx 1\n"
    assert _api.metrics_text().read(httpx.Response(200, text=text)) == text


def test_a_body_this_client_cannot_read_is_an_invalid_response() -> None:
    for resp in (
        httpx.Response(200, text="<html>hello</html>"),
        httpx.Response(200, json={"id": "seven"}),
        httpx.Response(200, json={"replayed": "all"}),
    ):
        with pytest.raises(APIError) as info:
            (_api.replay_dlq([1]) if "replayed" in resp.text else _api.get(1)).read(resp)
        assert (info.value.status_code, info.value.code) == (200, "invalid_response")


def test_error_answers() -> None:
    body = {"error": {"code": "invalid_job", "message": "payload.n: field required", "field": "payload.n"}}
    e = _api.error_from(httpx.Response(422, json=body))
    assert (e.status_code, e.code, e.message, e.field, e.dependency, e.retry_after_s) == (
        422,
        "invalid_job",
        "payload.n: field required",
        "payload.n",
        None,
        None,
    )
    assert str(e) == "422 invalid_job: payload.n: field required (field payload.n)"
    body = {"error": {"code": "unavailable", "message": "redis is unavailable", "dependency": "redis"}}
    e = _api.error_from(httpx.Response(503, json=body, headers={"Retry-After": "5"}))
    assert (e.dependency, e.retry_after_s, str(e)) == ("redis", 5.0, "503 unavailable: redis is unavailable (redis)")
    e = _api.error_from(httpx.Response(502, text="<html>Bad Gateway</html>"))
    assert (e.status_code, e.code, e.message) == (502, "http_error", "<html>Bad Gateway</html>")
    e = _api.error_from(httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert (e.code, e.message, e.retry_after_s) == ("http_error", "Too Many Requests", None)


def test_health_503_is_an_answer_unless_it_is_not_ours() -> None:
    down = {"status": "unavailable", "postgres": "ok", "redis": "down"}
    health = _api.health().read(httpx.Response(503, json=down))
    assert (health.ok, health.redis) == (False, "down")
    with pytest.raises(APIError) as info:
        _api.health().read(httpx.Response(503, text="Service Unavailable"))
    assert (info.value.status_code, info.value.code) == (503, "http_error")


def test_poll_delays_grow_to_two_seconds() -> None:
    delays = _api.poll_delays()
    assert [round(next(delays), 4) for _ in range(8)] == [0.2, 0.3, 0.45, 0.675, 1.0125, 1.5188, 2.0, 2.0]


def test_the_wait_flow_yields_calls_and_sleeps(fake_time: FakeTime) -> None:
    flow = _api.wait(7, timeout=3)
    first = next(flow)
    assert isinstance(first, _api.Call) and first.params == {"wait_s": 3} and first.hold_s == 3
    sleep = flow.send(Job.model_validate(job("pending")))  # answered at once: wait out the delay
    assert isinstance(sleep, _api.Sleep) and sleep.seconds == 0.2
    fake_time.now = 0.2
    again = flow.send(None)
    assert isinstance(again, _api.Call) and again.params == {"wait_s": 2}
    with pytest.raises(StopIteration) as done:
        flow.send(Job.model_validate(job("completed")))
    assert done.value.value.status == "completed"


# --- both executors, every endpoint --------------------------------------------------------------


async def test_enqueue_sends_type_payload_options_and_token(kind: str) -> None:
    api = Recorder(httpx.Response(201, json=job("pending")))
    run_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    got = await call(kind, api, "enqueue", "echo", {"a": 1}, priority=9, run_at=run_at, idempotency_key="k")
    assert isinstance(got, Job) and got.id == 7 and got.status == "pending"
    req = api.requests[0]
    assert (req.method, str(req.url)) == ("POST", "http://jobs.test/api/jobs")
    assert req.headers["authorization"] == "Bearer tok"
    assert api.body() == {
        "type": "echo",
        "payload": {"a": 1},
        "priority": 9,
        "run_at": "2030-01-02T03:04:05+00:00",
        "idempotency_key": "k",
    }


async def test_enqueue_many_posts_one_batch_and_returns_its_jobs(kind: str) -> None:
    api = Recorder(httpx.Response(201, json={"jobs": [job("pending", 1), job("pending", 2)]}))
    got = await call(kind, api, "enqueue_many", [{"type": "echo", "payload": {"i": 1}}, {"type": "echo"}])
    assert [j.id for j in got] == [1, 2]
    assert str(api.requests[0].url) == "http://jobs.test/api/jobs/batch"
    assert api.body() == {"jobs": [{"type": "echo", "payload": {"i": 1}}, {"type": "echo", "payload": {}}]}


QUEUE = {
    "name": "emails",
    "paused": False,
    "counts": {"pending": 1},
    "settings": {
        "defaults": {"max_attempts": 4, "backoff": None, "timeout_ms": None},
        "concurrency": 4,
        "rate": {"limit": 10, "period_ms": 1000, "burst": 5},
        "group_concurrency": None,
        "group_rate": None,
        "retention": {"completed": None, "failed": {"age_days": 30.0, "count": None}},
        "aging_ms": None,
    },
}


@pytest.mark.parametrize(
    ("method", "args", "answer", "expect"),
    [
        ("get", (7,), job("pending"), ("GET", "/api/jobs/7")),
        ("cancel", (7,), job("cancelled"), ("POST", "/api/jobs/7/cancel")),
        ("retry", (7,), job("pending"), ("POST", "/api/jobs/7/retry")),
        ("list_jobs", (), {"jobs": [job()], "next_cursor": None}, ("GET", "/api/jobs")),
        ("list_dlq", (), {"jobs": [job("failed")], "next_cursor": None}, ("GET", "/api/dlq")),
        ("replay_dlq", ([7],), {"replayed": 1}, ("POST", "/api/dlq/replay")),
        ("purge_dlq", (30,), {"purged": 4}, ("DELETE", "/api/dlq")),
        ("list_queues", (), {"queues": [{"name": "default", "paused": False, "counts": {"pending": 1}}]}, None),
        ("pause_queue", ("emails",), {"name": "emails", "paused": True}, ("POST", "/api/queues/emails/pause")),
        ("resume_queue", ("emails",), {"name": "emails", "paused": False}, ("POST", "/api/queues/emails/resume")),
        ("set_queue", ("emails",), QUEUE, ("PUT", "/api/queues/emails")),
        ("health", (), {"status": "ok", "postgres": "ok", "redis": "ok"}, ("GET", "/api/health")),
    ],
)
async def test_every_endpoint_over_both_executors(
    kind: str, method: str, args: tuple[Any, ...], answer: dict[str, Any], expect: tuple[str, str] | None
) -> None:
    api = Recorder(httpx.Response(200, json=answer))
    got = await call(kind, api, method, *args)
    if expect is not None:
        assert (api.requests[0].method, api.requests[0].url.path) == expect
    if isinstance(got, m.Model):
        assert got.model_dump(mode="json", exclude_unset=True) == answer
    elif isinstance(got, list):
        assert [g.model_dump(mode="json", exclude_unset=True) for g in got] == answer["queues"]
    else:
        assert got == next(iter(answer.values()))


METRICS = {
    "generated_at": CREATED,
    "queues": {
        "default": {
            "paused": False,
            "jobs": {"pending": 1, "scheduled": 0, "processing": 0, "failed": 0, "cancelled": 0},
            "ready": {str(p): 0 for p in range(9, -1, -1)},
            "redis": {"ready": 1, "delayed": 0, "processing": 0},
            "oldest_pending_age_s": 1.5,
            "last_hour": {
                "completed": 3,
                "failed": 1,
                "success_rate": 0.75,
                "execution_ms": {"count": 3, "mean": 2.0, "p50": 2.0, "p95": 3.0},
                "wait_ms": {"count": 3, "mean": 10.0, "p95": 20.0},
                "throughput_per_minute": [0] * 59 + [3],
            },
            "last_day": {"completed": 3, "failed": 1, "success_rate": 0.75, "attempts": {"completed": {"1": 3}}},
        }
    },
}


async def test_set_queue_sends_the_settings_given_and_answers_the_queue(kind: str) -> None:
    api = Recorder(httpx.Response(200, json=QUEUE))
    got = await call(kind, api, "set_queue", "emails", concurrency=4, group_rate=None, defaults={"max_attempts": 4})
    assert (api.requests[0].method, api.requests[0].url.path) == ("PUT", "/api/queues/emails")
    assert api.body() == {"concurrency": 4, "group_rate": None, "defaults": {"max_attempts": 4}}
    assert isinstance(got, m.QueueInfo) and got.settings.rate is not None
    assert (got.settings.concurrency, got.settings.rate.burst, got.settings.group_rate) == (4, 5, None)
    assert got.settings.retention is not None and got.settings.retention.failed is not None
    assert got.settings.retention.failed.age_days == 30.0
    refused = Recorder(
        httpx.Response(422, json={"error": {"code": "invalid_request", "message": "bad", "field": "rate.period_ms"}})
    )
    with pytest.raises(APIError) as e:
        await call(kind, refused, "set_queue", "emails", rate={"limit": 1, "period_ms": 0})
    assert (e.value.status_code, e.value.field) == (422, "rate.period_ms")


def test_set_queue_refuses_an_unknown_setting_before_any_request() -> None:
    api = Recorder()
    with sync_client(api) as c, pytest.raises(TypeError, match="unknown setting 'max_concurrency'"):
        c.set_queue("q", max_concurrency=3)
    assert api.requests == []


def test_a_queue_from_a_server_without_settings_has_none_set() -> None:
    old = m.QueueInfo.model_validate({"name": "q", "paused": False, "counts": {}})
    assert old.settings.concurrency is None and old.settings.rate is None
    metrics = m.Metrics.model_validate(METRICS)
    assert metrics.queues["default"].flow.running == 0 and metrics.queues["default"].settings.rate is None


FLOW = {
    "running": 2,
    "parked": 3,
    "top_parked": [
        {"scope": "t:0a1b2c3d:g:0123456789ab", "type": "webhook.deliver", "group_hash": "0123456789ab", "parked": 3}
    ],
}


async def test_metrics_json_and_text(kind: str) -> None:
    api = Recorder(httpx.Response(200, json=METRICS), httpx.Response(200, text="jobqueue_jobs 1\n"))
    got = await call(kind, api, "metrics")
    assert isinstance(got, m.Metrics)
    assert got.queues["default"].last_hour.success_rate == 0.75
    assert got.model_dump(mode="json", exclude_unset=True) == {**METRICS, "generated_at": "2030-01-02T03:04:05Z"}
    flowing = {**METRICS["queues"]["default"], "settings": QUEUE["settings"], "flow": FLOW}
    newer = Recorder(httpx.Response(200, json={**METRICS, "queues": {"default": flowing}}))
    q = (await call(kind, newer, "metrics")).queues["default"]
    assert (q.flow.running, q.flow.parked, q.settings.concurrency) == (2, 3, 4)
    assert q.flow.top_parked[0].type == "webhook.deliver" and q.flow.top_parked[0].parked == 3
    assert await call(kind, api, "metrics_text") == "jobqueue_jobs 1\n"


async def test_error_answers_raise_api_error(kind: str) -> None:
    body = {"error": {"code": "invalid_state", "message": "job 7 is completed"}}
    api = Recorder(httpx.Response(409, json=body))
    with pytest.raises(APIError) as info:
        await call(kind, api, "cancel", 7)
    assert (info.value.status_code, info.value.code, info.value.message) == (409, "invalid_state", "job 7 is completed")


async def test_transport_failure_is_a_connection_error(kind: str) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(APIError) as info:
        await call(kind, refuse, "get", 1)
    assert (info.value.status_code, info.value.code) == (None, "connection_error")
    assert "ConnectError: connection refused" in info.value.message


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBQUEUE_URL", "https://app.example/")
    monkeypatch.setenv("JOBS_API_TOKEN", "env-token")
    api = Recorder(httpx.Response(200, json=job("pending")))
    with Client(transport=httpx.MockTransport(api)) as c:
        assert c.base_url == "https://app.example"
        c.get(7)
    assert str(api.requests[0].url) == "https://app.example/api/jobs/7"
    assert api.requests[0].headers["authorization"] == "Bearer env-token"
    monkeypatch.delenv("JOBQUEUE_URL")
    with pytest.raises(ValueError, match="JOBQUEUE_URL"):
        AsyncClient()
    monkeypatch.setenv("JOBQUEUE_URL", "https://app.example/")
    monkeypatch.delenv("JOBS_API_TOKEN")
    with pytest.raises(ValueError, match="JOBS_API_TOKEN"):
        Client()


# --- paging ------------------------------------------------------------------------------------


class PagedAPI:
    """Serves `total` jobs newest first, `limit` per page, with an opaque cursor."""

    def __init__(self, total: int) -> None:
        self.ids = list(range(total, 0, -1))
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        limit = int(request.url.params.get("limit", 50))
        start = int(request.url.params["cursor"][1:]) if "cursor" in request.url.params else 0
        chunk = self.ids[start : start + limit]
        more = start + limit < len(self.ids)
        return httpx.Response(
            200, json={"jobs": [job(id=i) for i in chunk], "next_cursor": f"c{start + limit}" if more else None}
        )


def test_iter_jobs_follows_the_cursor_lazily() -> None:
    api = PagedAPI(5)
    with sync_client(api) as c:
        it = c.iter_jobs(status="pending", limit=2)
        assert api.requests == []  # nothing is fetched before the first item is asked for
        assert next(it).id == 5
        assert len(api.requests) == 1
        assert [j.id for j in it] == [4, 3, 2, 1]
    assert [dict(r.url.params) for r in api.requests] == [
        {"status": "pending", "limit": "2"},
        {"status": "pending", "limit": "2", "cursor": "c2"},
        {"status": "pending", "limit": "2", "cursor": "c4"},
    ]


async def test_async_iter_dlq_follows_the_cursor() -> None:
    api = PagedAPI(3)
    async with async_client(api) as c:
        assert [j.id async for j in c.iter_dlq(queue="q", limit=2)] == [3, 2, 1]
    assert [r.url.path for r in api.requests] == ["/api/dlq", "/api/dlq"]
    assert api.requests[1].url.params["cursor"] == "c2"


def test_a_server_repeating_its_cursor_does_not_page_forever() -> None:
    stuck = {"jobs": [job()], "next_cursor": "same"}
    api = Recorder(*(httpx.Response(200, json=stuck) for _ in range(3)))
    with sync_client(api) as c, pytest.raises(APIError, match="answered the cursor it was given"):
        list(c.iter_jobs())
    assert len(api.requests) == 2


# --- wait: against a server that long-polls and one that ignores wait_s ----------------------------


class JobServer:
    """One job that becomes `final` at `done_at` (fake seconds). With `long_poll` the server holds
    `GET ?wait_s=N` until the job is terminal or N seconds have passed, as DESIGN.md section 8
    says; without it, it ignores the parameter and answers at once (today's server)."""

    def __init__(self, fake: FakeTime, done_at: float | None, *, long_poll: bool, final: str = "completed") -> None:
        self.fake, self.done_at, self.long_poll, self.final = fake, done_at, long_poll, final
        self.asked: list[tuple[float, int | None]] = []  # (when, wait_s) of each request
        self.timeouts: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        wait_s = int(request.url.params["wait_s"]) if "wait_s" in request.url.params else None
        self.asked.append((round(self.fake.now, 4), wait_s))
        self.timeouts.append(request.extensions["timeout"]["read"])
        if self.long_poll and wait_s:
            until = self.fake.now + wait_s
            self.fake.now = until if self.done_at is None else min(until, max(self.done_at, self.fake.now))
        done = self.done_at is not None and self.fake.now >= self.done_at
        return httpx.Response(200, json=job(self.final if done else "processing"))


async def test_wait_against_a_long_polling_server_asks_again_at_once(kind: str, fake_time: FakeTime) -> None:
    server = JobServer(fake_time, done_at=40.0, long_poll=True)
    done = await call(kind, server, "wait", 7, timeout=60)
    assert (done.status, fake_time.now) == ("completed", 40.0)
    assert server.asked == [(0.0, 25), (25.0, 25)]  # held 25 s, then answered at completion
    assert fake_time.sleeps == []
    assert server.timeouts == [35.0, 35.0]  # the client's 10 s plus what the server may hold


async def test_wait_against_a_server_that_ignores_wait_s_polls_with_backoff(kind: str, fake_time: FakeTime) -> None:
    server = JobServer(fake_time, done_at=5.0, long_poll=False, final="failed")
    done = await call(kind, server, "wait", 7, timeout=60)
    assert done.status == "failed"
    assert fake_time.sleeps == [0.2, 0.3, 0.45, 0.675, 1.0125, 1.5188, 2.0]
    assert [w for _, w in server.asked] == [25] * 8  # asked to hold each time; answered at once


async def test_wait_times_out_at_the_deadline_on_a_long_polling_server(kind: str, fake_time: FakeTime) -> None:
    server = JobServer(fake_time, done_at=None, long_poll=True)
    with pytest.raises(WaitTimeout) as info:
        await call(kind, server, "wait", 7, timeout=30)
    assert server.asked == [(0.0, 25), (25.0, 5)]  # never held past the deadline
    assert (fake_time.now, info.value.job.status) == (30.0, "processing")


async def test_wait_raises_a_timeout_error_with_the_last_state(kind: str, fake_time: FakeTime) -> None:
    server = JobServer(fake_time, done_at=None, long_poll=False)
    with pytest.raises(WaitTimeout) as info:
        await call(kind, server, "wait", 7, timeout=1.0)
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value.job, Job) and info.value.job.status == "processing"
    assert str(info.value) == "job 7 is still processing after 1 s"
    # the last sleep is cut to the deadline, then one final look; wait_s only while a second is left
    assert fake_time.sleeps == [0.2, 0.3, 0.45, 0.05]
    assert [w for _, w in server.asked] == [1, None, None, None, None]


async def test_wait_without_long_polling_sends_no_wait_s(kind: str, fake_time: FakeTime) -> None:
    server = JobServer(fake_time, done_at=0.3, long_poll=True)
    assert (await call(kind, server, "wait", 7, timeout=10, long_poll_s=0)).status == "completed"
    assert server.asked == [(0.0, None), (0.2, None), (0.5, None)]


@pytest.mark.parametrize("terminal", ["completed", "failed", "cancelled"])
async def test_wait_returns_any_terminal_state_at_once(kind: str, fake_time: FakeTime, terminal: str) -> None:
    api = Recorder(httpx.Response(200, json=job(terminal)))
    assert (await call(kind, api, "wait", 7)).status == terminal
    assert fake_time.sleeps == []


async def test_wait_passes_errors_through(kind: str, fake_time: FakeTime) -> None:
    api = Recorder(httpx.Response(404, json={"error": {"code": "job_not_found", "message": "job 7 not found"}}))
    with pytest.raises(APIError) as info:
        await call(kind, api, "wait", 7)
    assert info.value.code == "job_not_found"


# --- the models --------------------------------------------------------------------------------


def test_models_keep_fields_a_newer_server_adds() -> None:
    newer = job(
        "waiting",
        group="tenant-1",
        depends_on=[3],
        progress={"percent": 50, "message": "half", "data": None, "updated_at": CREATED},
        schedule_id="nightly",
        something_new={"x": 1},
    )
    got = Job.model_validate(newer)
    assert (got.status, got.terminal, got.group, got.depends_on) == ("waiting", False, "tenant-1", [3])
    assert got.progress is not None and got.progress.percent == 50
    assert got.model_extra == {"something_new": {"x": 1}}
    assert got.model_dump(mode="json", exclude_unset=True) == newer
    queue = m.QueueInfo.model_validate({"name": "q", "paused": False, "counts": {}, "concurrency": 4})
    assert queue.model_extra == {"concurrency": 4}


def test_models_answer_mapping_access_as_the_dict_client_did() -> None:
    got = Job.model_validate(job("completed", result={"ok": True}, later=1))
    assert (got["id"], got["status"], got["result"], got["created_at"]) == (7, "completed", {"ok": True}, CREATED)
    assert (got["later"], got.get("nope"), got.get("error", "x")) == (1, None, None)
    with pytest.raises(KeyError):
        got["nope"]


def test_client_models_require_no_field_the_server_does_not_send() -> None:
    """Drift guard: every field a client model requires is in the server's model."""
    from jobqueue.models import JobView, QueueSettings, Rate
    from jobqueue.web import routes_admin, routes_metrics

    pairs = [
        (m.Job, JobView),
        (m.QueueInfo, routes_admin.QueueView),
        (m.QueueState, routes_admin.QueueState),
        (m.Health, routes_admin.Health),
        (m.Metrics, routes_metrics.Metrics),
        (m.QueueMetrics, routes_metrics.QueueMetrics),
        (m.LastHour, routes_metrics.LastHour),
        (m.LastDay, routes_metrics.LastDay),
        (m.QueueSettings, QueueSettings),
        (m.Rate, Rate),
        (m.FlowStats, routes_metrics.FlowStats),
        (m.ParkedScope, routes_metrics.ParkedScope),
    ]
    for client_model, server_model in pairs:
        required = {n for n, f in client_model.model_fields.items() if f.is_required()}
        assert required <= set(server_model.model_fields), client_model.__name__


def test_a_job_as_the_server_renders_it_parses() -> None:
    from jobqueue.models import JobView

    server = JobView.model_validate(job("scheduled", run_at=CREATED)).model_dump(mode="json")
    assert Job.model_validate(server).model_dump(mode="json", include=set(server)) == server


# --- the twins ---------------------------------------------------------------------------------


def public_methods(cls: type) -> dict[str, Any]:
    return {n: getattr(cls, n) for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}


def test_the_twins_have_the_same_methods_with_the_same_signatures() -> None:
    sync, asyn = public_methods(Client), public_methods(AsyncClient)
    assert set(sync) - {"close"} == set(asyn) - {"aclose"}
    for name, fn in sync.items():
        if name == "close":
            continue
        s, a = inspect.signature(fn), inspect.signature(asyn[name])
        assert (fn.__name__, list(s.parameters)) == (name, list(a.parameters)), name
        assert s.parameters["self"].kind is inspect.Parameter.POSITIONAL_ONLY
        assert fn.__doc__ and fn.__doc__ == asyn[name].__doc__, name
        if name.startswith("iter_"):
            assert inspect.isasyncgenfunction(asyn[name]) and inspect.isgeneratorfunction(fn)
        else:
            assert inspect.iscoroutinefunction(asyn[name]) and not inspect.iscoroutinefunction(fn), name


def test_a_wrong_call_fails_before_any_request() -> None:
    api = Recorder()
    with sync_client(api) as c, pytest.raises(TypeError):
        c.get()  # type: ignore[call-arg]
    assert api.requests == []


def test_importing_the_client_loads_neither_httpx_nor_pydantic_nor_the_engine() -> None:
    code = (
        "import sys, jobqueue.client; "
        "print(sorted(m for m in ('httpx', 'pydantic', 'asyncio', 'asyncpg', 'fastapi', 'jobqueue.engine',"
        " 'jobqueue.models', 'api') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_in_process_enqueue_refuses_an_unknown_target() -> None:
    from jobqueue.client import enqueue

    with pytest.raises(TypeError, match="needs a JobQueue"):
        await enqueue(object(), "echo")
