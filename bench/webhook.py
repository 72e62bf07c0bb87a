"""webhook.deliver benchmark: deliveries per second from one process, next to `echo` in the same run.

A local receiver runs in a separate process (a bare asyncio HTTP/1.1 server on loopback that
answers 200 at once and counts what it saw); N `webhook.deliver` jobs are enqueued with
WEBHOOK_ALLOW_PRIVATE_NETWORKS=1 and drained with `JobQueue.drain()`, then N `echo` jobs, then a
mixed workload (90 % webhooks, 10 % echo), at each batch size. Only the engine's public calls are
used (`JobQueue`, `enqueue_many`, `drain`). Redis is reached through the production transport (the
upstash-redis SDK via a local `jobqueue upstash-proxy`) unless `--transport redis`.

    python -m bench.webhook [--jobs 5000] [--batch 100 500] [--transport upstash|redis]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from contextlib import ExitStack
from typing import Any

import httpx

from jobqueue.builtins import default_registry
from jobqueue.engine import JobQueue
from jobqueue.settings import Settings
from jobqueue.store import Store
from jobqueue.transports import RedisPyTransport, UpstashTransport

from .common import REDIS_URL, TOKEN, clean_prefix, create_db, drop_db, new_prefix, upstash_proxy

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class Receiver(asyncio.Protocol):
    """Answers every POST 200 at once; `GET /stats` answers what it has seen (and resets)."""

    stats: dict[str, Any] = {"requests": 0, "connections": 0, "first": None, "last": None}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""
        self.stats["connections"] += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            if head.startswith(b"get /stats"):
                body = json.dumps(self.stats).encode()
                Receiver.stats = {"requests": 0, "connections": 0, "first": None, "last": None}
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                continue
            now = time.time()
            self.stats["requests"] += 1
            self.stats["first"] = self.stats["first"] or now
            self.stats["last"] = now
            self.transport.write(OK)


async def serve() -> None:
    server = await asyncio.get_running_loop().create_server(Receiver, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def receiver_process(stack: ExitStack) -> str:
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "bench.webhook", "--serve"], stdout=subprocess.PIPE)
    stack.callback(proc.wait, 10)
    stack.callback(proc.terminate)
    assert proc.stdout is not None
    return f"http://127.0.0.1:{int(proc.stdout.readline())}"


async def receiver_view(base: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as c:
        s: dict[str, Any] = (await c.get(f"{base}/stats")).json()
    span = (s["last"] - s["first"]) if s["first"] else 0
    return {
        "requests": s["requests"],
        "connections": s["connections"],
        "per_s": round(s["requests"] / span) if span else None,
    }


def jobs(n: int, hook_share: float, url: str) -> list[dict[str, Any]]:
    every = round(1 / (1 - hook_share)) if hook_share < 1 else 0  # one echo in `every`
    out = []
    for i in range(n):
        if every and i % every == 0:
            out.append({"type": "echo", "payload": {"i": i}})
        else:
            out.append({"type": "webhook.deliver", "payload": {"url": url, "event": "bench", "data": {"i": i}}})
    return out


async def scenario(jq: JobQueue, name: str, reqs: list[dict[str, Any]], receiver: str) -> dict[str, Any]:
    for i in range(0, len(reqs), 1000):
        await jq.enqueue_many(reqs[i : i + 1000])
    await receiver_view(receiver)  # reset its counters
    t0 = time.perf_counter()
    done = 0
    while done < len(reqs):
        report = await jq.drain(60)
        done += report.completed + report.failed
        if report.claimed == 0 and not report.more:
            break
    dt = time.perf_counter() - t0
    return {
        "scenario": name,
        "jobs": len(reqs),
        "completed": done,
        "seconds": round(dt, 2),
        "jobs_per_s": round(done / dt),
        "receiver": await receiver_view(receiver),
    }


async def run_batch(batch: int, n: int, transport: str, receiver: str, proxy: str | None) -> list[dict[str, Any]]:
    name = "jobqueue_bench_webhook"
    url = await create_db(name)
    prefix = new_prefix()
    settings = Settings(
        DATABASE_URL=url,
        JOBQUEUE_PREFIX=prefix,
        JOBQUEUE_BATCH_SIZE=batch,
        WEBHOOK_ALLOW_PRIVATE_NETWORKS=True,
    )
    redis: Any = UpstashTransport(proxy, TOKEN) if proxy else RedisPyTransport.from_url(REDIS_URL)
    jq = JobQueue(Store(url, pool_max=4), redis, default_registry(), settings)
    hook = f"{receiver}/hook"
    out = []
    try:
        await jq.drain(2)  # builds the index (epoch marker)
        for label, share in (("webhook.deliver", 1.0), ("echo", 0.0), ("mixed 90/10", 0.9)):
            res = await scenario(jq, label, jobs(n, share, hook), receiver)
            out.append({"batch": batch, "transport": transport, **res})
            print(json.dumps(out[-1]), flush=True)
    finally:
        await jq.close()
        clean_prefix(prefix)
        await drop_db(name)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--batch", type=int, nargs="+", default=[100, 500])
    p.add_argument("--transport", choices=["upstash", "redis"], default="upstash")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        asyncio.run(serve())
        return
    import logging

    logging.basicConfig(level=logging.WARNING)
    with ExitStack() as stack:
        receiver = receiver_process(stack)
        proxy = stack.enter_context(upstash_proxy()) if a.transport == "upstash" else None
        for batch in a.batch:
            asyncio.run(run_batch(batch, a.jobs, a.transport, receiver, proxy))


if __name__ == "__main__":
    main()
