"""`jobqueue.client` over a mock transport: request shapes, error mapping, wait's polling schedule.
The client against a real server is in tests/acceptance/test_http_e2e.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from jobqueue import client as client_mod
from jobqueue.client import APIError, AsyncClient, Client, WaitTimeout

Handler = Callable[[httpx.Request], httpx.Response]


def job(status: str, id: int = 7) -> dict[str, Any]:
    return {"id": id, "type": "echo", "status": status}


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


def test_enqueue_sends_type_payload_options_and_token() -> None:
    api = Recorder(httpx.Response(201, json=job("pending")))
    run_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    with sync_client(api) as c:
        got = c.enqueue("echo", {"a": 1}, priority=9, run_at=run_at, idempotency_key="k", queue=None)
    assert got == job("pending")
    req = api.requests[0]
    assert (req.method, str(req.url)) == ("POST", "http://jobs.test/api/jobs")
    assert req.headers["authorization"] == "Bearer tok"
    # None options are left out, so the server applies its defaults
    assert api.body() == {
        "type": "echo",
        "payload": {"a": 1},
        "priority": 9,
        "run_at": "2030-01-02T03:04:05+00:00",
        "idempotency_key": "k",
    }


def test_enqueue_many_posts_one_batch_and_returns_its_jobs() -> None:
    api = Recorder(httpx.Response(201, json={"jobs": [job("pending", 1), job("pending", 2)]}))
    with sync_client(api) as c:
        got = c.enqueue_many([{"type": "echo", "payload": {"i": 1}}, {"type": "echo", "delay_ms": 50}])
    assert [j["id"] for j in got] == [1, 2]
    assert str(api.requests[0].url) == "http://jobs.test/api/jobs/batch"
    assert api.body() == {
        "jobs": [{"type": "echo", "payload": {"i": 1}}, {"type": "echo", "payload": {}, "delay_ms": 50}]
    }


def test_get_cancel_retry_paths() -> None:
    api = Recorder(*(httpx.Response(200, json=job(s)) for s in ("pending", "cancelled", "pending")))
    with sync_client(api) as c:
        assert c.get(7)["status"] == "pending"
        assert c.cancel(7)["status"] == "cancelled"
        assert c.retry(7)["status"] == "pending"
    assert [(r.method, r.url.path) for r in api.requests] == [
        ("GET", "/api/jobs/7"),
        ("POST", "/api/jobs/7/cancel"),
        ("POST", "/api/jobs/7/retry"),
    ]


def test_error_body_maps_to_api_error_with_code_message_and_field() -> None:
    body = {"error": {"code": "invalid_job", "message": "payload.n: field required", "field": "payload.n"}}
    api = Recorder(httpx.Response(422, json=body))
    with sync_client(api) as c, pytest.raises(APIError) as info:
        c.enqueue("strict", {})
    e = info.value
    assert (e.status_code, e.code, e.message, e.field, e.dependency) == (
        422,
        "invalid_job",
        "payload.n: field required",
        "payload.n",
        None,
    )
    assert str(e) == "422 invalid_job: payload.n: field required (field payload.n)"


def test_unavailable_carries_the_dependency() -> None:
    body = {"error": {"code": "unavailable", "message": "redis is unavailable", "dependency": "redis"}}
    api = Recorder(httpx.Response(503, json=body))
    with sync_client(api) as c, pytest.raises(APIError) as info:
        c.get(1)
    assert (info.value.status_code, info.value.dependency) == (503, "redis")


def test_a_foreign_error_page_still_raises_api_error() -> None:
    api = Recorder(httpx.Response(502, text="<html>Bad Gateway</html>"))
    with sync_client(api) as c, pytest.raises(APIError) as info:
        c.get(1)
    assert (info.value.status_code, info.value.code, info.value.message) == (
        502,
        "http_error",
        "<html>Bad Gateway</html>",
    )


def test_transport_failure_is_a_connection_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with sync_client(refuse) as c, pytest.raises(APIError) as info:
        c.get(1)
    assert (info.value.status_code, info.value.code) == (None, "connection_error")


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
        Client()


class FakeTime:
    """Stands in for the client module's clock and sleeps."""

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
    monkeypatch.setattr(client_mod, "_monotonic", ft.monotonic)
    monkeypatch.setattr(client_mod, "_sleep", ft.sleep)
    monkeypatch.setattr(client_mod, "_async_sleep", ft.asleep)
    return ft


def test_wait_polls_with_backoff_until_terminal(fake_time: FakeTime) -> None:
    statuses = ["pending"] * 6 + ["processing", "completed"]
    api = Recorder(*(httpx.Response(200, json=job(s)) for s in statuses))
    with sync_client(api) as c:
        assert c.wait(7, timeout=60)["status"] == "completed"
    # 0.2 s growing by 1.5x, capped at 2 s
    assert fake_time.sleeps == [0.2, 0.3, 0.45, 0.675, 1.0125, 1.5188, 2.0]


def test_wait_raises_a_timeout_error_with_the_last_state(fake_time: FakeTime) -> None:
    api = Recorder(*(httpx.Response(200, json=job("processing")) for _ in range(10)))
    with sync_client(api) as c, pytest.raises(WaitTimeout) as info:
        c.wait(7, timeout=1.0)
    assert isinstance(info.value, TimeoutError)
    assert info.value.job == job("processing")
    assert str(info.value) == "job 7 is still processing after 1 s"
    # the last sleep is cut to the deadline, then one final look
    assert fake_time.sleeps == [0.2, 0.3, 0.45, 0.05]


@pytest.mark.parametrize("terminal", ["completed", "failed", "cancelled"])
async def test_async_wait_returns_any_terminal_state(fake_time: FakeTime, terminal: str) -> None:
    api = Recorder(httpx.Response(200, json=job("pending")), httpx.Response(200, json=job(terminal)))
    async with async_client(api) as c:
        assert (await c.wait(7))["status"] == terminal
    assert fake_time.sleeps == [0.2]


async def test_async_methods_and_errors() -> None:
    body = {"error": {"code": "invalid_state", "message": "job 7 is completed"}}
    api = Recorder(
        httpx.Response(201, json=job("pending")),
        httpx.Response(201, json={"jobs": [job("pending", 8)]}),
        httpx.Response(409, json=body),
    )
    async with async_client(api) as c:
        assert (await c.enqueue("echo", {"x": 1}, max_attempts=2))["id"] == 7
        assert [j["id"] for j in await c.enqueue_many([{"type": "echo"}])] == [8]
        with pytest.raises(APIError) as info:
            await c.cancel(7)
    assert (info.value.status_code, info.value.code) == (409, "invalid_state")
    assert api.body(0) == {"type": "echo", "payload": {"x": 1}, "max_attempts": 2}


async def test_in_process_enqueue_refuses_an_unknown_target() -> None:
    with pytest.raises(TypeError, match="needs a JobQueue"):
        await client_mod.enqueue(object(), "echo")


def test_importing_the_client_does_not_load_httpx_or_the_engine() -> None:
    code = (
        "import sys, jobqueue.client; "
        "print(sorted(m for m in ('httpx', 'asyncpg', 'jobqueue.engine', 'api') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
