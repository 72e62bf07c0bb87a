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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
# The statuses a job may have today (`Job.status` stays a str: a newer server may add one).
JobStatus = Literal["waiting", "pending", "scheduled", "processing", "completed", "failed", "cancelled"]


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
    # `{"id", "status", "type"}` per job on either side (GET /api/jobs/{id}); ids from older servers
    depends_on: list[Any] = []
    dependents: list[Any] = []
    on_dependency_failure: str | None = None
    callback_url: str | None = None
    schedule_id: str | None = None
    scheduled_for: datetime | None = None
    progress: Progress | None = None
    created_by: int | None = None  # the job whose handler enqueued it, or that a callback reports on

    @property
    def terminal(self) -> bool:
        """completed, failed or cancelled: the job will not run again unless retried."""
        return self.status in TERMINAL

    @property
    def dependency_ids(self) -> list[int]:
        """The ids of the jobs it waits for (`depends_on`)."""
        return [int(d["id"]) if isinstance(d, dict) else int(d) for d in self.depends_on]

    @property
    def dependent_ids(self) -> list[int]:
        """The ids of the jobs that wait for it (`dependents`)."""
        return [int(d["id"]) if isinstance(d, dict) else int(d) for d in self.dependents]


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


class Rate(Model):
    """At most `limit` starts per `period_ms` on average, `burst` at once."""

    limit: int
    period_ms: int
    burst: int = 1


class JobDefaults(Model):
    """Options for a queue's jobs whose request and type set none."""

    max_attempts: int | None = None
    backoff: dict[str, Any] | None = None
    timeout_ms: int | None = None


class RetentionRule(Model):
    age_days: float | None = None
    count: int | None = None


class Retention(Model):
    completed: RetentionRule | None = None
    failed: RetentionRule | None = None


class QueueSettings(Model):
    """A queue's settings (`PUT /api/queues/{name}`); None: not set (no limit, no default)."""

    defaults: JobDefaults | None = None
    concurrency: int | None = None
    rate: Rate | None = None
    group_concurrency: int | None = None
    group_rate: Rate | None = None
    retention: Retention | None = None
    aging_ms: int | None = None


class QueueInfo(Model):
    """A queue's counts per status, its paused flag and its settings (empty from a server that
    predates them)."""

    name: str
    paused: bool
    counts: dict[str, int]
    settings: QueueSettings = Field(default_factory=QueueSettings)


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


class ParkedScope(Model):
    """A flow-control scope with parked jobs: `g:<group hash>`, `t:<type tag>` or both."""

    scope: str
    type: str | None = None
    group_hash: str | None = None
    parked: int


class FlowStats(Model):
    """Jobs running now, jobs parked by a group's or a type's limit, and the busiest scopes."""

    running: int = 0
    parked: int = 0
    top_parked: list[ParkedScope] = []


class QueueMetrics(Model):
    """One queue's figures; their definitions are in jobqueue/metrics.py."""

    paused: bool
    settings: QueueSettings = Field(default_factory=QueueSettings)
    flow: FlowStats = Field(default_factory=FlowStats)
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
