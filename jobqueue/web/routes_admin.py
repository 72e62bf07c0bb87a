"""Operator routes: the dead-letter queue (`/api/dlq`), queues (`/api/queues`: counts, settings,
pause, resume) and `/api/health`, the one route without auth."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from jobqueue.errors import Unavailable
from jobqueue.models import STATUSES, JobView, QueueSettings, field_error

from .auth import require_api_token
from .deps import (
    JQ,
    MAX_ID,
    QUEUE_PATTERN,
    PageDep,
    StorableStr,
    encode_cursor,
    inline_schema,
    json_body,
    parse_json,
    parse_model,
    read_body,
    require_object,
    resources,
)
from .http_errors import COMMON_ERRORS, TOO_LARGE, ApiRoute
from .routes_jobs import JobList

log = logging.getLogger("jobqueue.api")

HEALTH_TIMEOUT_S = 3.0  # a health probe must answer well inside a load balancer's timeout
MAX_REPLAY_IDS = 10_000
REPLAY_BODY_LIMIT = 1024 * 1024  # 10,000 ids of up to 19 digits fit comfortably
SETTINGS_BODY_LIMIT = 16 * 1024  # every setting, spelt out, is well under 1 KB

dlq = APIRouter(
    prefix="/api/dlq",
    tags=["dlq"],
    dependencies=[Depends(require_api_token)],
    responses=COMMON_ERRORS,
    route_class=ApiRoute,
)
queues = APIRouter(
    prefix="/api/queues",
    tags=["queues"],
    dependencies=[Depends(require_api_token)],
    responses=COMMON_ERRORS,
    route_class=ApiRoute,
)
health = APIRouter(tags=["health"], route_class=ApiRoute)


# --- dead-letter queue --------------------------------------------------------------------------


class ReplayRequest(BaseModel):
    """Either `ids`, or a filter (`queue` and/or `type`). An empty filter is refused rather than
    taken to mean "everything": a stray `{}` must not re-run the whole dead-letter queue."""

    model_config = ConfigDict(extra="forbid")

    ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = Field(default=None, max_length=MAX_REPLAY_IDS)
    queue: str | None = Field(default=None, min_length=1, max_length=100, pattern=QUEUE_PATTERN)
    type: StorableStr | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _ids_or_filter(self) -> ReplayRequest:
        # Each refusal names a field (a plain ValueError here would name only the body).
        if self.ids is not None and (self.queue is not None or self.type is not None):
            extra = "queue" if self.queue is not None else "type"
            raise field_error(self, extra, "give ids or a queue/type filter, not both")
        if self.ids is None and self.queue is None and self.type is None:
            raise field_error(self, "ids", "give ids, or a queue and/or type to replay by filter")
        return self


class Replayed(BaseModel):
    replayed: int = Field(description="how many failed jobs were queued again")


class Purged(BaseModel):
    purged: int = Field(description="how many failed jobs were deleted")


@dlq.get("", response_model=JobList, summary="List dead-lettered (failed) jobs, newest first")
async def list_dlq(jq: JQ, page: PageDep) -> JobList:
    rows, last = await jq.list_jobs(
        status="failed", queue=page.queue, type=page.type, limit=page.limit, cursor=page.cursor
    )
    return JobList(jobs=[JobView.from_row(r) for r in rows], next_cursor=encode_cursor(last))


@dlq.post(
    "/replay",
    response_model=Replayed,
    summary="Re-run dead-lettered jobs with fresh attempts",
    responses=TOO_LARGE,
    openapi_extra=json_body(inline_schema(ReplayRequest.model_json_schema())),
)
async def replay(request: Request, jq: JQ) -> Replayed:
    # Read by hand, like the enqueue routes, so auth runs before any parsing and errors keep one shape.
    body = parse_model(ReplayRequest, parse_json(await read_body(request, REPLAY_BODY_LIMIT)))
    n = await jq.replay(body.ids, queue=body.queue, type=body.type)
    return Replayed(replayed=n)


@dlq.delete("", response_model=Purged, summary="Delete dead-lettered jobs that failed before the cutoff")
async def purge(
    jq: JQ,
    older_than_days: Annotated[float, Query(ge=0, le=36_500, description="age of the failure in days")],
) -> Purged:
    return Purged(purged=await jq.purge(older_than_days))


# --- queues ------------------------------------------------------------------------------------


class QueueView(BaseModel):
    name: str
    paused: bool
    counts: dict[str, int] = Field(description="jobs per status")
    settings: QueueSettings = Field(
        default_factory=QueueSettings, description="flow control, job defaults and retention; null: not set"
    )


class QueueList(BaseModel):
    queues: list[QueueView]


class QueueState(BaseModel):
    name: str
    paused: bool


QueueName = Annotated[str, Path(min_length=1, max_length=100, pattern=QUEUE_PATTERN)]


@queues.get("", response_model=QueueList, summary="Counts per queue and state, and each queue's settings")
async def list_queues(jq: JQ) -> QueueList:
    counts = await jq.queue_counts()
    return QueueList(queues=[QueueView.model_validate(q) for q in counts.values()])


@queues.put(
    "/{name}",
    response_model=QueueView,
    summary="Change a queue's settings: the fields given are set, null clears one, the others stay",
    responses=TOO_LARGE,
    openapi_extra=json_body(inline_schema(QueueSettings.model_json_schema())),
)
async def put_queue_settings(name: QueueName, request: Request, jq: JQ) -> QueueView:
    # Read by hand, as the other bodies are: the size limit and our error shape hold before
    # parsing; the engine validates every field given (a 422 naming it) before it writes anything.
    data = require_object(parse_json(await read_body(request, SETTINGS_BODY_LIMIT)))
    parse_model(QueueSettings, data)  # an unknown field or a bad value: a 422 naming it, nothing written
    await jq.set_queue_settings(name, data)
    found = (await jq.queue_counts()).get(name)
    if found is None:  # all settings cleared on a queue nothing else names: as GET would show it
        found = {"name": name, "paused": False, "counts": dict.fromkeys(STATUSES, 0), "settings": {}}
    return QueueView.model_validate(found)


@queues.post("/{name}/pause", response_model=QueueState, summary="Stop draining a queue; its jobs stay")
async def pause_queue(name: QueueName, jq: JQ) -> QueueState:
    await jq.set_paused(name, True)
    return QueueState(name=name, paused=True)


@queues.post("/{name}/resume", response_model=QueueState, summary="Drain a paused queue again")
async def resume_queue(name: QueueName, jq: JQ) -> QueueState:
    await jq.set_paused(name, False)
    return QueueState(name=name, paused=False)


# --- health ------------------------------------------------------------------------------------

Check = Literal["ok", "down", "not configured"]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    postgres: Check
    redis: Check


async def _probe(name: str, probe: Awaitable[Any]) -> Check:
    try:
        await asyncio.wait_for(probe, HEALTH_TIMEOUT_S)
    except Exception as e:  # any failure means "down"; the reason goes to the log, not the caller
        log.warning("health: %s is down: %s", name, getattr(e, "message", None) or type(e).__name__)
        return "down"
    return "ok"


@health.get(
    "/api/health",
    response_model=Health,
    summary="Liveness of Postgres and Redis (no auth)",
    responses={503: {"model": Health, "description": "Postgres or Redis is down; the body says which"}},
)
async def get_health(request: Request) -> JSONResponse:
    res = resources(request)
    s = res.settings
    pg: Check = "ok" if s.database_url else "not configured"
    rd: Check = "ok" if (s.upstash_url and s.upstash_token) or s.redis_url else "not configured"
    if res.built is not None:
        pg = rd = "ok"  # an engine handed to create_app carries its own connections
    if pg == "ok" and rd == "ok":
        try:
            jq = res.jq()
        except Unavailable as e:
            pg, rd = ("down", rd) if e.dependency == "postgres" else (pg, "down")
        except Exception as e:  # e.g. a malformed URL: say down, log why
            log.warning("health: cannot build the engine: %s", type(e).__name__)
            pg = rd = "down"
        else:
            pg, rd = await asyncio.gather(_probe("postgres", jq.store.ping()), _probe("redis", jq.broker.ping()))
    body = Health(status="ok" if pg == rd == "ok" else "unavailable", postgres=pg, redis=rd)
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ok" else 503)
