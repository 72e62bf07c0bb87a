"""Sustained run: a steady enqueue rate and back-to-back drains for N minutes, with retention on,
sampling what a long-lived deployment's table does (size, dead tuples, autovacuum) and whether
the drains slow down as it ages.

    python -m bench.sustained [--minutes 30] [--rate 400] [--batch 10] [--sample-s 30] [--json PATH]

One process: a producer calls `enqueue_many` with `--batch` echo jobs `rate / batch` times a
second on a fixed schedule (it catches up when it falls behind, and reports the lag); a drainer
calls `drain(budget)` back to back, as a kick or QStash loop would, pausing 200 ms after an empty
one; every `--sample-s` seconds a sampler reads `pg_stat_user_tables` and the relation sizes of
`jobs`. Autovacuum is emulated when the server has it off (`autovacuum = off` here, a shared
server): when `n_dead_tup` or the inserts since the last vacuum pass autovacuum's own thresholds
(50 + 0.2 x reltuples dead, 1000 + 0.2 x reltuples inserted), the sampler runs `VACUUM (ANALYZE)
jobs` and records how long it took; `--vacuum server` leaves it to the server's autovacuum, `off`
to nobody. Retention runs as in production (the housekeeping drain hook) every `--housekeeping-s`
seconds with the queue's rule `completed: keep the newest --retain`. A scratch database and key
prefix of its own, both removed at the end. Figures go to docs/scaling.md; this is never a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

import asyncpg

from jobqueue.builtins import default_registry
from jobqueue.engine import JobQueue
from jobqueue.settings import Settings

from .common import REDIS_URL, TOKEN, clean_prefix, create_db, drop_db, new_prefix, pct, upstash_proxy

STATS = """
SELECT n_ins_since_vacuum, (SELECT reltuples FROM pg_class WHERE relname = 'jobs') AS reltuples,
       n_live_tup, n_dead_tup, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, autovacuum_count,
       autoanalyze_count, last_autovacuum, pg_relation_size('jobs') AS heap_bytes,
       pg_indexes_size('jobs') AS index_bytes, pg_total_relation_size('jobs') AS total_bytes
FROM pg_stat_user_tables WHERE relname = 'jobs'
"""


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.enqueued = 0
        self.completed = 0
        self.enq_lat: list[float] = []  # ms, per call, this window
        self.lag_s = 0.0  # how far the producer is behind its schedule
        self.busy_s = 0.0  # time spent in drains that ran something, this window
        self.ran_in_busy = 0
        self.stop = False
        self.vacuums = 0

    async def produce(self, jq: JobQueue) -> None:
        interval = self.args.batch / self.args.rate
        due = time.monotonic()
        i = 0
        while not self.stop:
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            self.lag_s = max(0.0, time.monotonic() - due)
            t = time.perf_counter()
            await jq.enqueue_many([{"type": "echo", "payload": {"i": i + k}} for k in range(self.args.batch)])
            self.enq_lat.append((time.perf_counter() - t) * 1000)
            i += self.args.batch
            self.enqueued += self.args.batch
            due += interval

    async def drain(self, jq: JobQueue) -> None:
        while not self.stop:
            t = time.perf_counter()
            report = await jq.drain(self.args.budget_s)
            if report.completed:
                self.busy_s += time.perf_counter() - t
                self.ran_in_busy += report.completed
                self.completed += report.completed
            else:
                await asyncio.sleep(0.2)

    async def sample(self, conn: asyncpg.Connection, t0: float, samples: list[dict[str, Any]]) -> None:
        last_t, last_done = time.monotonic(), self.completed
        while not self.stop:
            await asyncio.sleep(self.args.sample_s)
            now = time.monotonic()
            st = dict(await conn.fetchrow(STATS) or {})
            vacuum_s = None
            if self.args.vacuum == "emulate" and _vacuum_due(st):
                v = time.perf_counter()
                await conn.execute("VACUUM (ANALYZE) jobs")
                vacuum_s = round(time.perf_counter() - v, 2)
                self.vacuums += 1
            lat, self.enq_lat = self.enq_lat, []
            busy, ran, self.busy_s, self.ran_in_busy = self.busy_s, self.ran_in_busy, 0.0, 0
            s = {
                "t_s": round(now - t0),
                "enqueued": self.enqueued,
                "completed": self.completed,
                "backlog": self.enqueued - self.completed,
                "drain_per_s": round((self.completed - last_done) / (now - last_t)),
                "drain_capacity_per_s": round(ran / busy) if busy else None,  # while a drain was busy
                "busy_share": round(busy / (now - last_t), 2),
                "enqueue_p50_ms": round(statistics.median(lat), 2) if lat else None,
                "enqueue_p99_ms": round(pct(lat, 99), 2) if lat else None,
                "producer_lag_s": round(self.lag_s, 2),
                "live_tup": st.get("n_live_tup"),
                "dead_tup": st.get("n_dead_tup"),
                "autovacuums": st.get("autovacuum_count"),
                "emulated_vacuums": self.vacuums,
                "vacuum_s": vacuum_s,
                "autoanalyzes": st.get("autoanalyze_count"),
                "last_autovacuum": st["last_autovacuum"].isoformat(timespec="seconds")
                if st.get("last_autovacuum")
                else None,
                "heap_mb": round(st.get("heap_bytes", 0) / 2**20, 1),
                "index_mb": round(st.get("index_bytes", 0) / 2**20, 1),
                "hot_update_share": round(st["n_tup_hot_upd"] / st["n_tup_upd"], 2) if st.get("n_tup_upd") else None,
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
            samples.append(s)
            print(json.dumps(s), flush=True)
            last_t, last_done = now, self.completed


async def sustained(args: argparse.Namespace) -> dict[str, Any]:
    name = "jobqueue_bench_sustained"
    url = await create_db(name)
    prefix = new_prefix()
    conf: dict[str, Any] = {
        "DATABASE_URL": url,
        "JOBQUEUE_PREFIX": prefix,
        "JOBQUEUE_HOUSEKEEPING_INTERVAL_S": args.housekeeping_s,
    }
    samples: list[dict[str, Any]] = []
    with upstash_proxy(0.0) if args.transport == "upstash" else _null() as proxy:
        if proxy:
            conf |= {"UPSTASH_REDIS_REST_URL": proxy, "UPSTASH_REDIS_REST_TOKEN": TOKEN}
        else:
            conf["REDIS_URL"] = REDIS_URL
        jq = JobQueue.from_settings(Settings(**conf), default_registry())
        conn = await asyncpg.connect(url)
        run = Run(args)
        try:
            await jq.drain(2)  # builds the index (epoch marker)
            await jq.set_queue_settings("default", {"retention": {"completed": {"count": args.retain}}})
            t0 = time.monotonic()
            tasks = [
                asyncio.create_task(run.produce(jq)),
                asyncio.create_task(run.drain(jq)),
                asyncio.create_task(run.sample(conn, t0, samples)),
            ]
            await asyncio.sleep(args.minutes * 60)
            run.stop = True
            await asyncio.wait(tasks, timeout=args.budget_s + 30)
            for t in tasks:
                t.cancel()
        finally:
            await conn.close()
            await jq.close()
            clean_prefix(prefix)
    await drop_db(name)
    return {"params": vars(args), "samples": samples, "summary": summarize(samples)}


def _vacuum_due(st: dict[str, Any]) -> bool:
    """Autovacuum's default trigger (autovacuum_vacuum_threshold/scale_factor and the insert ones)."""
    base = max(0.0, float(st.get("reltuples") or 0))
    return (st.get("n_dead_tup") or 0) > 50 + 0.2 * base or (st.get("n_ins_since_vacuum") or 0) > 1000 + 0.2 * base


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The first and the last fifth of the run side by side: throughput, capacity, latency."""
    if not samples:
        return {}
    k = max(1, len(samples) // 5)
    head, tail = samples[:k], samples[-k:]

    def med(rows: list[dict[str, Any]], key: str) -> float | None:
        xs = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.median(xs), 2) if xs else None

    keys = ("drain_per_s", "drain_capacity_per_s", "busy_share", "enqueue_p50_ms", "enqueue_p99_ms", "loadavg_1m")
    return {
        "start": {key: med(head, key) for key in keys},
        "end": {key: med(tail, key) for key in keys},
        "max_backlog": max(s["backlog"] for s in samples),
        "max_dead_tup": max(s["dead_tup"] or 0 for s in samples),
        "autovacuums": samples[-1]["autovacuums"],
        "emulated_vacuums": samples[-1]["emulated_vacuums"],
        "vacuum_s_max": max((s["vacuum_s"] or 0) for s in samples),
        "heap_mb": [samples[0]["heap_mb"], max(s["heap_mb"] for s in samples), samples[-1]["heap_mb"]],
        "index_mb": [samples[0]["index_mb"], max(s["index_mb"] for s in samples), samples[-1]["index_mb"]],
        "completed": samples[-1]["completed"],
        "enqueued": samples[-1]["enqueued"],
    }


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=400.0, help="jobs enqueued per second")
    p.add_argument("--batch", type=int, default=10, help="jobs per enqueue_many call")
    p.add_argument("--sample-s", type=float, default=30.0)
    p.add_argument("--budget-s", type=float, default=10.0, help="each drain's time budget")
    p.add_argument("--retain", type=int, default=20_000, help="completed jobs the queue keeps (retention count)")
    p.add_argument("--housekeeping-s", type=int, default=10, help="JOBQUEUE_HOUSEKEEPING_INTERVAL_S")
    p.add_argument("--transport", choices=("redis", "upstash"), default="redis")
    p.add_argument("--vacuum", choices=("emulate", "server", "off"), default="emulate", help="see above")
    p.add_argument("--json", help="write samples and summary here")
    args = p.parse_args()
    out = asyncio.run(sustained(args))
    print(json.dumps(out["summary"], indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)


if __name__ == "__main__":
    main()
