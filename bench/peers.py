"""This project next to its peers (pgqueuer, procrastinate, RQ, BullMQ) on the same Postgres and Redis.

    python -m bench.peers [--jobs 5000] [--single 1000] [--only rq,bullmq] [--repeat 3] [--max-minutes 45]
                          [--skip-install] [--json PATH]

Each system enqueues `--single` no-op jobs one by one, `--jobs` in calls of 1000, then runs its
worker until all of them are done (the scratch database is ANALYZEd before the drain, outside the
timing). Each system runs in a child process driven phase by phase (bench/peers_child.py):
`--repeat` timed passes straight to Postgres and Redis, in rounds that alternate the systems'
order, which give the throughput (medians); then one counting pass,
which gives the costs: Redis commands as `INFO commandstats` deltas checked against MONITOR on our
database number, Postgres statements from a protocol-counting proxy (bench/peers_count.py).
The peers are installed into a scratch directory outside the repository (bench/peers_install.py).
Redis database 7 (BENCH_PEERS_REDIS_URL) is flushed before and after each pass, and the scratch
databases jqpeers_* are dropped after it. A phase that fails or outlasts --timeout ends that
system's pass, and its error goes into the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import asyncpg
import redis

from .peers_child import MARK
from .peers_count import Monitor, PgCounter, commandstats_total
from .peers_install import REPO, install, node_modules, node_version, run_checked, scratch_python, versions
from .peers_table import median_pass, render

ADMIN_URL = os.environ.get("BENCH_PEERS_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_PEERS_REDIS_URL", "redis://127.0.0.1:6379/7")
TOKEN = "bench-peers-token"
PHASES = ("single", "bulk", "drain")
# name -> (runner, uses Postgres, uses Redis)
SYSTEMS: dict[str, tuple[str, bool, bool]] = {
    "jobqueue-upstash": ("jq", True, True),
    "jobqueue-redis": ("jq", True, True),
    "pgqueuer": ("py", True, False),
    "procrastinate": ("py", True, False),
    "rq": ("py", False, True),
    "bullmq": ("js", False, True),
}
# Variables that would point a child somewhere else than where this run says.
SCRUB = ("DATABASE_URL", "REDIS_URL", "UPSTASH_", "KV_", "JOBQUEUE_", "PGDATABASE", "PGHOST", "PGPORT")


def worker_modes(args: argparse.Namespace) -> dict[str, str]:
    jq = "`drain(budget_s)` until all ran (the defaults: claims of up to 500, 1000 slots, at most 750 for one queue)"
    return {
        "jobqueue-upstash": jq + ", Upstash REST via local proxy",
        "jobqueue-redis": jq + ", redis-py",
        "pgqueuer": f"`QueueManager.run(mode=drain, batch_size={args.pgqueuer_batch})`, asyncpg",
        "procrastinate": f"`run_worker_async(wait=False, concurrency={args.procrastinate_concurrency})`, psycopg",
        "rq": "`SimpleWorker.work(burst=True)`, one process, sync",
        "bullmq": f"`Worker` concurrency {args.bullmq_concurrency}, node {node_version()}",
    }


# --- one system, one pass --------------------------------------------------------------------


def db_url(name: str, port: int | None = None) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    if port is not None:
        scheme, _, rest = base.partition("://")
        cred, _, _ = rest.rpartition("@")
        base = f"{scheme}://{cred + '@' if cred else ''}127.0.0.1:{port}"
    return f"{base}/{name}"


async def admin(sql: str, url: str = ADMIN_URL) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def flush_redis() -> None:
    r = redis.Redis.from_url(REDIS_URL)
    try:
        r.flushdb()  # only our database number
    finally:
        r.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def upstash_proxy() -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    cmd = ["-m", "jobqueue", "upstash-proxy", "--redis", REDIS_URL, "--port", str(port), "--token", TOKEN]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(200):
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, f"http://127.0.0.1:{port}"
        await asyncio.sleep(0.05)
    proc.kill()
    raise RuntimeError("the upstash proxy did not start")


def child_command(name: str) -> tuple[list[str], dict[str, str]]:
    runner = SYSTEMS[name][0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUB)}
    if runner == "jq":
        return [sys.executable, "-m", "bench.peers_jq"], env
    if runner == "py":
        if not scratch_python().exists():
            raise RuntimeError(f"not installed: {scratch_python()} (run without --skip-install)")
        return [str(scratch_python()), "-m", "bench.peers_pyrun"], env
    if not (node_modules() / "bullmq").exists():
        raise RuntimeError(f"not installed: {node_modules() / 'bullmq'} (run without --skip-install)")
    env["NODE_PATH"] = str(node_modules())
    return ["node", str(REPO / "bench" / "peers_js" / "bullmq.js")], env


class Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr: deque[str] = deque(maxlen=40)
        self._err_task = asyncio.create_task(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr.append(line.decode(errors="replace").rstrip())

    async def event(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            line = (await asyncio.wait_for(self.proc.stdout.readline(), left)).decode(errors="replace")
            if not line:
                await asyncio.wait_for(self.proc.wait(), 10)
                tail = " | ".join(list(self.stderr)[-5:])
                raise RuntimeError(f"the child exited ({self.proc.returncode}) {tail}".strip())
            if line.startswith(MARK):
                return dict(json.loads(line[len(MARK) :]))

    async def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 10)
        self._err_task.cancel()


async def run_pass(name: str, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """kind: "timed" (straight to the servers) or "count" (Postgres proxy, Redis MONITOR)."""
    _, uses_pg, uses_redis = SYSTEMS[name]
    jobs = args.jobs if kind == "timed" else args.count_jobs
    db = "jqpeers_" + name.replace("-", "_")
    out: dict[str, Any] = {"jobs": jobs, "single": args.single, "phases": {}, "error": None}
    counter: PgCounter | None = None
    monitor: Monitor | None = None
    proxy: asyncio.subprocess.Process | None = None
    child: Child | None = None
    await asyncio.to_thread(flush_redis)
    try:
        if uses_pg:
            await admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            await admin(f"CREATE DATABASE {db}")
        pg = db_url(db)
        if SYSTEMS[name][0] == "jq":
            env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUB)}
            env |= {"DATABASE_URL": pg, "REDIS_URL": REDIS_URL}  # migrate syncs schedules to Redis too
            await asyncio.to_thread(run_checked, [sys.executable, "-m", "jobqueue", "migrate"], 120, env=env, cwd=REPO)
        if kind == "count" and uses_pg:
            counter = PgCounter(*_host_port(ADMIN_URL))
            pg = db_url(db, await counter.start())
        if kind == "count" and uses_redis:
            monitor = Monitor(REDIS_URL, _redis_db(REDIS_URL))
            await asyncio.to_thread(monitor.start)
        params = {
            "peer": name,
            "jobs": jobs,
            "single": args.single,
            "pg": pg,
            "redis": REDIS_URL,
            "prefix": "peers" + uuid.uuid4().hex[:8],
            "timeout": args.timeout,
            "transport": "upstash" if name == "jobqueue-upstash" else "redis",
            "pgqueuer_batch": args.pgqueuer_batch,
            "procrastinate_concurrency": args.procrastinate_concurrency,
            "bullmq_concurrency": args.bullmq_concurrency,
        }
        if name == "jobqueue-upstash":
            proxy, params["upstash_url"] = await upstash_proxy()
            params["upstash_token"] = TOKEN
        cmd, env = child_command(name)
        env["BENCH_PEERS_PARAMS"] = json.dumps(params)
        child = Child(
            await asyncio.create_subprocess_exec(
                *cmd,
                cwd=REPO,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                limit=1 << 24,
            )
        )
        ev = await child.event(args.timeout)
        if ev.get("event") != "done":
            raise RuntimeError(f"setup: {ev.get('error', ev)}")
        for phase in PHASES:
            rec: dict[str, Any] = {}
            out["phases"][phase] = rec
            try:
                ev = await child.event(args.timeout)
                if ev.get("event") != "ready":
                    raise RuntimeError(f"{ev.get('phase', phase)}: {ev.get('error', ev)}")
                if phase == "drain" and uses_pg and args.analyze:
                    await admin("ANALYZE", db_url(db))  # planner statistics, as a live table has
                before = await counters(uses_redis, counter, monitor)
                await child.go()
                ev = await child.event(args.timeout)
                after = await counters(uses_redis, counter, monitor)
            except TimeoutError:
                rec["error"] = f"timed out after {args.timeout:g} s"
                raise RuntimeError(f"{phase}: {rec['error']}") from None
            rec["result"] = ev.get("result", {})
            rec |= {k: after[k] - before[k] for k in after if isinstance(after[k], int)}
            if "monitor_by_command" in after:
                mb, ma = before["monitor_by_command"], after["monitor_by_command"]
                rec["monitor_by_command"] = {k: v - mb.get(k, 0) for k, v in sorted(ma.items()) if v - mb.get(k, 0)}
            if ev.get("event") != "done":
                rec["error"] = ev.get("error", str(ev))
                raise RuntimeError(f"{phase}: {rec['error']}")
        with contextlib.suppress(Exception):
            await child.event(60)  # "end": the child closed its connections
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}" if not isinstance(e, RuntimeError) else str(e)
        if child is not None and child.stderr and not out["error"].endswith(child.stderr[-1]):
            out["stderr_tail"] = list(child.stderr)[-10:]
    finally:
        if child is not None:
            await child.stop()
        if proxy is not None:
            proxy.terminate()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proxy.wait(), 10)
        if monitor is not None:
            await asyncio.to_thread(monitor.stop)
        if counter is not None:
            await counter.stop()
        if uses_pg:
            with contextlib.suppress(Exception):
                await admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        with contextlib.suppress(Exception):
            await asyncio.to_thread(flush_redis)
    return out


async def counters(uses_redis: bool, counter: PgCounter | None, monitor: Monitor | None) -> dict[str, Any]:
    c: dict[str, Any] = {}
    if uses_redis:
        c["redis_commands"] = await asyncio.to_thread(commandstats_total, REDIS_URL)
    if monitor is not None:
        c["redis_commands_monitor"] = await asyncio.to_thread(monitor.sync)
        c["monitor_by_command"] = monitor.snapshot()
    if counter is not None:
        snap = counter.snapshot()
        c |= {"pg_statements": snap["statements"], "pg_round_trips": snap["round_trips"]}
        c["pg_connections"] = snap["connections"]
    return c


def _host_port(url: str) -> tuple[str, int]:
    rest = url.partition("://")[2].partition("/")[0].rpartition("@")[2]
    host, _, port = rest.partition(":")
    return host or "127.0.0.1", int(port or 5432)


def _redis_db(url: str) -> int:
    return int(url.rstrip("/").rpartition("/")[2] or 0)


# --- main ------------------------------------------------------------------------------------


def select(only: str | None) -> list[str]:
    if not only:
        return list(SYSTEMS)
    names: list[str] = []
    for part in only.split(","):
        part = part.strip()
        match = [n for n in SYSTEMS if n == part or n.startswith(part + "-")]
        if not match:
            raise SystemExit(f"unknown system {part!r}; choose from {', '.join(SYSTEMS)} (or jobqueue)")
        names += [n for n in match if n not in names]
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=5000, help="jobs enqueued in bulk (then drained with the single ones)")
    p.add_argument("--single", type=int, default=1000, help="jobs enqueued one by one")
    p.add_argument("--count-jobs", type=int, default=None, help="jobs in the counting pass (default --jobs; 0: none)")
    p.add_argument("--only", help="comma-separated: " + ",".join(SYSTEMS) + " (jobqueue: both transports)")
    p.add_argument("--skip-install", action="store_true", help="use the scratch install as it is")
    p.add_argument("--json", type=Path, help="write the raw results here")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds allowed for each phase")
    p.add_argument(
        "--no-analyze",
        dest="analyze",
        action="store_false",
        help="do not ANALYZE the scratch database between the enqueues and the drain",
    )
    p.add_argument("--repeat", type=int, default=3, help="timed passes per system, in alternating rounds (medians)")
    p.add_argument("--max-minutes", type=float, default=45.0, help="start no pass after this long (whole run)")
    p.add_argument("--pgqueuer-batch", type=int, default=100)
    p.add_argument("--procrastinate-concurrency", type=int, default=10)
    p.add_argument("--bullmq-concurrency", type=int, default=100)
    args = p.parse_args()
    if args.count_jobs is None:
        args.count_jobs = args.jobs
    names = select(args.only)

    def log(msg: str) -> None:
        print(f"[peers] {msg}", file=sys.stderr, flush=True)

    if not args.skip_install:
        install(any(SYSTEMS[n][0] == "py" for n in names), "bullmq" in names, log)
    modes = worker_modes(args)
    results: dict[str, Any] = {
        "command": "python -m bench.peers " + " ".join(sys.argv[1:]),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "redis": REDIS_URL,
        "postgres": ADMIN_URL.rpartition("/")[0],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_start": os.getloadavg()},
        "versions": versions(),
        "systems": {},
    }
    started = time.monotonic()

    def one(name: str, kind: str) -> dict[str, Any]:
        if time.monotonic() - started > args.max_minutes * 60:
            return {"error": f"not run: --max-minutes {args.max_minutes:g} reached", "phases": {}}
        log(f"{name}: {kind} pass")
        t0 = time.monotonic()
        res = asyncio.run(run_pass(name, kind, args))
        res["wall_s"] = round(time.monotonic() - t0, 1)
        log(f"{name}: {kind} pass {'failed: ' + res['error'] if res['error'] else 'done'} in {res['wall_s']} s")
        return res

    results["systems"] = {n: {"worker": modes[n], "passes": {}, "timed_runs": []} for n in names}
    # Timed passes in rounds, every system once a round, the order reversed every other round: a
    # neighbour's burst on this shared machine hits every system alike; throughput is the median.
    for r in range(args.repeat):
        for name in names if r % 2 == 0 else names[::-1]:
            results["systems"][name]["timed_runs"].append(one(name, "timed"))
    for name in names:
        sysres = results["systems"][name]
        sysres["passes"]["timed"] = median_pass(sysres["timed_runs"])
        if args.count_jobs <= 0:
            continue
        if sysres["passes"]["timed"]["error"]:
            sysres["passes"]["count"] = {"error": "not run: the timed pass failed", "phases": {}}
            continue
        sysres["passes"]["count"] = one(name, "count")
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["table"] = table = render(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
