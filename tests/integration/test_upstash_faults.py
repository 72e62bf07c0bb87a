"""`UpstashTransport` under faults, and the engine losing nothing when Upstash misbehaves.

The Upstash endpoint is mocked with respx at a fake URL; traffic to the local proxy (127.0.0.1)
passes through, so a second engine can recover over the real `jobqueue upstash-proxy`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import redis as redis_sync
import respx
from upstash_redis.asyncio import Redis as UpstashRedis

from jobqueue import reconcile
from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue, transport_from_settings
from jobqueue.errors import RedisUnavailable
from jobqueue.keys import Keys
from jobqueue.registry import JobContext, Registry
from jobqueue.settings import Settings
from jobqueue.store import Store
from jobqueue.transports import RedisTransport, Script, UpstashTransport
from tests.conftest import PROXY_TOKEN

FAKE_HOST = "fake-upstash.test"
FAKE_URL = f"https://{FAKE_HOST}"
FAKE_TOKEN = "fake-token"
SCRIPT = Script("probe", "return redis.call('LPOP', KEYS[1])")
JSON = {"Content-Type": "application/json"}
HTML_502 = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"

Op = Callable[[UpstashTransport], Awaitable[Any]]
OPS: dict[str, tuple[str, Op]] = {
    # name: (path, call); every one is non-idempotent, so none may be sent twice
    "command": ("/", lambda t: t.command("LMPOP", 1, "q", "RIGHT", "COUNT", 10)),
    "pipeline": ("/pipeline", lambda t: t.pipeline([["LPUSH", "q", "a"], ["ZREM", "p", "m"]])),
    "script": ("/", lambda t: t.script(SCRIPT, ["q"], ["a"])),
}


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


@pytest.fixture
def upstash_mock() -> Iterator[respx.MockRouter]:
    """respx patches all of httpx: let the local proxy through, mock only the fake Upstash host."""
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        yield router


@pytest.fixture
async def transport(upstash_mock: respx.MockRouter) -> AsyncIterator[UpstashTransport]:
    t = UpstashTransport(FAKE_URL, FAKE_TOKEN, timeout_s=2.0)
    yield t
    await t.close()


def post(router: respx.MockRouter, path: str) -> respx.Route:
    return router.route(method="POST", host=FAKE_HOST, path=path)


# --- transport-level faults --------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
@pytest.mark.parametrize("op", list(OPS))
async def test_5xx_html_body_is_redis_unavailable(
    upstash_mock: respx.MockRouter, transport: UpstashTransport, op: str, status: int
) -> None:
    path, call = OPS[op]
    route = post(upstash_mock, path).respond(status, html=HTML_502)
    with pytest.raises(RedisUnavailable) as e:
        await call(transport)
    assert e.value.message == "upstash: malformed response (JSONDecodeError)"
    assert e.value.dependency == "redis" and e.value.status_code == 503
    assert isinstance(e.value.__cause__, json.JSONDecodeError)
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (httpx.ReadTimeout, "upstash: request timed out (ReadTimeout)"),
        (httpx.ConnectTimeout, "upstash: request timed out (ConnectTimeout)"),
        (httpx.WriteTimeout, "upstash: request timed out (WriteTimeout)"),
        (httpx.ConnectError, "upstash: ConnectError: Mock Error"),
        (httpx.RemoteProtocolError, "upstash: RemoteProtocolError: Mock Error"),
    ],
)
@pytest.mark.parametrize("op", list(OPS))
async def test_network_errors_are_redis_unavailable_and_never_retried(
    upstash_mock: respx.MockRouter, transport: UpstashTransport, op: str, exc: type[Exception], message: str
) -> None:
    path, call = OPS[op]
    route = post(upstash_mock, path).mock(side_effect=exc)
    with pytest.raises(RedisUnavailable) as e:
        await call(transport)
    assert e.value.message == message
    assert isinstance(e.value.__cause__, exc)
    # exactly one request: a lost response to LMPOP / EVALSHA / a pipeline must not run twice
    assert route.call_count == 1
    assert transport.requests == 1
    if op == "script":
        assert json.loads(route.calls.last.request.content)[:2] == ["EVALSHA", SCRIPT.sha]


async def test_sdk_defaults_retry_non_idempotent_commands(upstash_mock: respx.MockRouter) -> None:
    """Why the transport exists (platform-facts §0.4): the bare SDK sends LMPOP twice and then
    raises the raw httpx error. The transport above sends it once and raises RedisUnavailable."""
    route = post(upstash_mock, "/").mock(side_effect=httpx.ReadTimeout)
    sdk = UpstashRedis(FAKE_URL, FAKE_TOKEN, rest_retry_interval=0)
    try:
        with pytest.raises(httpx.ReadTimeout):
            await sdk.execute(["LMPOP", 1, "q", "RIGHT", "COUNT", 10])
    finally:
        await sdk.close()
    assert route.call_count == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"nope": 1}, "upstash: malformed response (KeyError)"),
        ({"result": "abc"}, "upstash: malformed response (Error)"),  # base64: incorrect padding
        ({"result": "/w=="}, "upstash: malformed response (UnicodeDecodeError)"),  # b"\xff"
        ({"result": 1.5}, "upstash: Error decoding data for result type <class 'float'>"),
        ({"result": {"a": 1}}, "upstash: Error decoding data for result type <class 'dict'>"),
        ([{"result": "T0s="}], "upstash: malformed response (AttributeError)"),
        ("a string", "upstash: malformed response (AttributeError)"),
        (None, "upstash: malformed response (AssertionError)"),  # the SDK's `assert last_error`
    ],
)
async def test_garbage_json_on_a_command_is_redis_unavailable(
    upstash_mock: respx.MockRouter, transport: UpstashTransport, body: Any, message: str
) -> None:
    route = post(upstash_mock, "/").respond(200, content=json.dumps(body).encode(), headers=JSON)
    with pytest.raises(RedisUnavailable) as e:
        await transport.command("GET", "k")
    assert e.value.message == message
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # one error object where a list is due (a limit error, a 401): the SDK trips over it
        ({"error": "ERR max daily request limit exceeded"}, "upstash: malformed response (AttributeError)"),
        ({"nope": 1}, "upstash: malformed response (AttributeError)"),
        ([1, 2], "upstash: malformed response (AttributeError)"),
        (None, "upstash: malformed response (AssertionError)"),
        ([{"result": "OK"}, {"nope": 1}], "upstash: malformed response (KeyError)"),
        ([{"result": "OK"}, {"result": "abc"}], "upstash: malformed response (Error)"),
        # fewer results than commands must not pass for a full answer
        ([{"result": 1}], "upstash: pipeline of 2 answered with 1 results"),
        ([{"result": 1}, {"result": 1}, {"result": 1}], "upstash: pipeline of 2 answered with 3 results"),
        ([{"result": 1}, {"error": "WRONGTYPE Operation against a key"}], "upstash pipeline error: WRONGTYPE"),
    ],
)
async def test_garbage_json_on_a_pipeline_is_redis_unavailable(
    upstash_mock: respx.MockRouter, transport: UpstashTransport, body: Any, message: str
) -> None:
    route = post(upstash_mock, "/pipeline").respond(200, content=json.dumps(body).encode(), headers=JSON)
    with pytest.raises(RedisUnavailable) as e:
        await transport.pipeline([["LPUSH", "q", "a"], ["ZREM", "p", "m"]])
    assert e.value.message.startswith(message)
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, "WRONGPASS invalid or missing auth token"),
        (400, "ERR max requests limit exceeded"),
        (400, "ERR max request size exceeded"),
    ],
)
async def test_error_reply_on_a_command_is_redis_unavailable(
    upstash_mock: respx.MockRouter, transport: UpstashTransport, status: int, error: str
) -> None:
    route = post(upstash_mock, "/").respond(status, json={"error": error})
    with pytest.raises(RedisUnavailable) as e:
        await transport.command("LPUSH", "q", "a")
    assert e.value.message == f"upstash: {error}"
    assert route.call_count == 1


@pytest.mark.parametrize("suffix", ["/", "//"])
async def test_trailing_slash_does_not_double_the_pipeline_path(upstash_mock: respx.MockRouter, suffix: str) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/pipeline":
            return httpx.Response(200, json=[{"result": 1}, {"result": 0}])
        return httpx.Response(200, json={"result": "OK"})

    route = upstash_mock.route(host=FAKE_HOST).mock(side_effect=answer)
    t = UpstashTransport(FAKE_URL + suffix, FAKE_TOKEN, timeout_s=2.0)
    try:
        assert await t.pipeline([["LPUSH", "q", "a"], ["ZREM", "p", "m"]]) == [1, 0]
        assert await t.command("SET", "k", "v") == "OK"
    finally:
        await t.close()
    assert [str(c.request.url) for c in route.calls] == [f"{FAKE_URL}/pipeline", f"{FAKE_URL}/"]
    assert [c.request.url.path for c in route.calls] == ["/pipeline", "/"]


async def test_noscript_falls_back_to_eval_with_the_source(
    upstash_mock: respx.MockRouter, transport: UpstashTransport
) -> None:
    route = post(upstash_mock, "/").mock(
        side_effect=[
            httpx.Response(400, json={"error": "NOSCRIPT No matching script. Please use EVAL."}),
            httpx.Response(200, json={"result": b64("popped")}),
        ]
    )
    assert await transport.script(SCRIPT, ["q"], ["a", 3]) == "popped"
    assert route.call_count == 2
    assert transport.requests == 2
    sent = [json.loads(c.request.content) for c in route.calls]
    assert sent == [["EVALSHA", SCRIPT.sha, 1, "q", "a", 3], ["EVAL", SCRIPT.source, 1, "q", "a", 3]]


async def test_other_script_errors_do_not_fall_back(
    upstash_mock: respx.MockRouter, transport: UpstashTransport
) -> None:
    route = post(upstash_mock, "/").respond(400, json={"error": "ERR Error running script: boom"})
    with pytest.raises(RedisUnavailable) as e:
        await transport.script(SCRIPT, ["q"], [])
    assert e.value.message == "upstash script probe failed: ERR Error running script: boom"
    assert route.call_count == 1


async def test_noscript_then_eval_timeout_is_two_requests_not_more(
    upstash_mock: respx.MockRouter, transport: UpstashTransport
) -> None:
    route = post(upstash_mock, "/").mock(
        side_effect=[httpx.Response(400, json={"error": "NOSCRIPT No matching script."}), httpx.ReadTimeout]
    )
    with pytest.raises(RedisUnavailable) as e:
        await transport.script(SCRIPT, ["q"], [])
    assert e.value.message == "upstash: request timed out (ReadTimeout)"
    assert [json.loads(c.request.content)[0] for c in route.calls] == ["EVALSHA", "EVAL"]


async def test_request_timeout_is_applied_to_every_request(
    upstash_mock: respx.MockRouter, transport: UpstashTransport
) -> None:
    # the SDK builds httpx.AsyncClient(timeout=None) and retries once: both are replaced
    client = transport._redis._http._client
    assert client.timeout == httpx.Timeout(2.0, connect=2.0)
    assert transport._redis._http._retries == 0
    route = post(upstash_mock, "/").respond(200, json={"result": "OK"})
    pipe = post(upstash_mock, "/pipeline").respond(200, json=[{"result": "OK"}])
    await transport.command("SET", "k", "v")
    await transport.pipeline([["SET", "k", "v"]])
    for call in (route.calls.last, pipe.calls.last):
        # httpx hands the client's timeout to the transport with each request
        assert call.request.extensions["timeout"] == {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}
        headers = call.request.headers
        assert headers["authorization"] == f"Bearer {FAKE_TOKEN}"
        assert headers["upstash-encoding"] == "base64"
        assert "upstash-telemetry-sdk" not in headers


async def test_timeout_comes_from_settings_and_connect_is_capped(upstash_mock: respx.MockRouter) -> None:
    settings = Settings(
        UPSTASH_REDIS_REST_URL=FAKE_URL + "/", UPSTASH_REDIS_REST_TOKEN=FAKE_TOKEN, JOBQUEUE_REDIS_TIMEOUT_S=7.5
    )
    t = transport_from_settings(settings)
    try:
        assert isinstance(t, UpstashTransport)
        assert t.url == FAKE_URL
        assert t._redis._http._client.timeout == httpx.Timeout(7.5, connect=3.0)
        route = post(upstash_mock, "/").mock(side_effect=httpx.ReadTimeout)
        with pytest.raises(RedisUnavailable):
            await t.command("GET", "k")
        assert route.calls.last.request.extensions["timeout"] == {
            "connect": 3.0,
            "read": 7.5,
            "write": 7.5,
            "pool": 7.5,
        }
    finally:
        await t.close()


# --- the engine: nothing is lost ---------------------------------------------------------------


class FailingPipelineTransport(UpstashTransport):
    """Fault injector over a real UpstashTransport: pipeline call number `fail_at` (1-based)
    raises RedisUnavailable without being sent, as if Upstash were unreachable just then."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(url, token, timeout_s=5)
        self.pipeline_calls = 0
        self.fail_at: int | None = None
        self.dropped: list[list[list[Any]]] = []

    async def pipeline(self, commands: list[list[Any]]) -> list[Any]:
        self.pipeline_calls += 1
        if self.pipeline_calls == self.fail_at:
            self.dropped.append(commands)
            raise RedisUnavailable("upstash: injected fault (pipeline not sent)")
        return await super().pipeline(commands)


class FailingAckTransport(UpstashTransport):
    """Fault injector: the next acknowledgement (ack.lua) raises RedisUnavailable unsent."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(url, token, timeout_s=5)
        self.fail_next_ack = False
        self.dropped: list[list[str]] = []

    async def script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        if script.name == "ack" and self.fail_next_ack:
            self.fail_next_ack = False
            self.dropped.append(keys)
            raise RedisUnavailable("upstash: injected fault (acknowledgement not sent)")
        return await super().script(script, keys, args)


class LostScriptResponseTransport(UpstashTransport):
    """Fault injector over a real UpstashTransport: while `lose` is set, a script runs on Redis
    but its response is lost (a ReadTimeout after Upstash executed the request)."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(url, token, timeout_s=5)
        self.lose = False
        self.lost: list[Any] = []

    async def script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        res = await super().script(script, keys, args)
        if self.lose:
            self.lost.append(res)
            raise RedisUnavailable("upstash: injected fault (response lost after the script ran)")
        return res


@pytest.fixture
def runs(registry: Registry) -> list[int]:
    """Every run of a `count` job, by id: proves each job ran exactly once."""
    seen: list[int] = []

    @registry.job("count", timeout_ms=5000)
    async def count(payload: dict[str, Any], ctx: JobContext) -> int:
        seen.append(ctx.job_id)
        return ctx.job_id

    return seen


MakeWith = Callable[..., JobQueue]


@pytest.fixture
async def make_with(database_url: str, prefix: str, clock: FakeClock, registry: Registry) -> AsyncIterator[MakeWith]:
    """A JobQueue over a given Redis transport, sharing the test's database, prefix and clock
    with the engines `make_jq` builds."""
    made: list[JobQueue] = []

    def make(redis: RedisTransport, **overrides: Any) -> JobQueue:
        settings = Settings(JOBQUEUE_PREFIX=prefix, DATABASE_URL=database_url, **overrides)
        jq = JobQueue(Store(database_url, pool_max=5), redis, registry, settings, clock)
        made.append(jq)
        return jq

    yield make
    for jq in made:
        await jq.close()


@pytest.fixture
def rdb(redis_server: str) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis.from_url(redis_server, decode_responses=True)
    yield client
    client.close()


async def _statuses(jq: JobQueue, ids: list[int]) -> list[tuple[str, int]]:
    return [((row := await jq.get(i))["status"], row["attempts"]) for i in ids]


@pytest.mark.parametrize(
    "fault",
    [
        httpx.Response(502, html=HTML_502),
        httpx.Response(503, json={"error": "ERR max daily request limit exceeded"}),
        httpx.ReadTimeout,
        httpx.ConnectError,
    ],
    ids=["502-html", "503-json-error", "read-timeout", "connect-error"],
)
async def test_enqueue_during_outage_is_stored_then_reconciled_and_run_once(
    upstash_mock: respx.MockRouter,
    make_jq: Any,
    make_with: MakeWith,
    clock: FakeClock,
    runs: list[int],
    fault: Any,
) -> None:
    healthy: JobQueue = make_jq(transport="upstash")
    await healthy.drain(1)  # builds the index epoch, so later drains see only what Redis holds

    route = post(upstash_mock, "/pipeline").mock(side_effect=[fault])
    down = make_with(UpstashTransport(FAKE_URL, FAKE_TOKEN, timeout_s=2.0))
    row, created = await down.enqueue({"type": "count", "payload": {"n": 1}})  # does not raise
    assert created is True
    assert route.call_count == 1
    assert down.dispatch.needs_reconcile is True
    jid = row["id"]
    assert await _statuses(healthy, [jid]) == [("pending", 0)]  # Postgres holds it

    # Redis never heard of it: a drain finds nothing (and the periodic pass skips fresh rows)
    report = await healthy.drain(2)
    assert (report.claimed, runs) == (0, [])

    clock.advance(seconds=reconcile.FRESH_S + 1)
    assert await healthy.reconcile() == {"restored": 1, "skipped": 0}
    report = await healthy.drain(5)
    assert (report.claimed, report.completed, report.failed) == (1, 1, 0)
    assert (await healthy.drain(2)).claimed == 0
    assert runs == [jid]
    job = await healthy.get(jid)
    assert (job["status"], job["attempts"], job["result"]) == ("completed", 1, jid)
    assert [h["outcome"] for h in job["history"]] == ["completed"]


@pytest.mark.parametrize("fault", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.Response(502, html=HTML_502)])
async def test_drain_whose_claim_fails_leaves_every_job_pending(
    upstash_mock: respx.MockRouter, make_jq: Any, make_with: MakeWith, runs: list[int], fault: Any
) -> None:
    healthy: JobQueue = make_jq(transport="upstash")
    await healthy.drain(1)
    rows = await healthy.enqueue_many([{"type": "count", "payload": {"n": i}} for i in range(3)])
    ids = [r["id"] for r, _ in rows]

    route = post(upstash_mock, "/").mock(side_effect=fault)
    down = make_with(UpstashTransport(FAKE_URL, FAKE_TOKEN, timeout_s=2.0))
    with pytest.raises(RedisUnavailable):
        await down.drain(5)
    # one claim request, sent once: no retry, and no EVAL fallback for a transport failure
    assert route.call_count == 1
    assert json.loads(route.calls.last.request.content)[0] == "EVALSHA"
    assert runs == []
    assert await _statuses(healthy, ids) == [("pending", 0)] * 3

    report = await healthy.drain(5)
    assert (report.claimed, report.completed) == (3, 3)
    assert sorted(runs) == ids
    assert await _statuses(healthy, ids) == [("completed", 1)] * 3


async def test_claim_that_ran_but_lost_its_response_is_recovered_after_the_lease(
    upstash_proxy: str,
    make_jq: Any,
    make_with: MakeWith,
    clock: FakeClock,
    runs: list[int],
    rdb: redis_sync.Redis,
    prefix: str,
) -> None:
    lossy = LostScriptResponseTransport(upstash_proxy, PROXY_TOKEN)
    worker = make_with(lossy, JOBQUEUE_LEASE_GRACE_MS=1000)
    healthy: JobQueue = make_jq(transport="upstash")
    await healthy.drain(1)
    rows = await healthy.enqueue_many([{"type": "count", "payload": {"n": i}} for i in range(2)])
    ids = [r["id"] for r, _ in rows]

    lossy.lose = True
    with pytest.raises(RedisUnavailable):
        await worker.drain(5)
    # Redis popped and leased both; Postgres never granted anything
    assert len(lossy.lost) == 1
    processing = Keys(prefix).processing("default")
    assert rdb.zcard(processing) == 2
    assert await _statuses(healthy, ids) == [("pending", 0)] * 2

    report = await healthy.drain(2)  # the lease is still running: nothing to take
    assert (report.claimed, runs) == (0, [])

    clock.advance(seconds=5 + 1 + 1)  # budget + lease grace + margin
    report = await healthy.drain(5)
    assert (report.claimed, report.completed) == (2, 2)
    assert sorted(runs) == ids
    assert rdb.zcard(processing) == 0
    assert await _statuses(healthy, ids) == [("completed", 1)] * 2
    assert (await healthy.drain(2)).claimed == 0
    assert sorted(runs) == ids


async def test_failed_ack_keeps_outcomes_and_never_runs_the_job_again(
    upstash_proxy: str,
    make_with: MakeWith,
    clock: FakeClock,
    runs: list[int],
    rdb: redis_sync.Redis,
    prefix: str,
) -> None:
    flaky = FailingAckTransport(upstash_proxy, PROXY_TOKEN)
    # A linger long enough that both outcomes are written as one group, with one acknowledgement.
    jq = make_with(flaky, JOBQUEUE_LEASE_GRACE_MS=1000, JOBQUEUE_RECORD_LINGER_MS=100)
    await jq.drain(1)  # epoch
    rows = await jq.enqueue_many([{"type": "count", "payload": {"n": i}} for i in range(2)])
    ids = [r["id"] for r, _ in rows]

    flaky.fail_next_ack = True  # this drain's acknowledgement
    # The drain itself succeeds: its outcomes are recorded; only the Redis clean-up was lost.
    report = await jq.drain(5)
    assert report.completed == 2
    processing = Keys(prefix).processing("default")
    assert len(flaky.dropped) == 1 and flaky.dropped[0][0] == processing
    # the outcomes were written to Postgres before the ack
    assert sorted(runs) == ids
    assert await _statuses(jq, ids) == [("completed", 1)] * 2
    assert rdb.zcard(processing) == 2  # the leases stayed behind in Redis

    report = await jq.drain(2)
    assert (report.claimed, report.completed) == (0, 0)

    clock.advance(seconds=5 + 1 + 1)  # the stale leases expire and come back to a claim
    report = await jq.drain(5)
    assert (report.claimed, report.completed, report.dropped) == (0, 0, 2)  # Postgres says done
    assert rdb.zcard(processing) == 0
    assert sorted(runs) == ids
    for i in ids:
        job = await jq.get(i)
        assert (job["status"], job["attempts"], job["result"]) == ("completed", 1, i)
        assert [h["outcome"] for h in job["history"]] == ["completed"]
