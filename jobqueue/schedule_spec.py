"""A schedule's shapes (the body of `PUT /api/schedules/{id}`, its view, the code declaration) and
the pure arithmetic of its misfire policies: which ticks a pass fires, given the watermark
(`next_run_at`, the earliest tick not yet fired or passed over) and the time now.

Policies, for the ticks in [next_run_at, now] (more than one after downtime):
- `coalesce` (default): one job, for the latest of them; the watermark moves past now.
- `catch_up`: one job per tick, oldest first, at most `catch_up_limit` per pass; the watermark
  moves past the last one fired, so the rest fire on the next passes.
- `skip`: the latest tick fires only when it is noticed within `misfire_grace_ms` of its time
  (default 60 s); otherwise the window passes without a job. The watermark moves past now.
`overlap: skip` fires at most one job per pass, and none while a job of the schedule is
unfinished (the insert itself checks, in the same statement).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .cron import InvalidTiming, Timing
from .models import MAX_TIMEOUT_MS, Backoff

SCHEDULE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
DEFAULT_SKIP_GRACE_MS = 60_000
EPSILON = timedelta(milliseconds=1)

Misfire = Literal["coalesce", "catch_up", "skip"]
Overlap = Literal["allow", "skip"]


class ScheduleRequest(BaseModel):
    """A schedule's definition: what to enqueue and when (the body of PUT /api/schedules/{id})."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=200, description="the job type to enqueue")
    payload: dict[str, Any] = Field(default_factory=dict, description="every job's payload")
    queue: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    priority: int = Field(default=5, ge=0, le=9)
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    backoff: Backoff | None = None
    timeout_ms: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT_MS)
    cron: str | None = Field(default=None, max_length=200, description="5 fields, read in `tz`")
    tz: str = Field(default="UTC", max_length=100, description="an IANA time zone name")
    every_ms: int | None = Field(default=None, description="a fixed interval (>= 1000), aligned to the epoch")
    misfire: Misfire = "coalesce"
    misfire_grace_ms: int | None = Field(default=None, ge=0, le=366 * 24 * 3600 * 1000)
    catch_up_limit: int = Field(default=10, ge=1, le=1000)
    overlap: Overlap = "allow"
    paused: bool = False

    def timing(self) -> Timing:
        """When it fires; raises InvalidTiming naming the field (cron, tz or every_ms)."""
        return Timing(cron=self.cron, tz=self.tz, every_ms=self.every_ms)


class ScheduleView(ScheduleRequest):
    """A schedule as the API answers it."""

    model_config = ConfigDict(extra="ignore")

    id: str
    next_run_at: datetime = Field(description="the next tick to fire (UTC)")
    last_run_at: datetime | None = Field(default=None, description="the last tick fired")
    last_job_id: int | None = None
    last_job_status: str | None = None
    source: Literal["code", "api"] = Field(description="declared in code (synced at deploy) or made over the API")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ScheduleView:
        data = dict(row)
        data["source"] = "code" if row.get("code_hash") else "api"
        return cls.model_validate(data)


@dataclass(frozen=True)
class ScheduleDecl:
    """A schedule declared in code (`@blueprint.schedule`), synced to Postgres at deploy."""

    id: str
    spec: ScheduleRequest


def check_schedule_id(schedule_id: str) -> str:
    if not SCHEDULE_ID.fullmatch(schedule_id):
        raise InvalidTiming("id", "a schedule id is 1-200 letters, digits, '_', '.', ':' or '-'")
    return schedule_id


@dataclass(frozen=True)
class Plan:
    """What one pass does for one schedule: the ticks to fire and where the watermark goes."""

    ticks: list[datetime]
    next_run_at: datetime
    passed: int  # ticks in the window, fired or not


def plan(spec: ScheduleRequest, next_run_at: datetime, now: datetime) -> Plan:
    """The ticks to fire at `now` for a schedule whose earliest unfired tick is `next_run_at`."""
    timing = spec.timing()
    if next_run_at > now:
        return Plan([], next_run_at, 0)
    after = next_run_at - EPSILON  # next_run_at is itself a tick
    if spec.misfire == "catch_up" and spec.overlap == "allow":
        ticks = timing.ticks(after, now, spec.catch_up_limit)
        return Plan(ticks, timing.next_after(ticks[-1]) if ticks else timing.next_after(now), len(ticks))
    latest, passed = timing.latest_until(after, now)
    following = timing.next_after(now)
    if latest is None:
        return Plan([], following, 0)
    if spec.misfire == "skip":
        grace = timedelta(
            milliseconds=DEFAULT_SKIP_GRACE_MS if spec.misfire_grace_ms is None else spec.misfire_grace_ms
        )
        if now - latest > grace:
            return Plan([], following, passed)  # noticed too late: passed over without a job
    return Plan([latest], following, passed)
