"""An Upstash-REST-compatible server over a real Redis: `jobqueue upstash-proxy`.

It lets the production transport (the upstash-redis SDK over HTTP) run locally, in tests and in
benchmarks. Wire behaviour follows Upstash's REST API: `POST /` (one command as a JSON array),
`POST /pipeline` and `POST /multi-exec` (arrays of commands), Bearer auth (401 otherwise),
`{"result": ...}` / `{"error": "ERR ..."}` with the Redis error prefix kept (clients test
`startswith("NOSCRIPT")`), and base64 of every string in the result when the client sends
`Upstash-Encoding: base64` (the SDK default; "OK" is left as is). `--latency-ms` adds a delay per
request to model a cloud round trip.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError


def _encode(value: Any, b64: bool) -> Any:
    if isinstance(value, bytes):
        if not b64:
            return value.decode("utf-8", "replace")
        if value == b"OK":  # Upstash leaves the status reply OK unencoded
            return "OK"
        return base64.b64encode(value).decode()
    if isinstance(value, list | tuple):
        return [_encode(v, b64) for v in value]
    if isinstance(value, str):  # status replies such as OK / QUEUED
        if not b64 or value == "OK":
            return value
        return base64.b64encode(value.encode()).decode()
    return value


def _arg(a: Any) -> Any:
    if isinstance(a, bool):
        return "1" if a else "0"
    if isinstance(a, int | float | str):
        return a
    return json.dumps(a)


def _error(e: Exception) -> str:
    # redis-py strips the error code prefix (NOSCRIPT, WRONGTYPE...) into the exception class;
    # Upstash keeps it. Rebuild it from the class where redis-py knows one.
    msg = str(e)
    name = type(e).__name__
    prefixes = {"NoScriptError": "NOSCRIPT", "DataError": "ERR"}
    prefix = prefixes.get(name)
    if prefix is None and isinstance(e, ResponseError) and msg and msg.split(" ", 1)[0].isupper():
        return msg
    return f"{prefix or 'ERR'} {msg}"


ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def create_app(redis_url: str, token: str, latency_ms: float = 0.0) -> ASGIApp:
    """A bare ASGI app: the proxy stands in for a managed service in benchmarks, so it skips a
    framework's routing and request objects (a third of its time per request)."""
    # protocol=2: redis-py 8 defaults to RESP3, whose replies (doubles, maps) are not the RESP2
    # shapes Upstash answers with (ZRANGE WITHSCORES would return floats the SDK cannot decode).
    client = aioredis.Redis.from_url(redis_url, decode_responses=False, protocol=2)
    # redis-py would rewrite replies (SET -> True, ZRANGE WITHSCORES -> float tuples...): keep raw.
    client.response_callbacks.clear()
    expected = f"Bearer {token}".encode()

    def authorised(headers: dict[bytes, bytes], query: bytes) -> bool:
        got = headers.get(b"authorization", b"")
        for key, _, value in (part.partition(b"=") for part in query.split(b"&")):
            if key == b"_token":
                got = b"Bearer " + unquote_to_bytes(value)
        return hmac.compare_digest(got, expected)

    async def run(cmd: list[Any]) -> dict[str, Any]:
        try:
            return {"result": await client.execute_command(*[_arg(a) for a in cmd])}  # type: ignore[no-untyped-call]
        except ResponseError as e:
            return {"error": _error(e)}

    async def single(body: Any, b64: bool) -> tuple[int, Any]:
        if not isinstance(body, list) or not body:
            return 400, {"error": "ERR command must be a non-empty array"}
        res = await run(body)
        if "result" in res:
            res["result"] = _encode(res["result"], b64)
            return 200, res
        return 400, res

    async def pipeline(body: Any, b64: bool, transaction: bool) -> tuple[int, Any]:
        if not isinstance(body, list) or not all(isinstance(c, list) and c for c in body):
            return 400, {"error": "ERR pipeline must be an array of commands"}
        pipe = client.pipeline(transaction=transaction)
        for cmd in body:
            pipe.execute_command(*[_arg(a) for a in cmd])
        try:
            results = await pipe.execute(raise_on_error=False)
        except ResponseError as e:
            # MULTI/EXEC discarded as a whole (EXECABORT: a command failed to queue). Upstash
            # answers one {"error"} object; redis-py raises instead of returning a list.
            return 400, {"error": _error(e)}
        return 200, [{"error": _error(r)} if isinstance(r, Exception) else {"result": _encode(r, b64)} for r in results]

    async def handle(path: str, headers: dict[bytes, bytes], query: bytes, raw: bytes) -> tuple[int, Any]:
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        if not authorised(headers, query):
            return 401, {"error": "WRONGPASS invalid or missing auth token"}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return 400, {"error": "ERR failed to parse command"}
        b64 = headers.get(b"upstash-encoding", b"").lower() == b"base64"
        if path == "/":
            return await single(body, b64)
        return await pipeline(body, b64, transaction=path == "/multi-exec")

    async def app(
        scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if path not in ("/", "/pipeline", "/multi-exec"):
            status, out = 404, {"error": "ERR not found"}
        elif scope["method"] != "POST":
            status, out = 405, {"error": "ERR method not allowed"}
        else:
            chunks = []
            more = True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            status, out = await handle(path, dict(scope["headers"]), scope.get("query_string", b""), b"".join(chunks))
        payload = orjson.dumps(out)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


def serve(redis_url: str, port: int, token: str, latency_ms: float = 0.0, host: str = "127.0.0.1") -> None:
    import uvicorn

    uvicorn.run(create_app(redis_url, token, latency_ms), host=host, port=port, log_level="warning")
