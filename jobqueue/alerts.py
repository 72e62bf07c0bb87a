"""Operator alerts, posted to a Slack-compatible incoming webhook (ALERT_WEBHOOK_URL).

`alerts_hook` rides on drains (`jq.drain_hooks.append(alerts_hook)`). Three kinds, each at most
once per (kind, queue) per ALERT_INTERVAL_S:

- `dead`: a job of the queue reached `failed` in this drain (report.dead);
- `dlq`: the queue's dead-letter queue holds at least ALERT_DLQ_THRESHOLD jobs;
- `wait`: the queue's oldest due job has waited more than ALERT_MAX_WAIT_S (paused queues are
  left out: their jobs wait by design).

Cost, keeping DESIGN.md invariant 5: an idle drain (nothing claimed, nothing dead) returns before
any I/O. A busy drain costs one Redis request: a turn (`Broker.take_turns`) on the `dead` debounce
marker of every queue with dead jobs, plus the marker that admits the Postgres checks. Those checks
(`alert_checks`, one statement whose cost follows the number of queues, not of jobs) run at most
once per interval; only when one trips is a second request sent, for the `dlq`/`wait` markers. The
markers hold their next due time in the engine's clock, so they hold across processes and tests
move a FakeClock instead of waiting for an expiry.

Alerts are not sent from here: each is enqueued as a `webhook.deliver` job on the `_alerts` queue,
so it is stored and retried like any webhook, and a drain never waits on the receiver. That queue
never raises alerts itself (a broken alert URL would otherwise feed on its own failures).

Alert text names the queue, job id and type and the first line of the error (cut at 200
characters); never the payload, the result or a setting.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .drain import DrainReport
    from .engine import JobQueue

log = logging.getLogger("jobqueue.alerts")

ALERT_QUEUE = "_alerts"
ALERT_JOB_TYPE = "webhook.deliver"
ALERT_EVENT = "jobqueue.alert"
MAX_ERROR_CHARS = 200
# A marker, not a queue: queue names are free text, so the kind keeps it apart from real keys.
CHECKS_KIND = "checks"
CHECKS_SCOPE = "*"


async def alerts_hook(jq: JobQueue, report: DrainReport) -> None:
    url = jq.settings.alert_webhook_url
    if not url or (report.claimed == 0 and not report.dead):
        return
    if ALERT_JOB_TYPE not in jq.registry:
        log.warning("ALERT_WEBHOOK_URL is set but the registry has no %s job type: no alert sent", ALERT_JOB_TYPE)
        return
    alerts = await pending_alerts(jq, report.dead)
    if alerts:
        await jq.enqueue_many(
            [
                {
                    "type": ALERT_JOB_TYPE,
                    "queue": ALERT_QUEUE,
                    # body "data": Slack-compatible receivers read a top-level "text".
                    "payload": {"url": url, "event": ALERT_EVENT, "data": a, "body": "data"},
                }
                for a in alerts
            ]
        )
        log.info("enqueued %d alert(s): %s", len(alerts), ", ".join(f"{a['kind']}:{a['queue']}" for a in alerts))


async def pending_alerts(jq: JobQueue, dead: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alerts due now, each already debounced (its key taken). Callers enqueue them."""
    s = jq.settings
    ttl_ms = s.alert_interval_s * 1000
    by_queue: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in dead:
        if d.get("queue") != ALERT_QUEUE:
            by_queue[str(d.get("queue"))].append(d)
    queues = list(by_queue)
    markers = [jq.keys.alert("dead", q) for q in queues] + [jq.keys.alert(CHECKS_KIND, CHECKS_SCOPE)]
    taken = await jq.broker.take_turns(markers, jq.clock.ms(), ttl_ms)
    alerts = [_dead_alert(q, by_queue[q]) for q, ok in zip(queues, taken, strict=False) if ok]
    if taken[-1]:
        alerts += await _check_thresholds(jq, jq.clock.now())
    return alerts


async def _check_thresholds(jq: JobQueue, now: datetime) -> list[dict[str, Any]]:
    s = jq.settings
    tripped: list[dict[str, Any]] = []
    for r in await jq.store.fetch("alert_checks", s.alert_dlq_threshold):
        q = r["queue"]
        if r["kind"] == "dlq" and r["failed"] >= s.alert_dlq_threshold:
            tripped.append(
                {
                    "kind": "dlq",
                    "queue": q,
                    "text": f'jobqueue: the dead-letter queue of "{q}" holds at least {s.alert_dlq_threshold} '
                    f"failed jobs (ALERT_DLQ_THRESHOLD={s.alert_dlq_threshold})",
                    "threshold": s.alert_dlq_threshold,
                }
            )
        elif r["kind"] == "wait" and r["next_run_at"] is not None:
            age_s = (now - r["next_run_at"]).total_seconds()
            if age_s > s.alert_max_wait_s:
                tripped.append(
                    {
                        "kind": "wait",
                        "queue": q,
                        "text": f'jobqueue: the oldest job waiting on "{q}" has waited {int(age_s)} s '
                        f"(ALERT_MAX_WAIT_S={s.alert_max_wait_s}); is the queue being drained?",
                        "age_s": int(age_s),
                        "max_wait_s": s.alert_max_wait_s,
                    }
                )
    if not tripped:
        return []
    ttl_ms = s.alert_interval_s * 1000
    markers = [jq.keys.alert(a["kind"], a["queue"]) for a in tripped]
    taken = await jq.broker.take_turns(markers, jq.clock.ms(), ttl_ms)
    return [a for a, ok in zip(tripped, taken, strict=True) if ok]


def _dead_alert(queue: str, dead: list[dict[str, Any]]) -> dict[str, Any]:
    first = dead[0]
    error = first_line(first.get("error"))
    more = f" (and {len(dead) - 1} more in the same drain)" if len(dead) > 1 else ""
    text = f'jobqueue: job {first["id"]} ({first.get("type")}) on "{queue}" failed for good{more}'
    if error:
        text += f": {error}"
    return {
        "kind": "dead",
        "queue": queue,
        "text": text,
        "job_id": first["id"],
        "type": first.get("type"),
        "error": error,
        "count": len(dead),
    }


def first_line(error: str | None) -> str:
    """The first line of an error, cut: the rest (a traceback) belongs in the job, not in chat."""
    line = (error or "").strip().split("\n", 1)[0]
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 1] + "…"
