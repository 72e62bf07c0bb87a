"""The HTTP client `webhook.deliver` shares: one per event loop, with bounded pools, and a network
backend that connects only to addresses a guard has checked.

Why shared: building an `httpx.AsyncClient` costs about 22 ms of CPU (an SSL context and a pool),
so a client per delivery capped a process at ~35 deliveries/s, and a batch of 500 held the event
loop for seconds (the drain's own Postgres statement timed out behind it). A shared client also
keeps connections alive, so a busy destination pays its TCP and TLS handshakes once.

Why per loop: a client's sockets belong to the loop that opened them. Mangum, `asyncio.run` per
CLI command and pytest each make new loops, and a client bound to a closed loop cannot be used
(the same reason the asyncpg pool is per loop). `_CLIENTS` is the one piece of module-level
mutable state in the package, deliberately: a weak-keyed cache from loop to its clients, so a
collected loop's entry disappears and a closed loop's is never handed out.

Limits: `max_connections` open in all (busy or idle; the oldest idle one is closed to make room);
`per_host` requests in flight per (scheme, host, port), a semaphore held for the whole request, so
one slow receiver cannot take every connection, and so a burst of 500 jobs to one host starts in
steps of `per_host` rather than all in one turn of the loop. Idle connections are kept alive per
destination for KEEPALIVE_S and reused most-recent first.

The pool is ours (`Pool`), over httpcore's single connections: httpcore's own pool rescans every
connection for every queued request and every idle one on each request and response (O(n^2) in
connections; at 64 connections to one receiver that was most of a drain's CPU, and stalled the
loop for hundreds of milliseconds). Ours does O(1) work per request. respx still mocks it, since
it patches `AsyncHTTPConnection.handle_async_request`, which is what the pool calls.

Rebinding: with a guard, `GuardedBackend.connect_tcp` resolves the host itself, has the guard
check every address, and connects to a checked address. The name is resolved once per connection
and the socket goes where the check looked, so a resolver that answers a public address to the
check and a private one to the connect gains nothing. TLS is unaffected: httpcore does TLS over the
returned stream with `server_hostname` = the URL's host, and the Host header carries the name too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import ssl
import weakref
from collections import OrderedDict, deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeAlias, cast

import httpcore
import httpx

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
# Resolves (host, port) and answers the addresses that may be connected to, or raises.
Guard: TypeAlias = Callable[[str, int], Awaitable[list[IPAddress]]]

KEEPALIVE_S = 30.0  # idle connections older than this are closed (receivers often drop at 60 s)


@dataclass(frozen=True)
class PoolConfig:
    max_connections: int = 256
    per_host: int = 64
    guarded: bool = True  # False with WEBHOOK_ALLOW_PRIVATE_NETWORKS: connect where DNS says


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's default backend, but every TCP connection goes to an address `guard` returned."""

    def __init__(self, guard: Guard, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._guard = guard
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # The guard raises PermanentError (a refused address) or DeliveryFailed (no answer); both
        # leave httpx unmapped, so the caller sees the guard's own message.
        addresses = await self._guard(host, port)
        error: Exception | None = None
        for ip in addresses:  # each checked answer in turn, as the OS connect would
            try:
                return await self._inner.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                error = e
        raise error or httpcore.ConnectError(f"{host} resolved to no address")

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are delivered over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class Pool:
    """HTTP/1.1 keep-alive connections per origin with a global cap, O(1) per request (see the
    module docstring for why not httpcore's pool). At most `max_connections` requests run at once
    (a semaphore held until the response is closed), and at most that many connections are open."""

    def __init__(self, max_connections: int, network_backend: httpcore.AsyncNetworkBackend | None) -> None:
        self._max = max_connections
        self._busy = Slots(max_connections)
        self._backend = network_backend
        self._idle: dict[OriginKey, dict[httpcore.AsyncHTTPConnection, None]] = {}
        self._lru: OrderedDict[httpcore.AsyncHTTPConnection, OriginKey] = OrderedDict()  # idle, oldest first
        self._open = 0

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        await self._busy.acquire()
        try:
            conn = await self._connection(request.url.origin)
            try:
                response = await conn.handle_async_request(request)
            except BaseException:
                await self._drop(conn)
                raise
        except BaseException:
            self._busy.release()
            raise
        # An async connection's response stream is always async (HTTP11ConnectionByteStream).
        stream = _Released(cast("AsyncIterable[bytes]", response.stream), lambda: self._release(conn))
        return httpcore.Response(
            response.status, headers=response.headers, content=stream, extensions=response.extensions
        )

    async def _connection(self, origin: httpcore.Origin) -> httpcore.AsyncHTTPConnection:
        key = _key(origin)
        idle = self._idle.get(key)
        while idle:
            conn, _ = idle.popitem()  # the most recently used: the least likely to be stale
            del self._lru[conn]
            if not idle:
                del self._idle[key]
            if conn.is_idle() and not conn.has_expired():  # has_expired also sees a peer's close
                return conn
            await self._drop(conn)
            idle = self._idle.get(key)
        while self._open >= self._max and self._lru:  # make room: close the oldest idle connection
            old, old_origin = self._lru.popitem(last=False)
            del self._idle[old_origin][old]
            if not self._idle[old_origin]:
                del self._idle[old_origin]
            await self._drop(old)
        self._open += 1
        return httpcore.AsyncHTTPConnection(
            origin, ssl_context=ssl_context(), keepalive_expiry=KEEPALIVE_S, network_backend=self._backend
        )

    async def _release(self, conn: httpcore.AsyncHTTPConnection) -> None:
        """The response was closed: keep the connection if it can carry another request."""
        self._busy.release()
        if conn.is_idle() and not conn.has_expired():
            key = _key(conn._origin)  # httpcore keeps it private; it is the origin the request used
            self._idle.setdefault(key, {})[conn] = None
            self._lru[conn] = key
        else:
            await self._drop(conn)

    async def _drop(self, conn: httpcore.AsyncHTTPConnection) -> None:
        self._open -= 1
        with contextlib.suppress(Exception):
            await conn.aclose()

    async def aclose(self) -> None:
        conns = list(self._lru)
        self._idle.clear()
        self._lru.clear()
        for conn in conns:
            await self._drop(conn)


OriginKey: TypeAlias = tuple[bytes, bytes, int]


def _key(origin: httpcore.Origin) -> OriginKey:
    return (origin.scheme, origin.host, origin.port)  # Origin itself is not hashable


class _Released:
    """A response body that hands its connection back (once) when it is closed."""

    def __init__(self, stream: AsyncIterable[bytes], release: Callable[[], Awaitable[None]]) -> None:
        self._stream = stream
        self._release: Callable[[], Awaitable[None]] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        release, self._release = self._release, None
        if release is None:
            return
        try:
            close = getattr(self._stream, "aclose", None)
            if close is not None:
                await close()
        finally:
            await release()


class Slots:
    """A FIFO counting semaphore that is O(1) per acquire and release. asyncio.Semaphore (3.11)
    scans all its waiters on every acquire, which is quadratic when a batch of 500 deliveries
    queues for 64 slots in one turn of the loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.users = 0  # holders and waiters: SharedClient forgets a destination at zero
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we were cancelled: pass it on
            raise  # a cancelled waiter stays in the deque; release() skips it

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the next waiter
                return
        self.active -= 1


@dataclass
class SharedClient:
    """An httpx client plus the per-destination limit; use `hold(url)` around each request."""

    http: httpx.AsyncClient
    per_host: int
    _slots: dict[tuple[bytes, bytes, int | None], Slots] = field(default_factory=dict)

    @asynccontextmanager
    async def hold(self, url: httpx.URL) -> AsyncIterator[None]:
        key = (url.raw_scheme, url.raw_host, url.port)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = Slots(self.per_host)
        slot.users += 1
        try:
            await slot.acquire()
            try:
                yield
            finally:
                slot.release()
        finally:
            slot.users -= 1
            if slot.users == 0:  # forget idle destinations: the map stays as small as the traffic
                del self._slots[key]


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """One verifying context per process (it is not bound to a loop; loading the CA bundle is
    most of a client's construction cost)."""
    return httpx.create_ssl_context()


def _build(config: PoolConfig, guard: Guard | None) -> SharedClient:
    transport = httpx.AsyncHTTPTransport(verify=ssl_context(), trust_env=False)  # no second CA load
    # httpx takes neither a pool nor a network backend, so its pool is replaced by ours (httpx
    # keeps it in `_pool` and maps httpcore's exceptions around it).
    transport._pool = Pool(  # type: ignore[assignment]
        config.max_connections, GuardedBackend(guard) if guard is not None else None
    )
    # trust_env=False: no proxy from the environment (the address check must describe the real
    # peer) and no .netrc credentials sent to arbitrary hosts. Redirects are never followed.
    client = httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False)
    return SharedClient(client, config.per_host)


_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[PoolConfig, SharedClient]] = (
    weakref.WeakKeyDictionary()
)


def shared_client(config: PoolConfig, guard: Guard | None) -> SharedClient:
    """This loop's client for `config` (built on first use; `guard` is used only then)."""
    loop = asyncio.get_running_loop()
    clients = _CLIENTS.setdefault(loop, {})
    client = clients.get(config)
    if client is None or client.http.is_closed:
        client = clients[config] = _build(config, guard if config.guarded else None)
    return client


async def aclose_clients() -> None:
    """Close this loop's clients (their idle connections). Call before the loop closes: at
    app shutdown, at the end of a test. The next delivery builds a new one."""
    clients = _CLIENTS.pop(asyncio.get_running_loop(), {})
    for client in clients.values():
        await client.http.aclose()
