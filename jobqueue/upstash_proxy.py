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
import contextlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


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


def create_app(redis_url: str, token: str, latency_ms: float = 0.0) -> Starlette:
    # protocol=2: redis-py 8 defaults to RESP3, whose replies (doubles, maps) are not the RESP2
    # shapes Upstash answers with (ZRANGE WITHSCORES would return floats the SDK cannot decode).
    client = aioredis.Redis.from_url(redis_url, decode_responses=False, protocol=2)
    # redis-py would rewrite replies (SET -> True, ZRANGE WITHSCORES -> float tuples...): keep raw.
    client.response_callbacks.clear()
    expected = f"Bearer {token}".encode()

    def authorised(request: Request) -> bool:
        got = request.headers.get("authorization", "").encode()
        q = request.query_params.get("_token")
        if q is not None:
            got = f"Bearer {q}".encode()
        return hmac.compare_digest(got, expected)

    async def run(cmd: list[Any]) -> dict[str, Any]:
        try:
            return {"result": await client.execute_command(*[_arg(a) for a in cmd])}  # type: ignore[no-untyped-call]
        except ResponseError as e:
            return {"error": _error(e)}

    async def parse(request: Request) -> tuple[Any, bool] | Response:
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        if not authorised(request):
            return JSONResponse({"error": "WRONGPASS invalid or missing auth token"}, status_code=401)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": "ERR failed to parse command"}, status_code=400)
        return body, request.headers.get("upstash-encoding", "").lower() == "base64"

    async def single(request: Request) -> Response:
        parsed = await parse(request)
        if isinstance(parsed, Response):
            return parsed
        body, b64 = parsed
        if not isinstance(body, list) or not body:
            return JSONResponse({"error": "ERR command must be a non-empty array"}, status_code=400)
        res = await run(body)
        status = 400 if "error" in res else 200
        if "result" in res:
            res["result"] = _encode(res["result"], b64)
        return JSONResponse(res, status_code=status)

    async def pipeline(request: Request) -> Response:
        parsed = await parse(request)
        if isinstance(parsed, Response):
            return parsed
        body, b64 = parsed
        if not isinstance(body, list) or not all(isinstance(c, list) and c for c in body):
            return JSONResponse({"error": "ERR pipeline must be an array of commands"}, status_code=400)
        pipe = client.pipeline(transaction=request.url.path.endswith("multi-exec"))
        for cmd in body:
            pipe.execute_command(*[_arg(a) for a in cmd])
        try:
            results = await pipe.execute(raise_on_error=False)
        except ResponseError as e:
            # MULTI/EXEC discarded as a whole (EXECABORT: a command failed to queue). Upstash
            # answers one {"error"} object; redis-py raises instead of returning a list.
            return JSONResponse({"error": _error(e)}, status_code=400)
        out = [{"error": _error(r)} if isinstance(r, Exception) else {"result": _encode(r, b64)} for r in results]
        return JSONResponse(out)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return Starlette(
        routes=[
            Route("/", single, methods=["POST"]),
            Route("/pipeline", pipeline, methods=["POST"]),
            Route("/multi-exec", pipeline, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def serve(redis_url: str, port: int, token: str, latency_ms: float = 0.0, host: str = "127.0.0.1") -> None:
    import uvicorn

    uvicorn.run(create_app(redis_url, token, latency_ms), host=host, port=port, log_level="warning")
