"""webhook.deliver over real sockets: receivers are asyncio servers on loopback started in each
test (tests/helpers/receivers.py), no respx. Covers the connect-time address check (DNS
rebinding), slow and hostile receivers, the shared per-loop client and its pool limits, and a
drain of a default batch of 500 webhooks with the event loop's lag measured."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue.builtins import http, webhook
from jobqueue.builtins.webhook import DeliveryFailed, WebhookPayload, deliver
from jobqueue.engine import JobQueue
from jobqueue.errors import PermanentError
from jobqueue.registry import JobContext
from jobqueue.settings import Settings
from tests.helpers.loop_lag import LoopLag
from tests.helpers.receivers import OK, Receiver, Request

PRIVATE_OK = Settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True)


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    await http.aclose_clients()  # before pytest closes the loop, so no socket outlives it


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    started: list[Receiver] = []

    async def start(*args: Any, **kw: Any) -> Receiver:
        port = kw.pop("port", 0)
        r = await Receiver(*args, **kw).start(port)
        started.append(r)
        return r

    yield start
    for r in started:
        await r.stop()


def ctx(settings: Settings = PRIVATE_OK, left_s: float = 5, job_id: int = 1) -> JobContext:
    async def enqueue(req: Any) -> Any:
        raise AssertionError

    return JobContext(
        job_id, "webhook.deliver", "default", 1, 12, asyncio.get_running_loop().time() + left_s, enqueue, settings
    )


async def send(url: str, context: JobContext | None = None, **payload: Any) -> dict[str, int]:
    return await deliver(WebhookPayload.model_validate({"url": url, **payload}), context or ctx())


# --- DNS rebinding: the socket goes where the check looked -------------------------------------------


@pytest.fixture
async def resolver(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`rebind.example` answers 127.0.0.2 (which these tests treat as a public address) on its
    first lookup and 127.0.0.1 (loopback) on every later one; literals answer themselves. It
    replaces the running loop's getaddrinfo, which both the check and the HTTP stack use.
    Returns the names looked up."""
    loop = asyncio.get_running_loop()
    looked_up: list[str] = []

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kw: Any) -> list[Any]:
        host = host.decode() if isinstance(host, bytes) else host
        try:
            ipaddress.ip_address(host)
            address = host
        except ValueError:
            looked_up.append(host)
            address = "127.0.0.2" if looked_up.count(host) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    real = webhook.refusal_reason
    monkeypatch.setattr(webhook, "refusal_reason", lambda ip: None if str(ip) == "127.0.0.2" else real(ip))
    return looked_up


async def test_dns_rebinding_cannot_redirect_the_connection_to_a_private_address(
    receivers: Callable[..., Awaitable[Receiver]], resolver: list[str]
) -> None:
    public = await receivers(host="127.0.0.2")
    private = await receivers(host="127.0.0.1", port=public.port)
    result = await send(f"http://rebind.example:{public.port}/hook", ctx(Settings()))
    assert result["status_code"] == 200
    # One lookup, checked, then connected to: the second (private) answer is never used.
    assert resolver == ["rebind.example"]
    assert [r.peer for r in public.requests] == ["127.0.0.2"] and private.requests == []
    assert public.requests[0].header("host") == f"rebind.example:{public.port}"  # the name, not the IP


async def test_name_resolving_to_a_private_address_is_refused_at_connect(
    receivers: Callable[..., Awaitable[Receiver]], resolver: list[str]
) -> None:
    private = await receivers(host="127.0.0.1")
    resolver.append("rebind.example")  # the next answer is the private one
    with pytest.raises(PermanentError, match=r"rebind\.example: 127\.0\.0\.1 is a loopback address"):
        await send(f"http://rebind.example:{private.port}/hook", ctx(Settings()))
    assert private.connections == 0


async def test_localhost_is_refused_through_the_real_resolver() -> None:
    with pytest.raises(PermanentError, match=r"refusing to deliver to localhost: .* is a loopback address"):
        await send("http://localhost:9/hook", ctx(Settings()))


# --- slow and hostile receivers -----------------------------------------------------------------------


async def trickle_headers(writer: asyncio.StreamWriter, request: Request) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 1000:  # a byte every 0.3 s, never finishing
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.3)


async def test_receiver_trickling_bytes_ends_at_the_job_timeout(receivers: Callable[..., Awaitable[Receiver]]) -> None:
    # Every read gets a byte well inside httpx's per-read timeout; only an overall deadline ends it.
    slow = await receivers(trickle_headers)
    t0 = time.monotonic()
    with pytest.raises(DeliveryFailed, match=r"no complete response from 127\.0\.0\.1 within the job's timeout"):
        async with asyncio.timeout(10):
            await send(slow.url(), ctx(left_s=1.5))
    assert 1.3 < time.monotonic() - t0 < 2.5


async def never_answer(writer: asyncio.StreamWriter, request: Request) -> None:
    await asyncio.sleep(3600)


async def test_receiver_holding_the_connection_open_ends_at_the_job_timeout(
    receivers: Callable[..., Awaitable[Receiver]],
) -> None:
    silent = await receivers(never_answer)
    t0 = time.monotonic()
    with pytest.raises(DeliveryFailed):
        await send(silent.url(), ctx(left_s=1))
    assert time.monotonic() - t0 < 2


def huge_body(status: bytes, receiver: list[Receiver]) -> Callable[[asyncio.StreamWriter, Request], Awaitable[None]]:
    async def respond(writer: asyncio.StreamWriter, request: Request) -> None:
        size = 50 * 1024 * 1024
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(size).encode() + b"\r\n\r\n")
        chunk = b"x" * 65536
        for _ in range(size // len(chunk)):
            writer.write(chunk)
            await writer.drain()
            receiver[0].bytes_sent += len(chunk)

    return respond


@pytest.mark.parametrize("status", [b"200 OK", b"500 Internal Server Error"])
async def test_receiver_sending_a_huge_body_is_not_read(
    receivers: Callable[..., Awaitable[Receiver]], status: bytes
) -> None:
    holder: list[Receiver] = []
    big = await receivers(huge_body(status, holder))
    holder.append(big)
    t0 = time.monotonic()
    if status.startswith(b"2"):
        assert (await send(big.url()))["status_code"] == 200
    else:
        with pytest.raises(DeliveryFailed, match=r"^HTTP 500: xxxx") as e:
            await send(big.url())
        assert len(str(e.value)) == len("HTTP 500: ") + 500
    assert time.monotonic() - t0 < 1.5
    await asyncio.sleep(0.2)  # let the receiver notice the closed connection
    # What the socket buffers took before the client closed, far from the 50 MB on offer.
    assert big.bytes_sent < 16 * 1024 * 1024
    assert big.open == 0


async def test_a_hung_receiver_does_not_hold_up_other_deliveries_or_the_drain(
    receivers: Callable[..., Awaitable[Receiver]], make_jq: Callable[..., JobQueue]
) -> None:
    jq = make_jq(transport="redis", WEBHOOK_ALLOW_PRIVATE_NETWORKS=True)
    silent, good = await receivers(never_answer), await receivers()
    jobs = [{"type": "webhook.deliver", "payload": {"url": silent.url()}, "timeout_ms": 1000}]
    jobs += [{"type": "webhook.deliver", "payload": {"url": good.url(), "data": {"n": i}}} for i in range(50)]
    await jq.enqueue_many(jobs)
    t0 = time.monotonic()
    report = await jq.drain(10)
    assert (report.completed, report.retried) == (50, 1)
    assert time.monotonic() - t0 < 3
    assert len(good.requests) == 50


# --- the shared client ---------------------------------------------------------------------------------


def hold_response(delay_s: float) -> Callable[[asyncio.StreamWriter, Request], Awaitable[None]]:
    async def respond(writer: asyncio.StreamWriter, request: Request) -> None:
        await asyncio.sleep(delay_s)
        writer.write(OK)
        await writer.drain()

    return respond


async def test_connections_are_kept_alive_and_capped_per_destination(
    receivers: Callable[..., Awaitable[Receiver]],
) -> None:
    slow = await receivers(hold_response(0.05))
    settings = Settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, WEBHOOK_MAX_CONNECTIONS_PER_HOST=4)
    results = await asyncio.gather(*(send(slow.url(), ctx(settings, job_id=i)) for i in range(40)))
    assert [r["status_code"] for r in results] == [200] * 40
    assert len(slow.requests) == 40
    assert slow.max_open <= 4 and slow.connections <= 4  # at most 4 at once, each reused


async def test_the_global_connection_cap_holds_across_destinations(
    receivers: Callable[..., Awaitable[Receiver]],
) -> None:
    busy = {"now": 0, "max": 0}

    async def counted(writer: asyncio.StreamWriter, request: Request) -> None:
        busy["now"] += 1
        busy["max"] = max(busy["max"], busy["now"])
        await asyncio.sleep(0.05)
        busy["now"] -= 1
        writer.write(OK)
        await writer.drain()

    servers = [await receivers(counted) for _ in range(4)]
    settings = Settings(WEBHOOK_ALLOW_PRIVATE_NETWORKS=True, WEBHOOK_MAX_CONNECTIONS=3)
    await asyncio.gather(*(send(s.url(), ctx(settings)) for s in servers for _ in range(5)))
    assert sum(len(s.requests) for s in servers) == 20
    assert busy["max"] == 3  # three requests at once across all destinations, never more


def test_each_event_loop_gets_its_own_client() -> None:
    # A client's sockets belong to its loop: a new loop (Mangum, asyncio.run) must build anew.
    config = http.PoolConfig()

    async def twice() -> tuple[http.SharedClient, http.SharedClient]:
        try:
            return http.shared_client(config, None), http.shared_client(config, None)
        finally:
            await http.aclose_clients()

    a1, a2 = asyncio.run(twice())
    b1, _ = asyncio.run(twice())
    assert a1 is a2 and b1 is not a1


# --- a default batch at production rates ---------------------------------------------------------


@pytest.fixture
def fast_receiver() -> Iterator[str]:
    """A receiver in its own process (answers 200 at once): its work must not count as our lag."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.receivers"], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    yield f"http://127.0.0.1:{port}/hook"
    proc.terminate()
    proc.wait(10)
    proc.stdout.close()


async def test_a_drain_of_500_webhooks_completes_without_stalling_the_event_loop(
    fast_receiver: str, make_jq: Callable[..., JobQueue]
) -> None:
    # The old code built a client per delivery: 500 of them in one turn of the loop held it for
    # seconds, and the drain's own Postgres statement timed out behind them (a 503).
    jq = make_jq(transport="redis", WEBHOOK_ALLOW_PRIVATE_NETWORKS=True)
    await jq.drain(1)  # the first drain of a fresh Redis rebuilds the index; a running system has one
    jobs = [{"type": "webhook.deliver", "payload": {"url": fast_receiver, "data": {"n": i}}} for i in range(500)]
    await jq.enqueue_many(jobs)
    # The collector's walk over pytest's own heap (a gen-2 pass takes 70-130 ms here) is not the
    # drain's doing: freeze what exists, so only what the drain allocates is collected.
    gc.collect()
    gc.freeze()
    http.ssl_context()  # once per process (20 ms, loading the CA bundle), not per delivery or batch
    try:
        async with LoopLag() as lag:
            report = await jq.drain(30)
    finally:
        gc.unfreeze()
    assert (report.claimed, report.completed, report.retried, report.failed) == (500, 500, 0, 0)
    print(f"max loop lag {lag.max_ms:.0f} ms over {lag.samples} samples")
    assert lag.samples > 0 and lag.max_ms < 100, f"the event loop stalled for {lag.max_ms:.0f} ms"
