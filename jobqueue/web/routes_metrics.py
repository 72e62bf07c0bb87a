"""`/api/metrics`: queue metrics as JSON (for the dashboard and scripts) and in the Prometheus text
format (for a scraper). Both take the API token or JOBS_METRICS_TOKEN. The figures and their definitions are in
jobqueue/metrics.py; each request costs two Postgres statements and two Redis requests side by side
(a third when jobs are parked).
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from jobqueue.models import QueueSettings

from .auth import require_metrics
from .deps import JQ
from .http_errors import COMMON_ERRORS, ApiRoute

# The same string as jobqueue.metrics.PROMETHEUS_CONTENT_TYPE, spelled out so that importing the
# API (every cold start) does not import prometheus_client; the routes import it when called.
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

router = APIRouter(
    prefix="/api/metrics",
    tags=["metrics"],
    dependencies=[Depends(require_metrics)],
    responses=COMMON_ERRORS,
    route_class=ApiRoute,
)


class ExecutionStats(BaseModel):
    count: int = Field(description="jobs with a measured run time")
    mean: float | None
    p50: float | None
    p95: float | None


class WaitStats(BaseModel):
    count: int
    mean: float | None
    p95: float | None


class LastHour(BaseModel):
    completed: int
    failed: int
    success_rate: float | None = Field(description="completed / (completed + failed); null when none finished")
    execution_ms: ExecutionStats = Field(description="run time of each job's latest attempt")
    wait_ms: WaitStats = Field(description="enqueue to first start")
    throughput_per_minute: list[int] = Field(description="completed jobs per minute, 60 values, oldest first")


class LastDay(BaseModel):
    completed: int
    failed: int
    success_rate: float | None
    attempts: dict[str, dict[str, int]] = Field(
        description='{"completed"|"failed": {attempts used: jobs}} for the jobs finished in the last day'
    )


class RedisIndex(BaseModel):
    ready: int
    delayed: int
    processing: int


class ParkedScope(BaseModel):
    scope: str = Field(description="`g:<group hash>`, `t:<type tag>` or `t:<type tag>:g:<group hash>`")
    type: str | None = Field(description="the job type the scope limits, when this server knows its tag")
    group_hash: str | None = Field(description="the group's hash (group names are not kept in Redis)")
    parked: int = Field(description="jobs parked under this scope")


class FlowStats(BaseModel):
    running: int = Field(description="jobs running now: leases whose deadline is still ahead (Redis)")
    parked: int = Field(description="jobs held back by a group's or a type's limit (Redis)")
    top_parked: list[ParkedScope] = Field(description="the scopes with the most parked jobs, at most 10")


class QueueMetrics(BaseModel):
    paused: bool
    settings: QueueSettings = Field(description="the queue's settings (PUT /api/queues/{name}); null: not set")
    flow: FlowStats = Field(description="flow control's live view")
    jobs: dict[str, int] = Field(description="pending, scheduled, processing, failed, cancelled (Postgres)")
    ready: dict[str, int] = Field(description="ready jobs per priority, 9 (first) to 0 (Redis)")
    redis: RedisIndex = Field(description="what the Redis dispatch index holds")
    oldest_pending_age_s: float = Field(description="how long the oldest due job has waited; 0 when none")
    last_hour: LastHour = Field(description="jobs that finished in the last hour")
    last_day: LastDay = Field(description="jobs that finished in the last 24 hours")


class Metrics(BaseModel):
    generated_at: datetime
    queues: dict[str, QueueMetrics]


@router.get("", summary="Queue metrics")
async def metrics_json(jq: JQ) -> Metrics:
    from jobqueue.metrics import collect

    return Metrics.model_validate(await collect(jq))


@router.get(
    "/prometheus",
    summary="Queue metrics in the Prometheus text format",
    response_class=Response,
    responses={200: {"content": {PROMETHEUS_CONTENT_TYPE: {}}, "description": "text exposition format 0.0.4"}},
)
async def metrics_prometheus(jq: JQ) -> Response:
    from jobqueue.metrics import collect, prometheus_text

    return Response(prometheus_text(await collect(jq)), media_type=PROMETHEUS_CONTENT_TYPE)
