"""How much does `jobqueue.metrics.collect()` cost on a big table? (a script, not a test)

Fills a scratch database (`jobqueue_bench_metrics`, made from schema.sql and dropped at the end)
with 1,000,000 jobs in every state spread over the last --days days (default 2), VACUUM ANALYZEs
it (the steady state autovacuum keeps: index-only scans need the visibility map), then times
collect() and the alerts' check statement, median of 5 runs each, with the plan of every
statement. Finally it drops the two partial indexes metrics relies on (`jobs_dead`, `jobs_unfinished`)
and times again, to show what they buy.

    .venv/bin/python bench/metrics_large.py [--rows 1000000] [--days 2]

Needs the Postgres and Redis the tests use (TEST_DATABASE_URL, TEST_REDIS_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import time
from datetime import timedelta
from typing import Any

import asyncpg

from jobqueue.builtins import default_registry
from jobqueue.clock import Clock
from jobqueue.engine import JobQueue
from jobqueue.metrics import collect
from jobqueue.settings import Settings
from jobqueue.store import QUERIES, Store
from jobqueue.transports import RedisPyTransport

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
DB = "jobqueue_bench_metrics"
RUNS = 5

# i % 100 picks the state: 85% completed, 5% failed, 2% cancelled, 5% pending, 2% scheduled,
# 1% processing. Four queues; finished jobs ran 0-2 s after waiting 0-5 s; one in seven retried.
# Rows are laid out in time order over --days, as a queue's table is (jobs are inserted as they come).
FILL = """
INSERT INTO jobs (queue, type, payload, status, priority, attempts, max_attempts, run_at, result, error,
                  history, created_at, started_at, finished_at)
SELECT queue, 'echo', jsonb_build_object('n', i), status, i % 10, attempts, 3,
       CASE WHEN status = 'scheduled' THEN $1::timestamptz + interval '10 minutes' * random() ELSE created END,
       CASE WHEN status = 'completed' THEN '{"ok": true}'::jsonb END,
       CASE WHEN status = 'failed' THEN 'ValueError: boom' END,
       CASE WHEN started IS NULL THEN '[]'::jsonb ELSE jsonb_build_array(jsonb_build_object(
           'attempt', attempts, 'started_at', started, 'ended_at', finished,
           'outcome', CASE status WHEN 'completed' THEN 'completed' ELSE 'failed' END, 'duration_ms', dur)) END,
       created, started, finished
FROM (
    SELECT i, q.queue, s.status, c.created, c.attempts, c.dur,
           CASE WHEN s.status IN ('completed', 'failed', 'processing')
                THEN c.created + c.wait END AS started,
           CASE WHEN s.status IN ('completed', 'failed') THEN c.created + c.wait + make_interval(secs => c.dur / 1000.0)
                WHEN s.status = 'cancelled' THEN c.created END AS finished
    FROM generate_series(1, $2::int) AS i
    CROSS JOIN LATERAL (SELECT (ARRAY['default', 'emails', 'webhooks', 'reports'])[1 + (i / 7) % 4] AS queue) q
    CROSS JOIN LATERAL (SELECT CASE WHEN i % 100 < 85 THEN 'completed' WHEN i % 100 < 90 THEN 'failed'
                                    WHEN i % 100 < 92 THEN 'cancelled' WHEN i % 100 < 97 THEN 'pending'
                                    WHEN i % 100 < 99 THEN 'scheduled' ELSE 'processing' END AS status) s
    CROSS JOIN LATERAL (SELECT $1::timestamptz - interval '1 day' * $3 * (1 - i::float8 / $2) AS created,
                               1 + (i % 7 = 0)::int + (i % 49 = 0)::int AS attempts,
                               (random() * 2000)::int AS dur,
                               make_interval(secs => random() * 5) AS wait) c
) g
"""


async def timed(fn: Any, runs: int = RUNS) -> float:
    await fn()  # warm: pool, plans, caches
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


async def explain(conn: asyncpg.Connection, name: str, *args: Any) -> None:
    plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + QUERIES[name], *args)
    lines = [r[0] for r in plan]
    # "Index Only Scan using jobs_dead on jobs", "Seq Scan on jobs": what each statement reads.
    scans = sorted({m.group(1) for ln in lines if (m := re.search(r"((?:\w+ )*Scan (?:using \w+ )?on \w+)", ln))})
    print(f"  {name}: {lines[-1].strip()}; {'; '.join(scans)}")


async def main(rows: int, days: float) -> None:
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {DB}")
    url = ADMIN_URL.rpartition("/")[0] + "/" + DB
    redis = RedisPyTransport.from_url(REDIS_URL)
    settings = Settings(JOBQUEUE_PREFIX="benchmetrics", DATABASE_URL=url)
    jq = JobQueue(Store(url), redis, default_registry(), settings, Clock())
    try:
        await jq.store.migrate()
        conn = await asyncpg.connect(url)
        now = jq.clock.now()
        t0 = time.perf_counter()
        await conn.execute(FILL, now, rows, days)
        await conn.execute("VACUUM ANALYZE jobs")
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('jobs'))")
        print(f"filled {rows:,} rows over {days:g} days ({size} with indexes) in {time.perf_counter() - t0:.1f} s")
        by = await conn.fetch("SELECT status, count(*) AS n FROM jobs GROUP BY 1 ORDER BY 1")
        print("  " + ", ".join(f"{r['status']} {r['n']:,}" for r in by))

        for label in ("with jobs_dead and jobs_unfinished", "without them (dropped)"):
            jq.store.statements = jq.redis.requests = 0
            ms = await timed(lambda: collect(jq))
            per = (jq.store.statements / (RUNS + 1), jq.redis.requests / (RUNS + 1))
            jq.store.statements = 0
            check_ms = await timed(lambda: jq.store.fetch("alert_checks", settings.alert_dlq_threshold))
            print(f"{label}:")
            print(f"  collect(): median {ms:.1f} ms of {RUNS} runs; {per[0]:g} statements, {per[1]:g} Redis request")
            print(f"  alert_checks: median {check_ms:.1f} ms")
            await explain(conn, "metrics_counts")
            await explain(conn, "metrics_finished", now - timedelta(days=1), now - timedelta(hours=1), now)
            await explain(conn, "alert_checks", settings.alert_dlq_threshold)
            if label.startswith("with "):
                await conn.execute("DROP INDEX jobs_dead; DROP INDEX jobs_unfinished")
        await conn.close()
    finally:  # the scratch database goes, whatever happened
        await jq.close()
        await admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        await admin.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--days", type=float, default=2, help="the rows' times span this many days before now")
    args = ap.parse_args()
    asyncio.run(main(args.rows, args.days))
