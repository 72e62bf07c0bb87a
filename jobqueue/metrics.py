"""Queue metrics for /api/metrics and Prometheus: two Postgres statements and two Redis requests
side by side (a third when jobs are parked), whatever the size of the jobs table.

- Redis (`broker.ready_depths`, one pipeline): ready jobs per priority, and the sizes of the
  delayed and processing sets, i.e. what the dispatch index holds.
- Redis (`broker.flow_stats`, one pipeline, sent alongside; a second one only where jobs are
  parked): flow control's live view per queue: running jobs (leases whose deadline is still
  ahead), parked jobs (held back by a concurrency or rate limit of their group or type) and the
  ten scopes with the most parked jobs, among the 50 that reopen soonest. A scope names a type
  (by its registered name when this process knows it) and/or a group (by the hash of its name:
  the engine keeps no group names in Redis). And the time spent gated (work waiting on a limit),
  which the claim script keeps per queue: since when, and the total of earlier periods.
- Postgres `metrics_counts`: unfinished, failed and cancelled counts per queue, the oldest due job,
  the paused flags and each queue's settings (its limits, defaults and retention), from index-only
  scans of the partial indexes `jobs_unfinished` and `jobs_dead` (and the small `queues`
  table). Completed rows (the bulk of the table) are never read; totals of completed jobs are
  therefore not reported, only the windowed counts below.
- Postgres `metrics_finished`: the jobs finished in the last day, through `jobs_finished` (the
  planner reads the day by a sequential scan instead when the day is a large part of the table,
  e.g. a young deployment; the cost is then that of the table, which retention keeps small).

Definitions (all times from `jq.clock`, so tests can move them):
- windows are `finished_at` in (now - 1 h, now] and (now - 24 h, now]; "the last hour's jobs" are
  the jobs that *finished* then, completed or failed (cancelled ones are not outcomes).
- execution time: the latest attempt's `duration_ms` from the history, i.e. the handler's own
  run time on a monotonic clock. `finished_at - started_at` would be the batch's wall time (every
  job of a batch shares one `finished_at`), which makes each job look as slow as the slowest.
  Jobs lost to an expired lease have no measured duration and are left out.
- queue wait: `started_at - created_at` (enqueue to first start); a delayed job's delay counts.
- oldest pending age: now - the earliest `run_at` among pending and scheduled jobs when that is in
  the past, else 0. `run_at` is when a job became runnable (enqueue, a retry's due time, a replay),
  so a replayed or delayed job does not look as old as its `created_at`.
- success rate: completed / (completed + failed) in the window; None when nothing finished.
- throughput: completed jobs per minute over the last hour, 60 buckets, oldest first; the last
  bucket is the (partial) current minute.
- attempts: the last day's finished jobs per status by the attempts their (latest) run used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .keys import MAX_PRIORITY
from .models import QueueSettings
from .queue_admin import describe_scope

if TYPE_CHECKING:
    from .engine import JobQueue
    from .store import Row

STATES = ("waiting", "pending", "scheduled", "processing", "failed", "cancelled")
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MINUTES = 60


async def collect(jq: JobQueue) -> dict[str, Any]:
    now = jq.clock.now()
    hour, day = now - timedelta(hours=1), now - timedelta(days=1)
    # The two statements are independent: run them side by side on two pooled connections.
    counts, finished = await asyncio.gather(
        jq.store.fetch("metrics_counts"),
        jq.store.fetch("metrics_finished", day, hour, now),
    )
    names = set(jq.queues) | {r["queue"] for r in counts} | {r["queue"] for r in finished}
    queues = {q: _empty_queue() for q in sorted(names)}
    _fold_counts(queues, counts, now)
    _fold_finished(queues, finished)
    # After Postgres, so queues known only there (another process enqueued them) get depths too.
    depths, flow = await asyncio.gather(
        jq.broker.ready_depths(list(queues)), jq.broker.flow_stats(list(queues), jq.clock.ms())
    )
    for q, d in depths.items():
        m = queues[q]
        m["ready"] = {str(p): d[f"ready_{p}"] for p in range(MAX_PRIORITY, -1, -1)}
        m["redis"] = {"ready": sum(m["ready"].values()), "delayed": d["delayed"], "processing": d["processing"]}
    names_known = jq.registry.names
    for q, f in flow.items():
        queues[q]["flow"] = {
            "running": f["running"],
            "parked": f["parked"],
            "top_parked": [{**describe_scope(s["scope"], names_known), "parked": s["parked"]} for s in f["top_parked"]],
            "gated_s": f["gated_ms"] / 1000,
            "gated_since": iso_ms(f["gated_since_ms"]),
        }
    return {"generated_at": now.isoformat().replace("+00:00", "Z"), "queues": queues}


def iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _empty_queue() -> dict[str, Any]:
    return {
        "paused": False,
        "settings": QueueSettings().model_dump(mode="json"),
        "flow": {"running": 0, "parked": 0, "top_parked": [], "gated_s": 0.0, "gated_since": None},
        "jobs": dict.fromkeys(STATES, 0),
        "ready": {str(p): 0 for p in range(MAX_PRIORITY, -1, -1)},
        "redis": {"ready": 0, "delayed": 0, "processing": 0},
        "oldest_pending_age_s": 0.0,
        "last_hour": {
            "completed": 0,
            "failed": 0,
            "success_rate": None,
            "execution_ms": {"count": 0, "mean": None, "p50": None, "p95": None},
            "wait_ms": {"count": 0, "mean": None, "p95": None},
            "throughput_per_minute": [0] * MINUTES,
        },
        "last_day": {"completed": 0, "failed": 0, "success_rate": None, "attempts": {"completed": {}, "failed": {}}},
    }


def _fold_counts(queues: dict[str, dict[str, Any]], rows: list[Row], now: datetime) -> None:
    for r in rows:
        m = queues[r["queue"]]
        kind = r["kind"]
        if kind == "queue":
            m["paused"] = bool(r["n"])
            m["settings"] = QueueSettings.model_validate(r["settings"] or {}).model_dump(mode="json")
        elif kind == "due":
            due = r["next_run_at"]
            m["oldest_pending_age_s"] = max(0.0, (now - due).total_seconds()) if due is not None else 0.0
        else:
            m["jobs"][kind] = int(r["n"])


def _fold_finished(queues: dict[str, dict[str, Any]], rows: list[Row]) -> None:
    for r in rows:
        m = queues[r["queue"]]
        hour, day = m["last_hour"], m["last_day"]
        if r["kind"] == "attempts":  # the day's counts are the sums of its attempts histogram
            day["attempts"][r["status"]][str(r["k"])] = int(r["n"])
            day[r["status"]] += int(r["n"])
        elif r["kind"] == "summary":
            hour["completed"], hour["failed"] = int(r["completed"]), int(r["failed"])
            hour["execution_ms"] = {
                "count": int(r["exec_n"]),
                "mean": _f(r["exec_mean"]),
                "p50": _f(r["exec_p50"]),
                "p95": _f(r["exec_p95"]),
            }
            hour["wait_ms"] = {"count": int(r["wait_n"]), "mean": _f(r["wait_mean"]), "p95": _f(r["wait_p95"])}
        else:  # minute: k whole minutes ago; the list runs oldest first
            hour["throughput_per_minute"][MINUTES - 1 - min(int(r["k"]), MINUTES - 1)] += int(r["n"])
    for m in queues.values():
        for window in (m["last_hour"], m["last_day"]):
            window["success_rate"] = _ratio(window["completed"], window["failed"])
        attempts = m["last_day"]["attempts"]
        for status, by in attempts.items():
            attempts[status] = dict(sorted(by.items(), key=lambda kv: int(kv[0])))


def _ratio(completed: int, failed: int) -> float | None:
    return completed / (completed + failed) if completed + failed else None


def _f(v: Any) -> float | None:
    return None if v is None else round(float(v), 3)


# --- Prometheus ---------------------------------------------------------------------------------


# name -> help text. Windows are labelled "1h" and "24h"; times are in seconds, as Prometheus expects.
HELP = {
    "jobqueue_jobs": "Jobs per state (Postgres; completed ones are counted per window only)",
    "jobqueue_ready_jobs": "Jobs in the ready lists per priority (Redis)",
    "jobqueue_indexed_jobs": "Members of the delayed and processing sets (Redis)",
    "jobqueue_queue_paused": "1 when the queue is paused",
    "jobqueue_oldest_pending_age_seconds": "How long the oldest due job has waited to start",
    "jobqueue_finished_jobs": "Jobs finished in the window",
    "jobqueue_success_ratio": "completed / (completed + failed) in the window",
    "jobqueue_throughput_jobs_per_minute": "Completed jobs per minute, mean over the last hour",
    "jobqueue_execution_seconds": "Run time of the latest attempt, jobs finished in the last hour",
    "jobqueue_execution_mean_seconds": "Mean run time of the latest attempt, jobs finished in the last hour",
    "jobqueue_queue_wait_seconds": "Enqueue to first start, jobs finished in the last hour",
    "jobqueue_queue_wait_mean_seconds": "Mean enqueue to first start, jobs finished in the last hour",
    "jobqueue_attempts_jobs": "Jobs finished in the last day by the number of attempts they used",
    "jobqueue_queue_concurrency_limit": "Most jobs running at once, across all drains (scope: queue, or each group)",
    "jobqueue_queue_rate_limit_per_second": "Most starts per second on average (scope: queue, or each group)",
    "jobqueue_queue_rate_burst": "Starts a rate allows at once (scope: queue, or each group)",
    "jobqueue_queue_aging_seconds": "A waiting job gains one priority level per this many seconds",
    "jobqueue_running_jobs": "Jobs running now: live leases (Redis)",
    "jobqueue_parked_jobs": "Jobs held back by a group's or a type's limit (Redis)",
    "jobqueue_parked_scope_jobs": "Parked jobs of the scopes with the most (top 10 per queue)",
    "jobqueue_gated_seconds": "Time this queue has spent with work waiting on a limit (since Redis last lost its data)",
    "jobqueue_gated": "1 while work in this queue waits on a flow-control limit",
}


class _Snapshot(Collector):
    """Exposes one `collect()` result. Everything is a gauge: windowed counts and current sizes go
    down as well as up (retention deletes, a replay empties the DLQ), and a counter that decreases
    reads as a reset to Prometheus' rate()."""

    def __init__(self, metrics: dict[str, Any]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        fams: dict[str, GaugeMetricFamily] = {}

        def put(name: str, value: float, **labels: str) -> None:
            if name not in fams:
                fams[name] = GaugeMetricFamily(name, HELP[name], labels=list(labels))
            fams[name].add_metric(list(labels.values()), value)

        for q, m in sorted(self.metrics["queues"].items()):
            for s in STATES:
                put("jobqueue_jobs", m["jobs"][s], queue=q, status=s)
            for p, n in m["ready"].items():
                put("jobqueue_ready_jobs", n, queue=q, priority=p)
            for k in ("delayed", "processing"):
                put("jobqueue_indexed_jobs", m["redis"][k], queue=q, set=k)
            put("jobqueue_queue_paused", float(m["paused"]), queue=q)
            put("jobqueue_oldest_pending_age_seconds", m["oldest_pending_age_s"], queue=q)
            for w, key in (("1h", "last_hour"), ("24h", "last_day")):
                for s in ("completed", "failed"):
                    put("jobqueue_finished_jobs", m[key][s], queue=q, status=s, window=w)
                if m[key]["success_rate"] is not None:
                    put("jobqueue_success_ratio", m[key]["success_rate"], queue=q, window=w)
            hour = m["last_hour"]
            put("jobqueue_throughput_jobs_per_minute", sum(hour["throughput_per_minute"]) / MINUTES, queue=q)
            for name, key in (("execution", "execution_ms"), ("queue_wait", "wait_ms")):
                st = hour[key]
                if not st["count"]:
                    continue  # no sample rather than a made-up zero
                for p, quantile in (("p50", "0.5"), ("p95", "0.95")):
                    if p in st:
                        put(f"jobqueue_{name}_seconds", st[p] / 1000, queue=q, quantile=quantile)
                put(f"jobqueue_{name}_mean_seconds", st["mean"] / 1000, queue=q)
            for s, by in m["last_day"]["attempts"].items():
                for a, n in by.items():
                    put("jobqueue_attempts_jobs", n, queue=q, status=s, attempts=a)
            _limits(put, q, m["settings"])
            flow = m["flow"]
            put("jobqueue_running_jobs", flow["running"], queue=q)
            put("jobqueue_parked_jobs", flow["parked"], queue=q)
            put("jobqueue_gated_seconds", flow["gated_s"], queue=q)
            put("jobqueue_gated", float(flow["gated_since"] is not None), queue=q)
            for scope in flow["top_parked"]:
                put(
                    "jobqueue_parked_scope_jobs",
                    scope["parked"],
                    queue=q,
                    scope=scope["scope"],
                    type=scope["type"] or "",
                )
        yield from fams.values()


def _limits(put: Any, q: str, settings: dict[str, Any]) -> None:
    """A queue's flow-control limits; a limit that is not set has no sample (absent, not zero)."""
    for scope, conc, rate in (("queue", "concurrency", "rate"), ("group", "group_concurrency", "group_rate")):
        if settings.get(conc) is not None:
            put("jobqueue_queue_concurrency_limit", settings[conc], queue=q, scope=scope)
        r = settings.get(rate)
        if r is not None:
            put("jobqueue_queue_rate_limit_per_second", r["limit"] * 1000 / r["period_ms"], queue=q, scope=scope)
            put("jobqueue_queue_rate_burst", r["burst"], queue=q, scope=scope)
    if settings.get("aging_ms") is not None:
        put("jobqueue_queue_aging_seconds", settings["aging_ms"] / 1000, queue=q)


def prometheus_text(metrics: dict[str, Any]) -> bytes:
    """The text exposition format (0.0.4) of a `collect()` result."""
    # A registry per call: no module-level state, and nothing is described at registration
    # (auto_describe=False), so the snapshot is walked exactly once.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics))
    return generate_latest(registry)
