"""The job's shapes: the enqueue request, the retry policy, and the public view that the API and
the client share. The SQLModel table model is in table.py, kept apart so that importing the API
does not load SQLAlchemy (a quarter of a cold start)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Status = Literal["pending", "scheduled", "processing", "completed", "failed", "cancelled"]
STATUSES: tuple[str, ...] = ("pending", "scheduled", "processing", "completed", "failed", "cancelled")
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
MAX_TIMEOUT_MS = 15 * 60 * 1000  # Vercel's longest function is 800 s; Lambda's 900 s
MAX_DELAY_DAYS = 365  # how far ahead delay_ms / run_at may schedule a job


class Backoff(BaseModel):
    """Retry spacing: fixed `delay_ms`, or exponential `delay_ms * 2^(attempt-1)` capped by
    `max_delay_ms`; `jitter` (0-1) randomises that fraction of the delay downwards."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["fixed", "exponential"] = "exponential"
    delay_ms: int = Field(default=1000, ge=0, le=7 * 24 * 3600 * 1000)
    max_delay_ms: int = Field(default=3_600_000, ge=0, le=30 * 24 * 3600 * 1000)
    jitter: float = Field(default=0.0, ge=0.0, le=1.0)


class JobRequest(BaseModel):
    """One job to enqueue (the body of POST /api/jobs)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    priority: int = Field(default=5, ge=0, le=9)
    delay_ms: int | None = Field(default=None, ge=0, le=MAX_DELAY_DAYS * 24 * 3600 * 1000)
    run_at: datetime | None = None
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    backoff: Backoff | None = None
    timeout_ms: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT_MS)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)
    group: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="a tenant, a destination: the queue's and the type's group limits apply per group",
    )

    @model_validator(mode="after")
    def _one_schedule(self) -> JobRequest:
        if self.delay_ms is not None and self.run_at is not None:
            raise ValueError("give delay_ms or run_at, not both")
        if self.run_at is not None and self.run_at.tzinfo is None:
            raise ValueError("run_at must carry a timezone (ISO-8601 with Z or an offset)")
        if self.run_at is not None and self.run_at > datetime.now(UTC) + timedelta(days=MAX_DELAY_DAYS):
            raise ValueError(f"run_at must be within {MAX_DELAY_DAYS} days")
        return self


class JobView(BaseModel):
    """A job as the API answers it (lease internals left out)."""

    id: int
    queue: str
    type: str
    payload: dict[str, Any]
    status: Status
    priority: int
    attempts: int
    max_attempts: int
    backoff: dict[str, Any]
    timeout_ms: int
    idempotency_key: str | None = None
    result: Any | None = None
    error: str | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    run_at: datetime | None = Field(default=None, description="when it may run next (a delay or a retry)")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    group: str | None = Field(default=None, description="its flow-control group")
    schedule_id: str | None = Field(default=None, description="the schedule that made it")
    scheduled_for: datetime | None = Field(default=None, description="the schedule's tick it stands for")

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobView:
        data = {k: row.get(k) for k in cls.model_fields}
        data["group"] = row.get("group_key")
        if row.get("status") in TERMINAL:
            data["run_at"] = None
        return cls.model_validate(data)


# --- flow control (issue 11) ----------------------------------------------------------------


class Rate(BaseModel):
    """At most `limit` starts per `period_ms` on average, up to `burst` at once; in any window of
    one period, never more than limit + burst (GCRA, enforced inside the claim script)."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(ge=1, le=1_000_000)
    period_ms: int = Field(ge=1, le=86_400_000)
    burst: int = Field(default=1, ge=1, le=1_000_000)

    def spec(self) -> str:
        return f"{self.limit}/{self.period_ms}/{self.burst}"


class JobDefaults(BaseModel):
    """Options for the queue's jobs whose request and type set none."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int | None = Field(default=None, ge=1, le=100)
    backoff: Backoff | None = None
    timeout_ms: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT_MS)


class RetentionRule(BaseModel):
    """Keep finished jobs of a status at most `age_days`, and/or only the newest `count`."""

    model_config = ConfigDict(extra="forbid")

    age_days: float | None = Field(default=None, ge=0, le=36_500)
    count: int | None = Field(default=None, ge=0, le=100_000_000)


class Retention(BaseModel):
    model_config = ConfigDict(extra="forbid")

    completed: RetentionRule | None = None
    failed: RetentionRule | None = None


class QueueSettings(BaseModel):
    """A queue's settings (PUT /api/queues/{name}); every field optional, null for none."""

    model_config = ConfigDict(extra="forbid")

    defaults: JobDefaults | None = None
    concurrency: int | None = Field(default=None, ge=1, le=1_000_000, description="jobs running at once, all drains")
    rate: Rate | None = Field(default=None, description="starts per period, all drains")
    group_concurrency: int | None = Field(default=None, ge=1, le=1_000_000, description="per group")
    group_rate: Rate | None = Field(default=None, description="per group")
    retention: Retention | None = None
    aging_ms: int | None = Field(
        default=None, ge=1, le=7 * 24 * 3600 * 1000, description="a waiting job gains one priority level per aging_ms"
    )

    def limits(self) -> dict[str, str | None]:
        """The fields of the queue's `limits` HASH in Redis (claim.lua); None clears one."""
        return {
            "c": str(self.concurrency) if self.concurrency else None,
            "r": self.rate.spec() if self.rate else None,
            "gc": str(self.group_concurrency) if self.group_concurrency else None,
            "gr": self.group_rate.spec() if self.group_rate else None,
            "aging": str(self.aging_ms) if self.aging_ms else None,
        }
