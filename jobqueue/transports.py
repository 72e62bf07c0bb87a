"""Two Redis transports behind one narrow port: "run these commands, this pipeline, this script".

- `RedisPyTransport`: redis-py asyncio for a plain Redis (`REDIS_URL`), also used with fakeredis
  in the embedded development mode.
- `UpstashTransport`: the Upstash REST API through the `upstash-redis` SDK, made safe for a queue:
  a timeout on every request (the SDK builds its httpx client with `timeout=None`), no automatic
  retries (the SDK retries every command, non-idempotent LMPOP/EVAL included, after a 3 s sleep),
  NOSCRIPT handled by falling back to EVAL, a trailing slash in the URL stripped (the SDK builds
  `f"{url}/pipeline"`), and every transport failure raised as `RedisUnavailable`.

Both count round trips in `requests`, so tests can assert O(1) requests per batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

import httpx

from .errors import RedisUnavailable


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest())

    @classmethod
    def load(cls, name: str) -> Script:
        text = resources.files("jobqueue").joinpath(f"lua/{name}.lua").read_text()
        return cls(name, text)


class RedisTransport(Protocol):
    requests: int

    async def command(self, *args: Any) -> Any: ...

    async def pipeline(self, commands: list[list[Any]]) -> list[Any]: ...

    async def script(self, script: Script, keys: list[str], args: list[Any]) -> Any: ...

    async def close(self) -> None: ...


class RedisPyTransport:
    """redis-py asyncio (or a fakeredis instance with the same API)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.requests = 0

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 5.0) -> RedisPyTransport:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        return cls(client)

    async def command(self, *args: Any) -> Any:
        import redis.exceptions as rex

        self.requests += 1
        try:
            return await self._client.execute_command(*args)
        except (rex.ConnectionError, rex.TimeoutError, OSError) as e:
            raise RedisUnavailable(f"redis: {type(e).__name__}: {e}") from e

    async def pipeline(self, commands: list[list[Any]]) -> list[Any]:
        import redis.exceptions as rex

        if not commands:
            return []
        self.requests += 1
        try:
            pipe = self._client.pipeline(transaction=False)
            for cmd in commands:
                pipe.execute_command(*cmd)
            return list(await pipe.execute(raise_on_error=True))
        except (rex.ConnectionError, rex.TimeoutError, OSError) as e:
            raise RedisUnavailable(f"redis: {type(e).__name__}: {e}") from e
        except rex.ResponseError as e:
            raise RedisUnavailable(f"redis pipeline error: {e}") from e

    async def script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        import redis.exceptions as rex

        self.requests += 1
        try:
            try:
                return await self._client.evalsha(script.sha, len(keys), *keys, *args)
            except rex.NoScriptError:
                self.requests += 1
                return await self._client.eval(script.source, len(keys), *keys, *args)
        except (rex.ConnectionError, rex.TimeoutError, OSError) as e:
            raise RedisUnavailable(f"redis: {type(e).__name__}: {e}") from e
        except rex.ResponseError as e:
            raise RedisUnavailable(f"redis script {script.name} failed: {e}") from e

    async def close(self) -> None:
        close = getattr(self._client, "aclose", None) or self._client.close
        await close()


class UpstashTransport:
    """Upstash REST via the upstash-redis SDK, with the SDK's unsafe defaults turned off."""

    def __init__(self, url: str, token: str, timeout_s: float = 5.0) -> None:
        from upstash_redis.asyncio import Redis

        self.url = url.rstrip("/")
        self.requests = 0
        # rest_retries=0: a lost response to LMPOP/EVAL must not run the command twice. The
        # queue's own recovery (leases, reconcile) covers a request that failed mid-way.
        self._redis = Redis(self.url, token, rest_retries=0, allow_telemetry=False, read_your_writes=True)
        # The SDK has no timeout option and builds httpx.AsyncClient(timeout=None): a stalled
        # request would hang until the platform kills the function. Replace its client.
        self._redis._http._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0)),
            # Few connections: httpcore's pool costs more per request as it grows (measured: 64
            # connections gave two thirds of the throughput of 8 at 32 concurrent requests).
            limits=httpx.Limits(max_connections=10, max_keepalive_connections=10),
        )

    async def _guard(self, coro: Any) -> Any:
        from upstash_redis.errors import UpstashError

        self.requests += 1
        try:
            return await coro
        except UpstashError:
            raise
        except httpx.TimeoutException as e:
            raise RedisUnavailable(f"upstash: request timed out ({type(e).__name__})") from e
        except httpx.HTTPError as e:
            raise RedisUnavailable(f"upstash: {type(e).__name__}: {e}") from e
        except (ValueError, KeyError, TypeError, AttributeError, AssertionError) as e:
            # An HTML 502 page or any non-JSON body: JSONDecodeError is a ValueError; a JSON
            # body without "result" is a KeyError; base64 garbage is a ValueError too; a body of
            # the wrong shape (one {"error"} object where a pipeline expects a list, a list where
            # one object is expected) is an AttributeError inside the SDK; a `null` body trips
            # the SDK's `assert last_error is not None`.
            raise RedisUnavailable(f"upstash: malformed response ({type(e).__name__})") from e

    async def _send(self, path: str, command: list[Any], pipeline: bool = False) -> Any:
        """POST through the SDK's HTTP layer (auth, base64 decoding, {"error"} -> UpstashError)
        but without `Redis.execute`'s per-command reply formatting, which turns SET into True/False
        (so a lost SET NX is False, not None) and ZRANGE WITHSCORES into tuples: callers of this
        port get the raw Redis reply, as Upstash sends it."""
        r = self._redis
        r._maybe_set_sync_token_header(r._headers)
        return await r._http.execute(url=self.url + path, headers=r._headers, command=command, from_pipeline=pipeline)

    async def command(self, *args: Any) -> Any:
        from upstash_redis.errors import UpstashError

        try:
            return await self._guard(self._send("", list(args)))
        except UpstashError as e:
            raise RedisUnavailable(f"upstash: {e}") from e

    async def pipeline(self, commands: list[list[Any]]) -> list[Any]:
        from upstash_redis.errors import UpstashError

        if not commands:
            return []
        try:
            res = await self._guard(self._send("/pipeline", [list(c) for c in commands], pipeline=True))
        except UpstashError as e:
            # The SDK raises on the first error entry and discards the rest (the server ran them).
            raise RedisUnavailable(f"upstash pipeline error: {e}") from e
        if len(res) != len(commands):
            raise RedisUnavailable(f"upstash: pipeline of {len(commands)} answered with {len(res)} results")
        return list(res)

    async def script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        from upstash_redis.errors import UpstashError

        cmd = [len(keys), *keys, *args]
        try:
            try:
                return await self._guard(self._send("", ["EVALSHA", script.sha, *cmd]))
            except UpstashError as e:
                if not str(e).startswith("NOSCRIPT"):
                    raise
                return await self._guard(self._send("", ["EVAL", script.source, *cmd]))
        except UpstashError as e:
            raise RedisUnavailable(f"upstash script {script.name} failed: {e}") from e

    async def close(self) -> None:
        await self._redis.close()


def embedded_redis() -> RedisPyTransport:
    """An in-process Redis (fakeredis, which runs the same Lua) for `make dev` with nothing configured."""
    try:
        import fakeredis
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "the in-process Redis is fakeredis: pip install 'jobqueue[embedded]'", name=e.name
        ) from e

    return RedisPyTransport(fakeredis.FakeAsyncRedis(decode_responses=True))
