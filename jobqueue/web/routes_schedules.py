"""`/api/schedules`: recurring jobs over HTTP (DESIGN.md §8). The engine (jobqueue/schedules.py)
checks definitions and fires ticks; these routes move bytes and shapes, as the job routes do: the
PUT body is read and parsed by hand so the size limit and our error shape hold before parsing."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel

from jobqueue.models import JobView
from jobqueue.schedule_spec import ScheduleRequest, ScheduleView

from .auth import require_api_token
from .deps import JQ, inline_schema, json_body, parse_json, read_body, require_object
from .http_errors import COMMON_ERRORS, NOT_FOUND, TOO_LARGE, ApiRoute

SCHEDULE_BODY_LIMIT = 512 * 1024  # a payload of up to JOBQUEUE_MAX_PAYLOAD_BYTES and the options

router = APIRouter(
    prefix="/api/schedules",
    tags=["schedules"],
    dependencies=[Depends(require_api_token)],
    responses=COMMON_ERRORS,
    route_class=ApiRoute,
)

ScheduleId = Annotated[
    str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$", description="chosen by you; stable")
]


CREATED: dict[int | str, dict[str, Any]] = {201: {"model": ScheduleView, "description": "Created"}}


class ScheduleList(BaseModel):
    schedules: list[ScheduleView]


def _json(model: BaseModel, status: int) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


@router.get("", response_model=ScheduleList, summary="Every schedule, by id")
async def list_schedules(jq: JQ) -> ScheduleList:
    return ScheduleList(schedules=await jq.schedules.all())


@router.put(
    "/{schedule_id}",
    response_model=ScheduleView,
    status_code=200,
    summary="Create (201) or replace (200) a schedule",
    responses=CREATED | TOO_LARGE,
    openapi_extra=json_body(inline_schema(ScheduleRequest.model_json_schema())),
)
async def put_schedule(schedule_id: ScheduleId, request: Request, jq: JQ) -> Response:
    data = require_object(parse_json(await read_body(request, SCHEDULE_BODY_LIMIT)))
    view, created = await jq.schedules.put(schedule_id, data)
    return _json(view, 201 if created else 200)


@router.get("/{schedule_id}", response_model=ScheduleView, summary="One schedule", responses=NOT_FOUND)
async def get_schedule(schedule_id: ScheduleId, jq: JQ) -> ScheduleView:
    view: ScheduleView = await jq.schedules.get(schedule_id)
    return view


@router.delete("/{schedule_id}", status_code=204, summary="Delete a schedule (its jobs stay)", responses=NOT_FOUND)
async def delete_schedule(schedule_id: ScheduleId, jq: JQ) -> Response:
    await jq.schedules.delete(schedule_id)
    return Response(status_code=204)


@router.post("/{schedule_id}/pause", response_model=ScheduleView, summary="Stop firing", responses=NOT_FOUND)
async def pause_schedule(schedule_id: ScheduleId, jq: JQ) -> ScheduleView:
    view: ScheduleView = await jq.schedules.set_paused(schedule_id, True)
    return view


@router.post(
    "/{schedule_id}/resume",
    response_model=ScheduleView,
    summary="Fire again (the misfire policy decides what becomes of the ticks missed meanwhile)",
    responses=NOT_FOUND,
)
async def resume_schedule(schedule_id: ScheduleId, jq: JQ) -> ScheduleView:
    view: ScheduleView = await jq.schedules.set_paused(schedule_id, False)
    return view


@router.post(
    "/{schedule_id}/trigger",
    response_model=JobView,
    status_code=201,
    summary="Enqueue one job of the schedule now (its next tick is unchanged)",
    responses=NOT_FOUND,
)
async def trigger_schedule(schedule_id: ScheduleId, jq: JQ) -> Response:
    return _json(JobView.from_row(await jq.schedules.trigger(schedule_id)), 201)
