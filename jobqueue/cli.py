"""`jobqueue` (also `python -m jobqueue`): operate the queue from a shell or a container."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import JobQueueError
from .settings import Settings


def _engine(settings: Settings) -> Any:
    from .engine import JobQueue
    from .registry import load_registry

    return JobQueue.from_settings(settings, load_registry(settings.registry))


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


async def _with_engine(fn: Callable[[Any], Awaitable[Any]]) -> Any:
    jq = _engine(Settings())
    try:
        return await fn(jq)
    finally:
        await jq.close()


async def _worker(args: argparse.Namespace) -> int:
    """A long-running loop over the same drain (jobqueue/worker.py): sleeps only when idle; on
    SIGTERM/SIGINT it stops claiming, lets running jobs finish within their timeout, records every
    outcome and releases what it has not started."""
    from .worker import run_worker

    settings = Settings()
    jq = _engine(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log = logging.getLogger("jobqueue.worker")
    log.info("worker started (prefix %s, concurrency %d)", settings.prefix, settings.concurrency)
    try:
        await run_worker(jq, stop=stop, budget_s=args.budget, idle_s=args.idle_sleep)
    finally:
        await jq.close()
    log.info("worker stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobqueue", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("migrate", help="apply schema.sql (idempotent)")
    e = sub.add_parser("enqueue", help="enqueue one job")
    e.add_argument("type")
    e.add_argument("payload", nargs="?", default="{}", help="JSON object")
    e.add_argument("--queue")
    e.add_argument("--priority", type=int, default=5)
    e.add_argument("--delay-ms", type=int)
    e.add_argument("--max-attempts", type=int)
    e.add_argument("--idempotency-key")
    d = sub.add_parser("drain", help="run one drain and print its report")
    d.add_argument("--budget", type=float, default=None, help="seconds (default: from settings)")
    w = sub.add_parser("worker", help="drain in a loop until SIGTERM")
    w.add_argument("--budget", type=float, default=30.0, help="seconds per drain")
    w.add_argument("--idle-sleep", type=float, default=1.0, help="seconds to sleep when idle")
    s = sub.add_parser("status", help="counts per queue and state, or one job")
    s.add_argument("job_id", nargs="?", type=int)
    dlq = sub.add_parser("dlq", help="the dead-letter queue")
    dsub = dlq.add_subparsers(dest="dlq_cmd", required=True)
    dl = dsub.add_parser("list")
    dl.add_argument("--queue")
    dl.add_argument("--type")
    dl.add_argument("--limit", type=int, default=50)
    dr = dsub.add_parser("replay")
    dr.add_argument("ids", nargs="*", type=int)
    dr.add_argument("--queue")
    dr.add_argument("--type")
    dp = dsub.add_parser("purge")
    dp.add_argument("--older-than-days", type=float, required=True)
    for name in ("pause", "resume"):
        sp = sub.add_parser(name, help=f"{name} a queue")
        sp.add_argument("queue")
    r = sub.add_parser("reconcile", help="re-index unfinished jobs from Postgres into Redis")
    r.add_argument("--full", action="store_true", help="re-push everything (as after a flush)")
    up = sub.add_parser("upstash-proxy", help="an Upstash-REST-compatible server over a Redis")
    up.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    up.add_argument("--port", type=int, default=8079)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--token", required=True)
    up.add_argument("--latency-ms", type=float, default=0.0)
    return p


async def _run(args: argparse.Namespace) -> int:
    from .engine import view

    cmd = args.cmd
    if cmd == "migrate":
        from .store import Store

        settings = Settings()
        if not settings.database_url:
            raise JobQueueError("DATABASE_URL is not set")
        store = Store(settings.database_url)
        await store.migrate()
        await store.close()
        print("schema applied")
    elif cmd == "enqueue":
        req = {"type": args.type, "payload": json.loads(args.payload), "priority": args.priority}
        for k in ("queue", "delay_ms", "max_attempts", "idempotency_key"):
            if getattr(args, k) is not None:
                req[k] = getattr(args, k)
        row, created = await _with_engine(lambda jq: jq.enqueue(req))
        _print({"created": created, "job": view(row)})
    elif cmd == "drain":
        from .worker import drain_once

        report = await _with_engine(lambda jq: drain_once(jq, args.budget))
        _print(report.as_dict())
    elif cmd == "worker":
        return await _worker(args)
    elif cmd == "status":
        if args.job_id is not None:
            _print(view(await _with_engine(lambda jq: jq.get(args.job_id))))
        else:
            _print(await _with_engine(lambda jq: jq.queue_counts()))
    elif cmd == "dlq":
        if args.dlq_cmd == "list":
            rows, _ = await _with_engine(
                lambda jq: jq.list_jobs(status="failed", queue=args.queue, type=args.type, limit=args.limit)
            )
            _print([view(r) for r in rows])
        elif args.dlq_cmd == "replay":
            n = await _with_engine(lambda jq: jq.replay(args.ids or None, queue=args.queue, type=args.type))
            _print({"replayed": n})
        else:
            _print({"purged": await _with_engine(lambda jq: jq.purge(args.older_than_days))})
    elif cmd in ("pause", "resume"):
        await _with_engine(lambda jq: jq.set_paused(args.queue, cmd == "pause"))
        _print({"queue": args.queue, "paused": cmd == "pause"})
    elif cmd == "reconcile":
        _print(await _with_engine(lambda jq: jq.reconcile(full=args.full)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.cmd == "upstash-proxy":
        from .upstash_proxy import serve

        serve(args.redis, args.port, args.token, args.latency_ms, args.host)
        return 0
    try:
        return asyncio.run(_run(args))
    except JobQueueError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
