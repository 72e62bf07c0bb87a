"""The dashboard's Schedules page: every recurring job with its timing (cron and time zone, or a
fixed interval), next and last run, its last job (linked, with its status), its paused state, and
pause / resume / trigger.

Pause and resume are reversible and lose nothing, so they act at once. Trigger runs a job now
(outside the ticks, as `POST /api/schedules/{id}/trigger` does) and takes a confirmation step like
a retry, then lands on the new job's page. Every form is a POST carrying the session's CSRF token
from this site (`CsrfDep`), as the other actions are. Schedule ids, payloads, types and queue
names are untrusted text: the template prints them autoescaped, and the ids travel in URLs
percent-encoded.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from jobqueue.schedule_spec import ScheduleView

from .dashboard_actions import SCHEDULE_ID, Confirm, confirm_page, done, notice
from .dashboard_auth import CsrfDep, SessionDep, base_path
from .dashboard_render import DashboardRoute, fmt_duration, render
from .deps import JQ

router = APIRouter(route_class=DashboardRoute)

ScheduleId = Annotated[str, Path(min_length=1, max_length=200, pattern=SCHEDULE_ID)]
PAYLOAD_SHOWN = 120  # characters of a payload the table shows (the title holds more)


def timing(view: ScheduleView) -> str:
    """`cron 0 3 * * * (Europe/Lisbon)` or `every 5 min`."""
    if view.cron is not None:
        return f"cron {view.cron} ({view.tz})"
    return f"every {fmt_duration((view.every_ms or 0) / 1000)}"


def row(view: ScheduleView) -> dict[str, Any]:
    payload = json.dumps(view.payload, ensure_ascii=False, separators=(", ", ": "))
    short = payload if len(payload) <= PAYLOAD_SHOWN else payload[: PAYLOAD_SHOWN - 1] + "…"
    return {
        "id": view.id,
        "type": view.type,
        "queue": view.queue,
        "timing": timing(view),
        "payload": short,
        "payload_full": payload[:2000],
        "next_run_at": view.next_run_at,
        "last_run_at": view.last_run_at,
        "last_job_id": view.last_job_id,
        "last_job_status": view.last_job_status,
        "paused": view.paused,
        "source": view.source,
        "misfire": view.misfire,
        "overlap": view.overlap,
    }


@router.get("/schedules")
async def schedules(request: Request, session: SessionDep, jq: JQ) -> Response:
    views = await jq.schedules.all()
    return render(
        request,
        "schedules.html",
        session=session,
        nav="schedules",
        schedules=[row(v) for v in views],
        notice=notice(request),
    )


@router.post("/schedules/{schedule_id}/pause")
async def pause(request: Request, schedule_id: ScheduleId, session: CsrfDep, jq: JQ) -> Response:
    await jq.schedules.set_paused(schedule_id, True)  # a 404 page for a schedule that is not there
    return done(request, "/schedules", "schedule_paused", s=schedule_id)


@router.post("/schedules/{schedule_id}/resume")
async def resume(request: Request, schedule_id: ScheduleId, session: CsrfDep, jq: JQ) -> Response:
    await jq.schedules.set_paused(schedule_id, False)
    return done(request, "/schedules", "schedule_resumed", s=schedule_id)


@router.post("/schedules/{schedule_id}/trigger")
async def trigger(
    request: Request, schedule_id: ScheduleId, session: CsrfDep, jq: JQ, confirm: Confirm = ""
) -> Response:
    if confirm != "yes":
        view = await jq.schedules.get(schedule_id)
        where = f" in queue {view.queue}" if view.queue else ""
        return confirm_page(
            request,
            session,
            title=f"Run schedule {schedule_id} now?",
            body=f"One {view.type} job{where} is enqueued now, outside the schedule's ticks; "
            "its next tick is unchanged.",
            button="Run it now",
            back=f"{base_path(request)}/schedules",
        )
    job = await jq.schedules.trigger(schedule_id)
    return done(request, f"/jobs/{job['id']}", "triggered", s=schedule_id)
