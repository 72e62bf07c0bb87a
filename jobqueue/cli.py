"""`jobqueue` (also `python -m jobqueue`): operate the queue from a shell or a container.

It talks to Postgres and Redis directly (in-process, as the service does), configured by the same
environment: DATABASE_URL, REDIS_URL or UPSTASH_REDIS_REST_URL/_TOKEN, JOBQUEUE_*. Answers are
JSON on stdout; an error is one line `error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .errors import JobQueueError
from .settings import Settings

CLEAR = "none"  # as jobqueue.queue_admin.CLEAR (not imported: it loads pydantic)


class UsageError(JobQueueError):
    """The command line is not valid."""


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
    from .worker import Liveness, run_worker

    settings = Settings()
    jq = _engine(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log = logging.getLogger("jobqueue.worker")
    live = Liveness()
    port = args.port if args.port is not None else (int(os.environ["PORT"]) if os.environ.get("PORT") else None)
    if port is not None:
        try:
            await live.start(args.host, port)
        except OSError as e:
            await jq.close()
            raise UsageError(f"cannot listen on {args.host}:{port} for the health check ({e.strerror})") from None
    where = f", health on http://{args.host}:{port}/" if port is not None else ""
    log.info("worker started (prefix %s, concurrency %d%s)", settings.prefix, settings.concurrency, where)
    try:
        await run_worker(
            jq,
            stop=stop,
            budget_s=args.budget,
            idle_s=args.idle_sleep,
            on_report=live.on_report,
            on_error=live.on_error,
        )
    finally:
        await live.close()
        await jq.close()
    log.info("worker stopped")
    return 0


# --- the command line ----------------------------------------------------------------------------


class _Version(argparse.Action):
    """`--version`, read from the installed package's metadata only when asked for (importing
    importlib.metadata on every command would slow them all)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("jobqueue")
        except PackageNotFoundError:  # run from a source tree that was never installed
            v = "unknown (not installed)"
        print(f"{parser.prog} {v}")
        parser.exit()


def _priority(value: str) -> int | str:
    """0-9, or a name the server knows (low, normal, high, urgent: DESIGN.md section 8)."""
    return int(value) if value.lstrip("-").isdigit() else value


def _filters(p: argparse.ArgumentParser, what: str = "jobs") -> None:
    p.add_argument("--queue", help=f"only {what} of this queue")
    p.add_argument("--type", help=f"only {what} of this job type")


def _command(sub: Any, name: str, does: str) -> argparse.ArgumentParser:
    """A subcommand whose one-line help is also the description of its own --help."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=does, description=does[0].upper() + does[1:] + ".")
    return parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jobqueue", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action=_Version, help="print the installed version and exit")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    _command(sub, "migrate", "apply the shipped migrations this database has not had (idempotent, serialised)")

    e = _command(sub, "enqueue", "enqueue one job; prints whether it was created and the job")
    e.add_argument("type", help="the job type, as registered (e.g. echo)")
    e.add_argument("payload", nargs="?", default="{}", help="the payload, a JSON object (default {})")
    e.add_argument("--queue", help="the queue (default: the job type's)")
    e.add_argument("--priority", type=_priority, help="0-9, higher runs first (default 5)")
    e.add_argument("--delay-ms", type=int, help="run no sooner than this many milliseconds from now")
    e.add_argument("--max-attempts", type=int, help="attempts before the job fails (default: the job type's)")
    e.add_argument("--idempotency-key", help="a key seen before in the queue answers that job instead")

    ls = _command(sub, "list", "list jobs, newest first, one page at a time")
    ls.add_argument("--status", help="only jobs in this state (pending, scheduled, processing, completed, ...)")
    _filters(ls)
    ls.add_argument("--limit", type=int, default=50, help="page size, 1-200 (default 50)")
    ls.add_argument("--cursor", help="the next_cursor of the previous page, for the next (older) one")

    st = _command(sub, "status", "counts per queue and state, or one job")
    st.add_argument("job_id", nargs="?", type=int, metavar="ID", help="show this job instead of the counts")
    c = _command(sub, "cancel", "cancel a pending or scheduled job; prints the job")
    c.add_argument("job_id", type=int, metavar="ID", help="the job's id")
    r = _command(sub, "retry", "re-run a failed or cancelled job with fresh attempts; prints the job")
    r.add_argument("job_id", type=int, metavar="ID", help="the job's id")

    d = _command(sub, "drain", "run one drain and print its report")
    d.add_argument("--budget", type=float, default=None, help="seconds (default: from settings)")
    w = _command(sub, "worker", "drain in a loop until SIGTERM/SIGINT, then stop gracefully")
    w.add_argument("--budget", type=float, default=30.0, help="seconds per drain (default 30)")
    w.add_argument("--idle-sleep", type=float, default=1.0, help="seconds to sleep when idle (default 1)")
    w.add_argument("--port", type=int, default=None, help="serve a health check on this port (PORT; default: none)")
    w.add_argument("--host", default="0.0.0.0", help="address of the health check (default 0.0.0.0)")

    dlq = _command(sub, "dlq", "the dead-letter queue (failed jobs)")
    dsub = dlq.add_subparsers(dest="dlq_cmd", required=True, metavar="ACTION")
    dl = _command(dsub, "list", "the newest failed jobs (page with: jobqueue list --status failed)")
    _filters(dl, "failed jobs")
    dl.add_argument("--limit", type=int, default=50, help="how many, 1-200 (default 50)")
    dr = _command(dsub, "replay", "re-run failed jobs with fresh attempts: by ids, by filter, or --all")
    dr.add_argument("ids", nargs="*", type=int, metavar="ID", help="the failed jobs to replay")
    _filters(dr, "failed jobs")
    dr.add_argument("--all", action="store_true", help="replay every failed job (required when no id or filter)")
    dp = _command(dsub, "purge", "delete failed jobs that failed more than N days ago")
    dp.add_argument("--older-than-days", type=float, required=True, metavar="N", help="age of the failure in days")

    for name, does in (("pause", "stop draining a queue; its jobs stay safe"), ("resume", "drain a queue again")):
        sp = _command(sub, name, does)
        sp.add_argument("queue", help="the queue's name")

    qs = _command(sub, "queues", "every queue with its counts and settings (or: queues set NAME ... to change them)")
    qsub = qs.add_subparsers(dest="queues_cmd", required=False, metavar="ACTION")
    _command(qsub, "list", "every queue with its counts, pause flag and settings (the default)")
    qset = _command(qsub, "set", f"change a queue's settings (options not given stay; '{CLEAR}' clears one); prints it")
    qset.add_argument("queue", metavar="NAME", help="the queue's name")
    for flag, metavar, does in QUEUE_OPTIONS:
        qset.add_argument(flag, metavar=metavar, help=f"{does}; '{CLEAR}' clears it")

    sch = _command(sub, "schedules", "recurring jobs: list, sync the code's, pause, resume, trigger, delete")
    ssub = sch.add_subparsers(dest="schedules_cmd", required=True, metavar="ACTION")
    _command(ssub, "list", "every schedule with its next and last run")
    _command(ssub, "sync", "write the schedules declared in code (JOBQUEUE_REGISTRY) to Postgres; fires nothing")
    for action, does in (
        ("pause", "stop firing a schedule"),
        ("resume", "fire a paused schedule again (its misfire policy decides about missed ticks)"),
        ("trigger", "enqueue one job of a schedule now; prints the job"),
        ("delete", "delete a schedule (its jobs stay)"),
    ):
        _command(ssub, action, does).add_argument("schedule_id", metavar="ID", help="the schedule's id")

    rc = _command(sub, "reconcile", "re-index unfinished jobs from Postgres into Redis")
    rc.add_argument("--full", action="store_true", help="re-push everything (as after a flush)")

    up = _command(sub, "upstash-proxy", "an Upstash-REST-compatible server over a Redis")
    up.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="the Redis to serve (default: local)")
    up.add_argument("--port", type=int, default=8079, help="port to listen on (default 8079)")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--token", required=True, help="the bearer token clients must send")
    up.add_argument("--latency-ms", type=float, default=0.0, help="added delay per request, to mimic a network")
    return p


# --flag, metavar, help: the options of `queues set` (jobqueue/queue_admin.py reads their values).
QUEUE_OPTIONS = (
    ("--concurrency", "N", "at most N of the queue's jobs run at once, across all drains"),
    ("--rate", "LIMIT/PERIOD_MS[/BURST]", "at most LIMIT starts per PERIOD_MS on average, BURST at once (default 1)"),
    ("--group-concurrency", "N", "at most N jobs of each group run at once"),
    ("--group-rate", "LIMIT/PERIOD_MS[/BURST]", "the same rate, per group"),
    ("--aging-ms", "MS", "a waiting job gains one priority level per MS milliseconds"),
    ("--max-attempts", "N", "default attempts for jobs whose request and type set none (1-100)"),
    ("--timeout-ms", "MS", "default timeout for jobs whose request and type set none"),
    ("--retain-completed-days", "DAYS", "keep completed jobs at most DAYS (retention.completed.age_days)"),
    ("--retain-failed-days", "DAYS", "keep failed jobs at most DAYS (retention.failed.age_days)"),
)


def _queue_view(q: dict[str, Any]) -> dict[str, Any]:
    """A queue as GET /api/queues shows it (every setting present, null when not set)."""
    from .models import QueueSettings

    settings = QueueSettings.model_validate(q.get("settings") or {}).model_dump(mode="json")
    return {"name": q["name"], "paused": q["paused"], "counts": q["counts"], "settings": settings}


async def _queues(jq: Any, args: argparse.Namespace) -> Any:
    from .queue_admin import parse_option, settings_patch

    if args.queues_cmd != "set":
        return [_queue_view(q) for q in (await jq.queue_counts()).values()]
    changes = {}
    for flag, _, _ in QUEUE_OPTIONS:
        name = flag.removeprefix("--").replace("-", "_")
        if getattr(args, name) is not None:
            changes[name] = parse_option(name, getattr(args, name))
    if not changes:
        raise UsageError("queues set changes nothing without an option: see jobqueue queues set --help")
    await jq.set_queue_settings(args.queue, settings_patch(await jq.queue_settings(args.queue), changes))
    counts = await jq.queue_counts()
    return _queue_view(counts.get(args.queue) or {"name": args.queue, "paused": False, "counts": {}, "settings": {}})


def _replay_args(args: argparse.Namespace) -> tuple[list[int] | None, str | None, str | None]:
    """What `dlq replay` replays. Nothing given is refused, as the HTTP API refuses `{}`: a
    forgotten argument must not re-run the whole dead-letter queue."""
    has_filter = args.queue is not None or args.type is not None
    if args.all:
        if args.ids or has_filter:
            raise UsageError("--all replays every failed job; give it no ids, --queue or --type")
        return None, None, None
    if args.ids and has_filter:
        raise UsageError("give ids or --queue/--type, not both")
    if not args.ids and not has_filter:
        raise UsageError("dlq replay needs ids, --queue and/or --type, or --all to replay every failed job")
    return (args.ids or None), args.queue, args.type


async def _list(jq: Any, args: argparse.Namespace) -> dict[str, Any]:
    from .engine import view

    # The API's own cursor codec, so that a cursor from `GET /api/jobs` works here and back.
    from .validation import decode_cursor, encode_cursor

    rows, last = await jq.list_jobs(
        status=args.status, queue=args.queue, type=args.type, limit=args.limit, cursor=decode_cursor(args.cursor)
    )
    return {"jobs": [view(r) for r in rows], "next_cursor": encode_cursor(last)}


async def _run(args: argparse.Namespace) -> int:
    from .engine import view

    cmd = args.cmd
    if cmd == "migrate":
        from .store import Store, migrations

        settings = Settings()
        if not settings.database_url:
            raise JobQueueError("DATABASE_URL is not set")
        store = Store(settings.database_url)
        try:
            applied = await store.migrate()
        finally:
            await store.close()
        names = {m.version: m.name for m in migrations()}
        for v in applied:
            print(f"applied {v:04d}_{names[v]}")
        print(f"schema applied: at migration {max(names):04d}" + ("" if applied else " (nothing to do)"))
        # The deploy step also syncs the schedules the code declares (they never fire here).
        synced = await _with_engine(lambda jq: jq.schedules.sync())
        if synced:
            print(f"schedules synced: {synced} changed")
    elif cmd == "enqueue":
        try:
            payload = json.loads(args.payload)
        except ValueError as e:
            raise UsageError(f"the payload is not JSON: {e}") from None
        req = {"type": args.type, "payload": payload}
        for k in ("queue", "priority", "delay_ms", "max_attempts", "idempotency_key"):
            if getattr(args, k) is not None:
                req[k] = getattr(args, k)
        row, created = await _with_engine(lambda jq: jq.enqueue(req))
        _print({"created": created, "job": view(row)})
    elif cmd == "list":
        _print(await _with_engine(lambda jq: _list(jq, args)))
    elif cmd == "cancel":
        _print(view(await _with_engine(lambda jq: jq.cancel(args.job_id))))
    elif cmd == "retry":
        _print(view(await _with_engine(lambda jq: jq.retry(args.job_id))))
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
            ids, queue, type_ = _replay_args(args)
            n = await _with_engine(lambda jq: jq.replay(ids, queue=queue, type=type_))
            _print({"replayed": n})
        else:
            _print({"purged": await _with_engine(lambda jq: jq.purge(args.older_than_days))})
    elif cmd in ("pause", "resume"):
        await _with_engine(lambda jq: jq.set_paused(args.queue, cmd == "pause"))
        _print({"queue": args.queue, "paused": cmd == "pause"})
    elif cmd == "queues":
        _print(await _with_engine(lambda jq: _queues(jq, args)))
    elif cmd == "schedules":
        _print(await _with_engine(lambda jq: _schedules(jq, args)))
    elif cmd == "reconcile":
        _print(await _with_engine(lambda jq: jq.reconcile(full=args.full)))
    return 0


async def _schedules(jq: Any, args: argparse.Namespace) -> Any:
    from .engine import view

    action = args.schedules_cmd
    if action == "list":
        return [s.model_dump(mode="json") for s in await jq.schedules.all()]
    if action == "sync":
        changed = await jq.schedules.sync()
        return {"declared": len(jq.registry.schedules), "changed": changed}
    if action == "trigger":
        return view(await jq.schedules.trigger(args.schedule_id))
    if action == "delete":
        await jq.schedules.delete(args.schedule_id)
        return {"deleted": args.schedule_id}
    return (await jq.schedules.set_paused(args.schedule_id, action == "pause")).model_dump(mode="json")


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
