"""What the client answers: pydantic models mirroring the API's JSON (jobqueue/web/routes_*.py).

They are the client's own rather than the server's (`jobqueue.models.JobView` and the route
models) for two reasons: the server's models reject what this client must accept, such as a status
added later (`waiting`), and importing them would load the server's modules. Every model keeps the
fields a newer server adds (`extra="allow"`: readable as attributes and in `model_extra`), so an
old client keeps working against a new server.

This module loads pydantic (about 100 ms cold); `jobqueue.client` imports it on the first answer,
not at import.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class Model(BaseModel):
    """Fields unknown to this client are kept, never an error.

    `model["field"]` answers the field as the API's JSON has it (times as ISO strings), which is
    what this client's methods answered when they returned plain dicts, so code written for those
    keeps working."""

    model_config = ConfigDict(extra="allow")

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields and key not in (self.model_extra or {}):
            raise KeyError(key)
        return self.model_dump(mode="json", include={key})[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


class Progress(Model):
    """What a running handler last reported with `ctx.progress()`."""

    percent: float | None = None
    message: str | None = None
    data: Any = None
    updated_at: datetime | None = None


class Job(Model):
    """A job, as `GET /api/jobs/{id}` renders it. `status` is a plain string so that a state added
    later (`waiting`) is not an error; `terminal` says whether it can still change."""

    id: int
    queue: str
    type: str
    payload: dict[str, Any]
    status: str
    priority: int
    attempts: int
    max_attempts: int
    backoff: dict[str, Any]
    timeout_ms: int
    idempotency_key: str | None = None
    result: Any = None
    error: str | None = None
    history: list[dict[str, Any]] = []
    run_at: datetime | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # DESIGN.md section 8; absent from servers that predate them.
    group: str | None = None
    depends_on: list[Any] = []
    dependents: list[int] = []
    on_dependency_failure: str | None = None
    callback_url: str | None = None
    schedule_id: str | None = None
    scheduled_for: datetime | None = None
    progress: Progress | None = None

    @property
    def terminal(self) -> bool:
        """completed, failed or cancelled: the job will not run again unless retried."""
        return self.status in TERMINAL


class JobPage(Model):
    """One page of `GET /api/jobs` or `GET /api/dlq`, newest first."""

    jobs: list[Job]
    next_cursor: str | None = None


class Schedule(Model):
    """A recurring job, as `GET /api/schedules/{id}` renders it."""

    id: str
    type: str
    payload: dict[str, Any] = {}
    queue: str | None = None
    priority: int = 5
    cron: str | None = None
    tz: str = "UTC"
    every_ms: int | None = None
    misfire: str = "coalesce"
    misfire_grace_ms: int | None = None
    catch_up_limit: int = 10
    overlap: str = "allow"
    paused: bool = False
    next_run_at: datetime
    last_run_at: datetime | None = None
    last_job_id: int | None = None
    last_job_status: str | None = None
    source: str = "api"


class ScheduleList(Model):
    schedules: list[Schedule]


class QueueInfo(Model):
    """A queue's counts per status and its paused flag (and, on newer servers, its settings)."""

    name: str
    paused: bool
    counts: dict[str, int]


class QueueState(Model):
    name: str
    paused: bool


class Health(Model):
    """`status` is `ok` or `unavailable`; each dependency `ok`, `down` or `not configured`."""

    status: str
    postgres: str
    redis: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class ExecutionStats(Model):
    count: int
    mean: float | None = None
    p50: float | None = None
    p95: float | None = None


class WaitStats(Model):
    count: int
    mean: float | None = None
    p95: float | None = None


class LastHour(Model):
    completed: int
    failed: int
    success_rate: float | None = None
    execution_ms: ExecutionStats
    wait_ms: WaitStats
    throughput_per_minute: list[int]


class LastDay(Model):
    completed: int
    failed: int
    success_rate: float | None = None
    attempts: dict[str, dict[str, int]]


class RedisIndex(Model):
    ready: int
    delayed: int
    processing: int


class QueueMetrics(Model):
    """One queue's figures; their definitions are in jobqueue/metrics.py."""

    paused: bool
    jobs: dict[str, int]
    ready: dict[str, int]
    redis: RedisIndex
    oldest_pending_age_s: float
    last_hour: LastHour
    last_day: LastDay


class Metrics(Model):
    generated_at: datetime
    queues: dict[str, QueueMetrics]


class QueueList(Model):
    queues: list[QueueInfo]
