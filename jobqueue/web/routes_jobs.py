"""`/api/jobs`: enqueue (one or a batch), read, list, cancel, retry. Validation and state rules
live in the engine; these routes only move bytes and shapes.

The enqueue routes read the raw body themselves: the size limit must hold before anything is
parsed (a 10 MB body must not be decoded to learn it is too big), and malformed JSON must answer
a 422 in our error shape with the parser's reason. Their OpenAPI body is declared by hand for the
same reason (FastAPI would otherwise parse it first); `create_app()`'s document replaces it with
the named, per-type schemas (web/openapi.py).

Two routers over one prefix, so every route is authenticated by its router: `enqueue` (the admin
token or JOBS_ENQUEUE_TOKEN: enqueue, and read a job by id) and `router` (the admin token).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field, TypeAdapter

from jobqueue.errors import InvalidJob
from jobqueue.models import JobRequest, JobView
from jobqueue.settings import Settings

from .auth import require_api_token, require_enqueue
from .deps import (
    JQ,
    MAX_ID,
    PageDep,
    SettingsDep,
    StatusFilter,
    encode_cursor,
    inline_schema,
    json_body,
    parse_json,
    read_body,
    require_object,
)
from .http_errors import COMMON_ERRORS, CONFLICT, NOT_FOUND, TOO_LARGE, ApiRoute, InvalidRequest

MAX_BATCH = 1000  # DESIGN.md section 5; the engine enforces the same bound
# Vercel refuses request bodies over 4.5 MB before the function runs; a batch may use all of it.
PLATFORM_BODY_LIMIT = 4_500_000

enqueue_router = APIRouter(
    prefix="/api/jobs",
    tags=["jobs"],
    dependencies=[Depends(require_enqueue)],
    responses=COMMON_ERRORS,
    route_class=ApiRoute,
)
router = APIRouter(
    prefix="/api/jobs",
    tags=["jobs"],
    dependencies=[Depends(require_api_token)],
    responses=COMMON_ERRORS,
    route_class=ApiRoute,
)

JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="the job's id")]


class JobList(BaseModel):
    """A page of jobs, newest first."""

    jobs: list[JobView]
    next_cursor: str | None = Field(description="pass as `cursor` for the next (older) page; null at the end")


class JobBatch(BaseModel):
    """The enqueued jobs, in the order of the request."""

    jobs: list[JobView]


JOB_REQUEST_SCHEMA = inline_schema(JobRequest.model_json_schema())
BATCH_SCHEMA = {
    "type": "object",
    "properties": {"jobs": {"type": "array", "items": JOB_REQUEST_SCHEMA, "maxItems": MAX_BATCH}},
    "required": ["jobs"],
    "additionalProperties": False,
}


_VIEWS: TypeAdapter[list[JobView]] = TypeAdapter(list[JobView])

SEEN_KEY: dict[int | str, dict[str, Any]] = {
    200: {"model": JobView, "description": "The idempotency key was already used in this queue: that job"}
}


def json_response(body: str, status_code: int) -> Response:
    """The enqueue routes serialise their (already validated) models once, in pydantic's core;
    returning the model would make FastAPI validate and serialise it again through
    `response_model`, which stays on the route for the OpenAPI schema only."""
    return Response(content=body, status_code=status_code, media_type="application/json")


def batch_body_limit(settings: Settings) -> int:
    """A batch may carry up to MAX_BATCH full-size payloads, within what the platform delivers;
    each payload is still held to max_payload_bytes by the engine."""
    return max(settings.max_payload_bytes, min(settings.max_payload_bytes * MAX_BATCH, PLATFORM_BODY_LIMIT))


@enqueue_router.post(
    "",
    status_code=201,
    response_model=JobView,
    summary="Enqueue a job",
    responses=SEEN_KEY | TOO_LARGE,
    openapi_extra=json_body(JOB_REQUEST_SCHEMA),
)
async def enqueue(request: Request, jq: JQ, settings: SettingsDep) -> Response:
    data = require_object(parse_json(await read_body(request, settings.max_payload_bytes)))
    row, created = await jq.enqueue(data)
    return json_response(JobView.from_row(row).model_dump_json(), 201 if created else 200)


@enqueue_router.post(
    "/batch",
    status_code=201,
    response_model=JobBatch,
    summary="Enqueue up to 1000 jobs, all or nothing",
    responses=TOO_LARGE,
    openapi_extra=json_body(BATCH_SCHEMA),
)
async def enqueue_batch(request: Request, jq: JQ, settings: SettingsDep) -> Response:
    data = require_object(parse_json(await read_body(request, batch_body_limit(settings))))
    unknown = sorted(set(data) - {"jobs"})
    if unknown:
        raise InvalidRequest(f'unknown field {unknown[0]!r}; the body is {{"jobs": [...]}}', field=unknown[0])
    jobs = data.get("jobs")
    if not isinstance(jobs, list):
        raise InvalidRequest("jobs must be a list of job objects", field="jobs")
    for i, job in enumerate(jobs[: MAX_BATCH + 1]):
        if not isinstance(job, dict):
            raise InvalidJob(f"jobs[{i}] must be a JSON object, got {type(job).__name__}", field=f"jobs.{i}")
    results = await jq.enqueue_many(jobs)
    return Response(content=batch_json([row for row, _ in results]), status_code=201, media_type="application/json")


def batch_json(rows: list[dict[str, Any]]) -> bytes:
    """JobBatch's JSON for these rows. Rows the enqueue has just written (no attempt, history or
    outcome yet: the rows `insert` rebuilt from what it sent) are written by orjson straight from
    the row; validating 1000 JobViews only to serialise them again was a sixth of a batch
    request's time. The keys are JobView's fields in its order. Any other row (an idempotency
    key's existing job) goes through JobView.
    tests/api/test_jobs.py checks that both give the same bytes."""
    if all(_is_fresh(r) for r in rows):
        views = [
            {
                "id": r["id"],
                "queue": r["queue"],
                "type": r["type"],
                "payload": r["payload"],
                "status": r["status"],
                "priority": r["priority"],
                "attempts": r["attempts"],
                "max_attempts": r["max_attempts"],
                "backoff": r["backoff"],
                "timeout_ms": r["timeout_ms"],
                "idempotency_key": r["idempotency_key"],
                "result": None,
                "error": None,
                "history": [],
                "run_at": r["run_at"],
                "created_at": r["created_at"],
                "started_at": None,
                "finished_at": None,
                "group": r.get("group_key"),
                "depends_on": [],
                "dependents": [],
                "on_dependency_failure": r.get("on_dependency_failure"),
                "schedule_id": r.get("schedule_id"),
                "scheduled_for": r.get("scheduled_for"),
                "progress": None,
                "callback_url": (r.get("callback") or {}).get("url"),
                "created_by": r.get("created_by"),
            }
            for r in rows
        ]
        return orjson.dumps({"jobs": views}, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS)
    return b'{"jobs":' + _VIEWS.dump_json(_VIEWS.validate_python([JobView.row_data(r) for r in rows])) + b"}"


def _is_fresh(r: dict[str, Any]) -> bool:
    return (
        r.get("status") in ("pending", "scheduled")
        and not r.get("attempts")
        and not r.get("history")
        and r.get("result") is None
        and r.get("error") is None
        and r.get("started_at") is None
        and r.get("finished_at") is None
        and r.get("progress") is None
        and not r.get("depends_on")
        and not r.get("dependents")
    )


ScheduleFilter = Annotated[
    str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$", description="only this schedule's jobs")
]


@router.get("", response_model=JobList, summary="List jobs, newest first")
async def list_jobs(jq: JQ, page: PageDep, status: StatusFilter = None, schedule_id: ScheduleFilter = None) -> JobList:
    rows, last = await jq.list_jobs(
        status=status,
        queue=page.queue,
        type=page.type,
        limit=page.limit,
        cursor=page.cursor,
        schedule_id=schedule_id,
    )
    return JobList(jobs=[JobView.from_row(r) for r in await jq.live(rows)], next_cursor=encode_cursor(last))


WaitS = Annotated[
    float | None,
    Query(
        gt=0,
        le=25,
        description="answer as soon as the job is completed, failed or cancelled, or after this many seconds "
        "(at most 25) with its current view",
    ),
]


@enqueue_router.get("/{job_id}", response_model=JobView, summary="Get a job", responses=NOT_FOUND)
async def get_job(job_id: JobId, jq: JQ, wait_s: WaitS = None) -> Response:
    # Serialised once, as the enqueue routes do (json_response); the model stays for the schema.
    return json_response(JobView.from_row(await jq.view(job_id, wait_s)).model_dump_json(), 200)


@router.post(
    "/{job_id}/cancel", response_model=JobView, summary="Cancel a pending or scheduled job", responses=CONFLICT
)
async def cancel_job(job_id: JobId, jq: JQ) -> JobView:
    return JobView.from_row(await jq.cancel(job_id))


@router.post("/{job_id}/retry", response_model=JobView, summary="Re-run a failed or cancelled job", responses=CONFLICT)
async def retry_job(job_id: JobId, jq: JQ) -> JobView:
    return JobView.from_row(await jq.retry(job_id))
