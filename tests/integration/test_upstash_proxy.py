"""The real `jobqueue upstash-proxy` process speaks Upstash's REST protocol (platform-facts §1, §3):
raw HTTP checks, the upstash-redis SDK unmodified, and the engine's UpstashTransport over it."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis as redis_sync
from upstash_redis.asyncio import Redis as UpstashRedis
from upstash_redis.errors import UpstashError

from jobqueue.engine import JobQueue
from jobqueue.transports import Script, UpstashTransport
from tests.conftest import PROXY_TOKEN

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
AUTH = {"Authorization": f"Bearer {PROXY_TOKEN}"}
B64 = {**AUTH, "Upstash-Encoding": "base64"}


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


@pytest.fixture
async def http(upstash_proxy: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=upstash_proxy, timeout=5) as client:
        yield client


@pytest.fixture
def r(redis_server: str) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis.from_url(redis_server, decode_responses=True)
    yield client
    client.close()


# --- auth ------------------------------------------------------------------------------------


async def test_missing_token_is_401_with_error(http: httpx.AsyncClient, prefix: str) -> None:
    res = await http.post("/", json=["SET", f"{prefix}:k", "v"])
    assert res.status_code == 401
    assert res.json() == {"error": "WRONGPASS invalid or missing auth token"}


@pytest.mark.parametrize("path", ["/", "/pipeline", "/multi-exec"])
async def test_wrong_token_is_401_on_every_route(http: httpx.AsyncClient, prefix: str, path: str) -> None:
    body: Any = ["SET", f"{prefix}:k", "v"] if path == "/" else [["SET", f"{prefix}:k", "v"]]
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": PROXY_TOKEN}, {"Authorization": "Basic x"}):
        res = await http.post(path, json=body, headers=headers)
        assert res.status_code == 401
        assert res.json()["error"].startswith("WRONGPASS")
    res = await http.post(path, json=body, params={"_token": "wrong"})
    assert res.status_code == 401
    assert res.json()["error"].startswith("WRONGPASS")


async def test_token_query_parameter_works(http: httpx.AsyncClient, prefix: str, r: redis_sync.Redis) -> None:
    res = await http.post("/", json=["SET", f"{prefix}:q", "v"], params={"_token": PROXY_TOKEN})
    assert (res.status_code, res.json()) == (200, {"result": "OK"})
    assert r.get(f"{prefix}:q") == "v"


# --- single command, pipeline, multi-exec ---------------------------------------------------------


async def test_single_command_results_and_errors(http: httpx.AsyncClient, prefix: str) -> None:
    k = f"{prefix}:s"
    assert (await http.post("/", json=["SET", k, "v"], headers=AUTH)).json() == {"result": "OK"}
    assert (await http.post("/", json=["GET", k], headers=AUTH)).json() == {"result": "v"}
    assert (await http.post("/", json=["GET", f"{prefix}:none"], headers=AUTH)).json() == {"result": None}
    # JSON numbers are arguments too
    assert (await http.post("/", json=["INCRBY", f"{prefix}:n", 5], headers=AUTH)).json() == {"result": 5}
    assert (await http.post("/", json=["LPUSH", f"{prefix}:l", "a", "b"], headers=AUTH)).json() == {"result": 2}
    assert (await http.post("/", json=["LRANGE", f"{prefix}:l", 0, -1], headers=AUTH)).json() == {"result": ["b", "a"]}
    bad = await http.post("/", json=["LPUSH", k, "x"], headers=AUTH)
    assert (bad.status_code, bad.json()) == (400, {"error": WRONGTYPE})
    arity = await http.post("/", json=["GET"], headers=AUTH)
    assert (arity.status_code, arity.json()) == (400, {"error": "ERR wrong number of arguments for 'get' command"})


async def test_pipeline_keeps_per_entry_results_and_error_prefix(
    http: httpx.AsyncClient, prefix: str, r: redis_sync.Redis
) -> None:
    k, n = f"{prefix}:p", f"{prefix}:pn"
    body = [["SET", k, "v"], ["LPUSH", k, "x"], ["GET", k], ["INCR", n], ["GET"]]
    res = await http.post("/pipeline", json=body, headers=AUTH)
    assert res.status_code == 200
    assert res.json() == [
        {"result": "OK"},
        {"error": WRONGTYPE},
        {"result": "v"},
        {"result": 1},
        {"error": "ERR wrong number of arguments for 'get' command"},
    ]
    # not atomic and not stopped by the failing entries: everything else ran
    assert r.get(k) == "v"
    assert r.get(n) == "1"


async def test_multi_exec_runs_every_command_despite_runtime_errors(
    http: httpx.AsyncClient, prefix: str, r: redis_sync.Redis
) -> None:
    k = f"{prefix}:m"
    body = [["SET", k, "1"], ["INCR", k], ["LPUSH", k, "x"], ["GET", k]]
    res = await http.post("/multi-exec", json=body, headers=AUTH)
    assert res.status_code == 200
    assert res.json() == [{"result": "OK"}, {"result": 2}, {"error": WRONGTYPE}, {"result": "2"}]
    assert r.get(k) == "2"


async def test_multi_exec_discarded_as_a_whole_is_one_error(
    http: httpx.AsyncClient, prefix: str, r: redis_sync.Redis
) -> None:
    # A command that cannot even be queued (wrong arity) aborts the transaction: Upstash answers
    # a single {"error"} object, and nothing ran.
    k = f"{prefix}:abort"
    res = await http.post("/multi-exec", json=[["SET", k, "v"], ["GET"]], headers=AUTH)
    assert res.status_code == 400
    body = res.json()
    assert isinstance(body, dict) and list(body) == ["error"]
    assert body["error"].startswith("ERR ")
    assert "wrong number of arguments for 'get' command" in body["error"]
    assert r.get(k) is None


# --- base64 encoding ---------------------------------------------------------------------------


async def test_base64_encodes_every_string_but_ok(http: httpx.AsyncClient, prefix: str, r: redis_sync.Redis) -> None:
    k, lst, z, h = f"{prefix}:b", f"{prefix}:bl", f"{prefix}:bz", f"{prefix}:bh"
    r.rpush(lst, "a", "héllo")
    r.zadd(z, {"m": 1.5})
    r.hset(h, "f", "v")

    async def one(cmd: list[Any], headers: dict[str, str]) -> Any:
        res = await http.post("/", json=cmd, headers=headers)
        assert res.status_code == 200
        return res.json()["result"]

    assert await one(["SET", k, "value"], B64) == "OK"
    assert await one(["GET", k], B64) == b64("value")
    assert await one(["GET", f"{prefix}:none"], B64) is None
    assert await one(["INCR", f"{prefix}:bn"], B64) == 1
    assert await one(["LRANGE", lst, 0, -1], B64) == [b64("a"), b64("héllo")]
    assert await one(["PING"], B64) == b64("PONG")
    # RESP2 shapes, as Upstash: flat member/score strings, a flat field/value list
    assert await one(["ZRANGE", z, 0, -1, "WITHSCORES"], B64) == [b64("m"), b64("1.5")]
    assert await one(["HGETALL", h], B64) == [b64("f"), b64("v")]

    # without the header nothing is encoded
    assert await one(["GET", k], AUTH) == "value"
    assert await one(["LRANGE", lst, 0, -1], AUTH) == ["a", "héllo"]
    assert await one(["ZRANGE", z, 0, -1, "WITHSCORES"], AUTH) == ["m", "1.5"]
    assert await one(["HGETALL", h], AUTH) == ["f", "v"]
    assert await one(["SET", k, "v2"], AUTH) == "OK"

    pipe = await http.post(
        "/pipeline", json=[["SET", k, "x"], ["GET", k], ["LLEN", lst], ["LPUSH", k, "y"]], headers=B64
    )
    # errors are never encoded
    assert pipe.json() == [{"result": "OK"}, {"result": b64("x")}, {"result": 2}, {"error": WRONGTYPE}]
    multi = await http.post("/multi-exec", json=[["SET", k, "z"], ["GET", k]], headers=B64)
    assert multi.json() == [{"result": "OK"}, {"result": b64("z")}]


# --- scripts and malformed input -----------------------------------------------------------------


async def test_evalsha_of_unknown_sha_keeps_noscript_prefix(http: httpx.AsyncClient) -> None:
    unknown = Script("probe", f"return '{uuid.uuid4().hex}'").sha
    res = await http.post("/", json=["EVALSHA", unknown, 0], headers=AUTH)
    assert res.status_code == 400
    assert res.json() == {"error": "NOSCRIPT No matching script. Please use EVAL."}
    pipe = await http.post("/pipeline", json=[["EVALSHA", unknown, 0]], headers=AUTH)
    assert pipe.json() == [{"error": "NOSCRIPT No matching script. Please use EVAL."}]


async def test_eval_script_replies(http: httpx.AsyncClient, prefix: str) -> None:
    k = f"{prefix}:e"
    res = await http.post(
        "/", json=["EVAL", "redis.call('SET', KEYS[1], ARGV[1]); return {1, ARGV[1]}", 1, k, "v"], headers=B64
    )
    assert res.json() == {"result": [1, b64("v")]}
    err = await http.post("/", json=["EVAL", "return redis.error_reply('MYERR boom')", 0], headers=AUTH)
    assert (err.status_code, err.json()) == (400, {"error": "MYERR boom"})


@pytest.mark.parametrize("path", ["/", "/pipeline", "/multi-exec"])
async def test_malformed_json_is_400(http: httpx.AsyncClient, path: str) -> None:
    res = await http.post(path, content=b'["SET", "k",', headers={**AUTH, "Content-Type": "application/json"})
    assert res.status_code == 400
    assert res.json() == {"error": "ERR failed to parse command"}


@pytest.mark.parametrize(
    ("path", "body"),
    [("/", {"cmd": "GET"}), ("/", []), ("/pipeline", ["GET", "k"]), ("/pipeline", [[]]), ("/multi-exec", {"a": 1})],
)
async def test_wrong_body_shape_is_400(http: httpx.AsyncClient, path: str, body: Any) -> None:
    res = await http.post(path, json=body, headers=AUTH)
    assert res.status_code == 400
    assert res.json()["error"].startswith("ERR ")


# --- the upstash-redis SDK, unmodified, through the proxy ----------------------------------------


@pytest.fixture
async def sdk(upstash_proxy: str) -> AsyncIterator[UpstashRedis]:
    # SDK defaults (base64, telemetry headers, read-your-writes) except retries, which would only
    # add 3 s sleeps to a failure here.
    client = UpstashRedis(upstash_proxy, PROXY_TOKEN, rest_retries=0)
    yield client
    await client.close()


async def test_sdk_commands_through_proxy(sdk: UpstashRedis, prefix: str) -> None:
    k, lst, z, h = f"{prefix}:sk", f"{prefix}:sl", f"{prefix}:sz", f"{prefix}:sh"
    assert await sdk.set(k, "héllo") is True
    assert await sdk.get(k) == "héllo"
    assert await sdk.set(k, "other", nx=True) is False
    assert await sdk.lpush(lst, "a", "b", "c") == 3
    assert await sdk.lmove(lst, lst, "RIGHT", "LEFT") == "a"
    assert await sdk.lrange(lst, 0, -1) == ["a", "c", "b"]
    assert await sdk.execute(["LMPOP", 1, lst, "RIGHT", "COUNT", 2]) == [lst, ["b", "c"]]
    assert await sdk.zadd(z, {"x": 1.5, "y": 2}) == 2
    assert await sdk.zrange(z, 0, -1, withscores=True) == [("x", 1.5), ("y", 2.0)]
    assert await sdk.zpopmin(z) == [("x", 1.5)]
    assert await sdk.hset(h, values={"f": "v", "g": "w"}) == 2
    assert await sdk.hgetall(h) == {"f": "v", "g": "w"}
    assert await sdk.ping() == "PONG"


async def test_sdk_scripts_through_proxy(sdk: UpstashRedis, prefix: str) -> None:
    source = f"-- {uuid.uuid4().hex}\nreturn {{KEYS[1], ARGV[1]}}"
    sha = await sdk.script_load(source)
    assert sha == Script("t", source).sha
    assert await sdk.script_exists(sha) == [True]
    assert await sdk.evalsha(sha, keys=[f"{prefix}:k"], args=["a"]) == [f"{prefix}:k", "a"]
    assert await sdk.eval("return ARGV[1]", args=["x"]) == "x"
    with pytest.raises(UpstashError) as e:
        await sdk.evalsha(Script("t", f"return '{uuid.uuid4().hex}'").sha)
    assert str(e.value).startswith("NOSCRIPT")


async def test_sdk_pipeline_and_multi_through_proxy(sdk: UpstashRedis, prefix: str) -> None:
    k, n = f"{prefix}:pk", f"{prefix}:pn"
    pipe = sdk.pipeline()
    pipe.set(k, "v")
    pipe.get(k)
    pipe.incr(n)
    pipe.zadd(f"{prefix}:pz", {"m": 3})
    pipe.execute(["LPUSH", f"{prefix}:pl", "a", "b"])
    assert await pipe.exec() == [True, "v", 1, 1, 2]

    tx = sdk.multi()
    tx.incr(n)
    tx.get(n)
    assert await tx.exec() == [2, "2"]

    # platform-facts §0.5: one failing entry makes exec() raise, though the server ran the rest
    bad = sdk.pipeline()
    bad.incr(n)
    bad.lpush(k, "x")
    bad.incr(n)
    with pytest.raises(UpstashError) as e:
        await bad.exec()
    assert str(e.value) == WRONGTYPE
    assert await sdk.get(n) == "4"


# --- the engine's UpstashTransport over the proxy --------------------------------------------------


@pytest.fixture
async def transport(upstash_proxy: str) -> AsyncIterator[UpstashTransport]:
    # the trailing slash must not turn /pipeline into //pipeline (platform-facts §0.6)
    t = UpstashTransport(upstash_proxy + "/", PROXY_TOKEN, timeout_s=5)
    yield t
    await t.close()


async def test_transport_returns_raw_redis_replies(transport: UpstashTransport, prefix: str) -> None:
    # The port returns what Redis answered, not the SDK's per-command formatting (SET -> bool):
    # reconcile's lock relies on a lost SET NX being None.
    lock = f"{prefix}:lock"
    assert await transport.command("SET", lock, "1", "NX", "PX", 60_000) == "OK"
    assert await transport.command("SET", lock, "1", "NX", "PX", 60_000) is None
    res = await transport.pipeline(
        [
            ["SET", f"{prefix}:kick", "1", "NX", "PX", 1000],
            ["SET", f"{prefix}:kick", "1", "NX", "PX", 1000],
            ["ZADD", f"{prefix}:z", 2, "m"],
            ["ZRANGE", f"{prefix}:z", 0, -1, "WITHSCORES"],
            ["SMEMBERS", f"{prefix}:none"],
            ["DEL", lock],
        ]
    )
    assert res == ["OK", None, 1, ["m", "2"], [], 1]
    assert transport.requests == 3


async def test_transport_falls_back_to_eval_on_noscript(transport: UpstashTransport, prefix: str) -> None:
    script = Script("probe", f"-- {uuid.uuid4().hex}\nreturn {{KEYS[1], ARGV[1], 7}}")
    assert await transport.script(script, [f"{prefix}:k"], ["a"]) == [f"{prefix}:k", "a", 7]
    assert transport.requests == 2  # EVALSHA -> NOSCRIPT, then EVAL
    assert await transport.script(script, [f"{prefix}:k"], ["b"]) == [f"{prefix}:k", "b", 7]
    assert transport.requests == 3  # EVAL cached the script: EVALSHA alone


async def test_reconcile_lock_is_exclusive_over_upstash(make_jq: Any, r: redis_sync.Redis, prefix: str) -> None:
    jq: JobQueue = make_jq(transport="upstash")
    r.set(jq.keys.reconcile_lock, "held-by-another-worker", px=60_000)
    assert await jq.reconcile() == {"restored": 0, "skipped": 1}
    assert r.get(jq.keys.reconcile_lock) == "held-by-another-worker"
    r.delete(jq.keys.reconcile_lock)
    assert await jq.reconcile() == {"restored": 0, "skipped": 0}
    assert r.get(jq.keys.reconcile_lock) is None


async def test_enqueue_kick_fires_once_per_interval_over_upstash(make_jq: Any) -> None:
    jq: JobQueue = make_jq(transport="upstash", JOBQUEUE_KICK_INTERVAL_MS=60_000)
    kicks: list[int] = []

    async def kicker() -> None:
        kicks.append(1)

    jq.kicker = kicker
    await jq.enqueue({"type": "echo", "payload": {"n": 1}})
    await jq.enqueue({"type": "echo", "payload": {"n": 2}})
    assert kicks == [1]  # the first enqueue won the SET NX debounce; the second did not
