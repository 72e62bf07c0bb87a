"""The job's shapes: the enqueue request, the retry policy, and the public view that the API and
the client share. The SQLModel table model is in table.py, kept apart so that importing the API
does not load SQLAlchemy (a quarter of a cold start)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_serializer,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError, ValidationError

Status = Literal["waiting", "pending", "scheduled", "processing", "completed", "failed", "cancelled"]
STATUSES: tuple[str, ...] = ("waiting", "pending", "scheduled", "processing", "completed", "failed", "cancelled")
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
MAX_TIMEOUT_MS = 15 * 60 * 1000  # Vercel's longest function is 800 s; Lambda's 900 s
MAX_DELAY_DAYS = 365  # how far ahead delay_ms / run_at may schedule a job
MAX_CALLBACK_URL_CHARS = 2048  # as webhook.deliver's url

# DESIGN.md section 8: names a request may give instead of a number; stored as the number.
PRIORITY_NAMES: dict[str, int] = {"low": 2, "normal": 5, "high": 7, "urgent": 9}
DEFAULT_PRIORITY = 5


def _priority_name(value: Any) -> Any:
    if isinstance(value, str) and not value.strip().isdigit():
        if value in PRIORITY_NAMES:
            return PRIORITY_NAMES[value]
        raise PydanticCustomError(
            "priority_name", "priority must be an integer 0-9 or one of low (2), normal (5), high (7), urgent (9)"
        )
    return value  # a number (or digits, as before): the int validation below applies


# 0-9, higher first; validated to the int, so everything past the request sees a number.
Priority = Annotated[
    int,
    BeforeValidator(_priority_name),
    Field(ge=0, le=9),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": 9},
                {"type": "string", "enum": list(PRIORITY_NAMES)},
            ]
        },
        mode="validation",
    ),
]


class Backoff(BaseModel):
    """Retry spacing: fixed `delay_ms`, or exponential `delay_ms * 2^(attempt-1)` capped by
    `max_delay_ms`; `jitter` (0-1) randomises that fraction of the delay downwards."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["fixed", "exponential"] = "exponential"
    delay_ms: int = Field(default=1000, ge=0, le=7 * 24 * 3600 * 1000)
    max_delay_ms: int = Field(default=3_600_000, ge=0, le=30 * 24 * 3600 * 1000)
    jitter: float = Field(default=0.0, ge=0.0, le=1.0)


MAX_DEPENDENCIES = 10_000  # per job: a fan-in of 10,000 children (bench/flows.py) in one request


class BatchRef(BaseModel):
    """`{"index": N}` in a batch's `depends_on`: the batch's N-th job (from 0)."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, lt=1000)


JobRef = Annotated[int, Field(ge=1, le=2**63 - 1)] | BatchRef


class DependencyView(BaseModel):
    """A job on either side of a dependency, as the view lists it."""

    id: int
    status: Status
    type: str | None = None


class JobRequest(BaseModel):
    """One job to enqueue (the body of POST /api/jobs)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    priority: Priority = Field(
        default=DEFAULT_PRIORITY,
        description="9 runs first, 0 last; default 5. Also by name: low (2), normal (5), high (7), urgent (9)",
    )
    delay_ms: int | None = Field(default=None, ge=0, le=MAX_DELAY_DAYS * 24 * 3600 * 1000)
    run_at: datetime | None = Field(
        default=None, description="run no earlier than this ISO-8601 time with a timezone (Z or an offset)"
    )
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
    depends_on: list[JobRef] | None = Field(
        default=None,
        max_length=MAX_DEPENDENCIES,
        description='jobs that must finish first (ids; in a batch also {"index": N}, the batch\'s N-th job): '
        "until then the job is `waiting`",
    )
    on_dependency_failure: Literal["fail", "ignore", "continue"] | None = Field(
        default=None,
        description="when a dependency fails or is cancelled: `fail` (the default: this job is cancelled too), "
        "`ignore` (run anyway) or `continue` (run, and the handler sees the failure in ctx.dependencies())",
    )
    callback_url: str | None = Field(
        default=None,
        max_length=MAX_CALLBACK_URL_CHARS,
        description="when the job ends (completed, failed or cancelled), its final view is POSTed here as a "
        "signed webhook.deliver job (http or https; private addresses are refused at delivery)",
    )

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, value: str | None) -> str | None:
        # The scheme and host here; the full URL check is webhook.deliver's own payload model
        # (enqueue.py), and the destination's address is judged at delivery, like any webhook's.
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError("callback_url must be an http or https URL")
        if not parts.hostname:
            raise ValueError("callback_url has no host")
        if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError("callback_url must not contain spaces or control characters")
        return value

    # A field validator rather than a model-level one, so a 422 names `run_at` (delay_ms is
    # declared first, so it is in `info.data` when it was valid).
    @field_validator("run_at")
    @classmethod
    def _run_at(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is None:
            return None
        if info.data.get("delay_ms") is not None:
            raise ValueError("give delay_ms or run_at, not both")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("run_at must carry a timezone (ISO-8601 with Z or an offset)")
        if value > datetime.now(UTC) + timedelta(days=MAX_DELAY_DAYS):
            raise ValueError(f"run_at must be within {MAX_DELAY_DAYS} days")
        return value


def field_error(model: BaseModel, field: str, message: str) -> ValidationError:
    """For a model-level check that one field fails: raised from a model validator, its error
    carries `field` as its location (a ValueError would carry none, and the 422 would name only
    the body)."""
    error = InitErrorDetails(
        type=PydanticCustomError("invalid_combination", message), loc=(field,), input=getattr(model, field, None)
    )
    return ValidationError.from_exception_data(type(model).__name__, [error])


IsoTime = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]


class HistoryEntry(BaseModel):
    """One entry of a job's history, oldest first. Two kinds share this shape:

    - an **attempt**: `attempt` and `started_at` when it is claimed; `ended_at`, `outcome`,
      `error` and `duration_ms` once it ends;
    - a **requeue** (a retry or a dead-letter replay): `requeued_at` and `previous_status`.

    Only the fields of an entry's kind are present."""

    # Keys the engine may add later pass through rather than being dropped.
    model_config = ConfigDict(extra="allow")

    attempt: int | None = Field(default=None, description="attempt: its number, from 1")
    started_at: IsoTime | None = Field(default=None, description="attempt: when it was claimed (UTC)")
    ended_at: IsoTime | None = Field(default=None, description="attempt: when it ended (UTC)")
    outcome: str | None = Field(
        default=None,
        description="attempt: `completed`, `retried` (failed, another attempt follows), `failed` (the job "
        "failed) or `lost` (its worker stopped before it finished: the lease expired)",
    )
    error: str | None = Field(default=None, description="attempt: the error, when it did not complete")
    duration_ms: int | None = Field(default=None, description="attempt: the handler's run time")
    requeued_at: IsoTime | None = Field(default=None, description="requeue: when it was re-run (UTC)")
    previous_status: str | None = Field(default=None, description="requeue: `failed` or `cancelled`")

    @model_serializer(mode="wrap")
    def _as_stored(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Answer the entry as stored: the other kind's fields are absent, not null.
        data = handler(self)
        present = self.model_fields_set | set(self.model_extra or ())
        return {k: v for k, v in data.items() if k in present}

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        # A wrap serializer would make the response schema "anything": it is these fields, as read.
        if handler.mode == "serialization":
            return cls.model_json_schema(mode="validation")
        return handler(schema)


class Progress(BaseModel):
    """A handler's last progress report (`ctx.progress`)."""

    percent: float = Field(ge=0, le=100)
    message: str | None = None
    data: Any | None = None
    updated_at: datetime


class JobView(BaseModel):
    """A job as the API answers it (lease internals left out)."""

    id: int
    queue: str
    type: str
    payload: dict[str, Any]
    status: Status
    priority: int = Field(description="0-9; 9 runs first")
    attempts: int
    max_attempts: int
    backoff: dict[str, Any]
    timeout_ms: int
    idempotency_key: str | None = None
    result: Any | None = None
    error: str | None = None
    history: list[HistoryEntry] = Field(default_factory=list, description="attempts and requeues, oldest first")
    run_at: datetime | None = Field(default=None, description="when it may run next (a delay or a retry)")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    group: str | None = Field(default=None, description="its flow-control group")
    depends_on: list[DependencyView] = Field(default_factory=list, description="the jobs it waits for")
    dependents: list[DependencyView] = Field(default_factory=list, description="the jobs that wait for it")
    on_dependency_failure: Literal["fail", "ignore", "continue"] | None = Field(
        default=None, description="its policy when a dependency fails (null: it has no dependencies)"
    )
    schedule_id: str | None = Field(default=None, description="the schedule that made it")
    scheduled_for: datetime | None = Field(default=None, description="the schedule's tick it stands for")
    progress: Progress | None = Field(
        default=None, description="the handler's last progress report (live while it runs), or null"
    )
    callback_url: str | None = Field(default=None, description="where its final view is POSTed when it ends")
    created_by: int | None = Field(
        default=None, description="the job whose handler enqueued it (ctx.enqueue), or that a callback reports on"
    )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobView:
        return cls.model_validate(cls.row_data(row))

    @classmethod
    def row_data(cls, row: dict[str, Any]) -> dict[str, Any]:
        """The view's fields from a row, before validation (a batch validates them in one call)."""
        data = {k: row.get(k) for k in cls.model_fields}
        data["group"] = row.get("group_key")
        data["depends_on"] = row.get("depends_on") or []
        data["dependents"] = row.get("dependents") or []
        data["callback_url"] = (row.get("callback") or {}).get("url")
        if row.get("status") in TERMINAL:
            data["run_at"] = None
        return data


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
