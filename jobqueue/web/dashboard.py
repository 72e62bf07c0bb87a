"""The operator dashboard at `/dashboard`: server-rendered pages over the same engine the API uses,
for the holder of JOBS_API_TOKEN. Overview (per-queue counts, success rates, 24-hour and
last-hour charts, flow-control limits with running and parked jobs, pause/resume and a settings
form), jobs (filters, search, paging), a job's detail, the dead-letter queue, and schedules
(dashboard_schedules.py). The forms that change state are in dashboard_actions.py; sessions and
CSRF in _dashboard_auth.py; templates, filters and error pages in _dashboard_render.py.

Wire it with `app.include_router(dashboard.router)`: static assets are served by a route here,
so no mount is needed, and the routes stay out of the OpenAPI document.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Path, Query, Request, Response
from fastapi.responses import RedirectResponse

from jobqueue.errors import InvalidJob
from jobqueue.models import STATUSES, JobView, QueueSettings
from jobqueue.queue_admin import flat_values

from . import dashboard_actions, dashboard_schedules
from .auth import HTTP_WHITESPACE, api_scope, count_failure
from .dashboard_actions import count_text, failed_count
from .dashboard_auth import (
    COOKIE,
    COOKIE_PATH,
    SESSION_TTL_S,
    CsrfRefused,
    SessionDep,
    base_path,
    is_https,
    issue_session,
    safe_next,
    same_origin,
    verify_session,
)
from .dashboard_charts import line as line_chart
from .dashboard_charts import stacked_bars
from .dashboard_render import DashboardRoute, asset, fmt_duration, render
from .deps import JQ, MAX_ID, SettingsDep, StorableStr, decode_cursor, encode_cursor

if TYPE_CHECKING:
    from jobqueue.engine import JobQueue

router = APIRouter(prefix=COOKIE_PATH, route_class=DashboardRoute, include_in_schema=False)
router.include_router(dashboard_actions.router)
router.include_router(dashboard_schedules.router)

HOURS = 24
PAGE_SIZE = 50

# StorableStr: a NUL in a filter or the search is a 422 page here, as in the API, not a driver error.
Text = Annotated[StorableStr | None, Query(max_length=200)]
Limit = Annotated[int, Query(ge=1, le=200)]


def blank(value: str | None) -> str | None:
    """An empty filter field (a form submits every input) means "no filter"."""
    value = (value or "").strip()
    return value or None


def page_url(path: str, **params: Any) -> str:
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return f"{path}?{query}" if query else path


def refresh_s(jq: Any) -> int | None:
    """How often a page refreshes itself (dashboard.js), or None (JOBQUEUE_DASHBOARD_REFRESH_S=0)."""
    return jq.settings.dashboard_refresh_s or None


# --- login -------------------------------------------------------------------------------------


@router.get("/static/{name}")
async def static(name: Annotated[str, Path(max_length=40)]) -> Response:
    return asset(name)


@router.get("/login")
async def login_form(request: Request, settings: SettingsDep, next: Text = None) -> Response:
    base = base_path(request)
    if verify_session(request.cookies.get(COOKIE), settings.api_token) is not None:
        return RedirectResponse(safe_next(next, base), status_code=303)
    return render(
        request, "login.html", next=safe_next(next, base), error=None, notice=dashboard_actions.notice(request)
    )


@router.post("/login")
async def login(
    request: Request,
    settings: SettingsDep,
    token: Annotated[str, Form(max_length=1000)] = "",
    next: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    # Refused like every other cross-site POST: no other site has a reason to post a login here.
    if not same_origin(request, settings.public_url):
        raise CsrfRefused("the request came from another site")
    base = base_path(request)
    scope = api_scope(token.strip(HTTP_WHITESPACE), settings)
    if scope is not None and scope != "admin":
        # A valid scoped token: refused (403), but not a failed credential, so not counted.
        error = "That token may not open the dashboard: log in with JOBS_API_TOKEN."
        return render(request, "login.html", status_code=403, next=safe_next(next, base), error=error)
    if scope is None:
        await count_failure(request)  # 429 past the limit (a valid token is never counted)
        error = (
            "That token is not valid." if settings.api_token else "The dashboard is locked: JOBS_API_TOKEN is not set."
        )
        return render(request, "login.html", status_code=401, next=safe_next(next, base), error=error)
    response = RedirectResponse(safe_next(next, base), status_code=303)
    response.set_cookie(
        COOKIE,
        issue_session(settings.api_token or ""),
        max_age=SESSION_TTL_S,
        path=base,
        secure=is_https(request),
        httponly=True,
        samesite="lax",
    )
    return response


# --- overview ----------------------------------------------------------------------------------


async def hourly(jq: JobQueue) -> dict[str, list[dict[str, int]]]:
    """Per queue, 24 hourly {"completed", "failed"} counts, oldest first."""
    now = jq.clock.now()
    rows = await jq.hourly_outcomes(now - timedelta(hours=HOURS), now)
    out: dict[str, list[dict[str, int]]] = {}
    for r in rows:
        hours = out.setdefault(r["queue"], [{"completed": 0, "failed": 0} for _ in range(HOURS)])
        hours[HOURS - 1 - min(max(int(r["h"]), 0), HOURS - 1)][r["status"]] += int(r["n"])
    return out


def hour_titles() -> list[str]:
    return [f"{h} to {h + 1} h ago" if h else "the last hour" for h in range(HOURS - 1, -1, -1)]


def _titled(hours: list[dict[str, int]]) -> list[str]:
    return [f"{t}: {v['completed']} completed, {v['failed']} failed" for t, v in zip(hour_titles(), hours, strict=True)]


def _rate(completed: int, failed: int) -> float | None:
    return completed / (completed + failed) if completed + failed else None


def _rate_text(rate: dict[str, Any] | None) -> str | None:
    if rate is None:
        return None
    burst = f", burst {rate['burst']}" if rate["burst"] != 1 else ""
    return f"{rate['limit']} per {fmt_duration(rate['period_ms'] / 1000)}{burst}"


def flow_context(m: dict[str, Any]) -> dict[str, Any]:
    """What a queue card shows of flow control: its limits as text, running and parked jobs, the
    busiest parked scopes, and the settings form's current values."""
    st = m["settings"]
    group = [
        f"{st['group_concurrency']} at once" if st["group_concurrency"] is not None else None,
        _rate_text(st["group_rate"]),
    ]
    scopes = []
    for sc in m["flow"]["top_parked"][:5]:
        parts = [sc["type"] or ("type " + sc["scope"][2:].split(":")[0] if sc["scope"].startswith("t:") else None)]
        parts.append(f"group {sc['group_hash']}" if sc["group_hash"] else None)
        scopes.append({"label": " · ".join(p for p in parts if p), "scope": sc["scope"], "parked": sc["parked"]})
    return {
        "running": m["flow"]["running"],
        "parked": m["flow"]["parked"],
        "concurrency": st["concurrency"],
        "rate": _rate_text(st["rate"]),
        "group": " · ".join(p for p in group if p) or None,
        "aging": fmt_duration(st["aging_ms"] / 1000) if st["aging_ms"] is not None else None,
        "scopes": scopes,
        "gated_s": m["flow"].get("gated_s", 0.0),
        "gated_now": m["flow"].get("gated_since") is not None,
        "form": flat_values(QueueSettings.model_validate(st)),
    }


def overview_context(metrics: dict[str, Any], by_hour: dict[str, list[dict[str, int]]]) -> dict[str, Any]:
    empty = [{"completed": 0, "failed": 0} for _ in range(HOURS)]
    queues: list[dict[str, Any]] = []
    totals = dict.fromkeys(STATUSES, 0)
    day = [{"completed": 0, "failed": 0} for _ in range(HOURS)]
    per_minute = [0] * 60
    for name, m in metrics["queues"].items():
        hours = by_hour.get(name, empty)
        for i, h in enumerate(hours):
            day[i]["completed"] += h["completed"]
            day[i]["failed"] += h["failed"]
        for i, n in enumerate(m["last_hour"]["throughput_per_minute"]):
            per_minute[i] += n
        for state, n in m["jobs"].items():
            totals[state] += n
        totals["completed"] += m["last_day"]["completed"]
        queues.append(
            {
                "name": name,
                "paused": m["paused"],
                "jobs": m["jobs"],
                "completed_24h": m["last_day"]["completed"],
                "failed_24h": m["last_day"]["failed"],
                "rate_1h": m["last_hour"]["success_rate"],
                "rate_24h": m["last_day"]["success_rate"],
                "throughput_1h": sum(m["last_hour"]["throughput_per_minute"]),
                "oldest_wait_s": m["oldest_pending_age_s"],
                "flow": flow_context(m),
                "chart": stacked_bars(hours, ("completed", "failed"), _titled(hours), height=60),
            }
        )
    failed_24h = sum(h["failed"] for h in day)
    return {
        "queues": queues,
        "totals": totals,
        "failed_24h": failed_24h,
        "rate_24h": _rate(totals["completed"], failed_24h),
        "day_chart": stacked_bars(day, ("completed", "failed"), _titled(day)),
        "minute_chart": line_chart(per_minute),
        "throughput_1h": sum(per_minute),
        "generated_at": metrics["generated_at"],
    }


@router.get("")
async def overview(request: Request, session: SessionDep, jq: JQ) -> Response:
    from jobqueue.metrics import collect  # imports prometheus_client: only when the page is asked for

    metrics, by_hour = await asyncio.gather(collect(jq), hourly(jq))
    context = overview_context(metrics, by_hour)
    notice = dashboard_actions.notice(request)
    return render(
        request, "overview.html", session=session, nav="overview", notice=notice, refresh_s=refresh_s(jq), **context
    )


# --- jobs --------------------------------------------------------------------------------------


@router.get("/jobs")
async def jobs(
    request: Request,
    session: SessionDep,
    jq: JQ,
    status: Text = None,
    queue: Text = None,
    type: Text = None,
    search: Text = None,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    limit: Limit = PAGE_SIZE,
) -> Response:
    status, queue, type, search = blank(status), blank(queue), blank(type), blank(search)
    if status is not None and status not in STATUSES:
        raise InvalidJob(f"unknown status {status!r}; one of {', '.join(STATUSES)}", field="status")
    after = decode_cursor(blank(cursor))
    # The search matches an id only for 1-18 ASCII digits, and payload text literally (`%` and `_`
    # are not wildcards): see JobQueue.list_jobs.
    rows, last = await jq.list_jobs(status=status, queue=queue, type=type, search=search, limit=limit, cursor=after)
    rows = await jq.live(rows)  # running jobs' progress, as reported so far
    filters = {"status": status, "queue": queue, "type": type, "search": search}
    size = limit if limit != PAGE_SIZE else None
    return render(
        request,
        "jobs.html",
        session=session,
        nav="jobs",
        refresh_s=refresh_s(jq),
        jobs=[JobView.from_row(r) for r in rows],
        filters=filters,
        statuses=STATUSES,
        queue_names=sorted(jq.queues),
        type_names=jq.registry.names,
        first_url=page_url(f"{base_path(request)}/jobs", **filters, limit=size) if cursor else None,
        next_url=page_url(f"{base_path(request)}/jobs", **filters, limit=size, cursor=encode_cursor(last))
        if last
        else None,
    )


def attempts_of(view: JobView) -> list[dict[str, Any]]:
    """The history for display: attempts with their duration, and the replays between them."""
    out = []
    for entry in view.history:
        item = entry.model_dump()  # only the entry's own fields (HistoryEntry)
        if "requeued_at" not in item:
            seconds = item.get("duration_ms")
            if seconds is not None:
                seconds = float(seconds) / 1000
            elif item.get("started_at") and item.get("ended_at"):
                started = datetime.fromisoformat(str(item["started_at"]))
                seconds = (datetime.fromisoformat(str(item["ended_at"])) - started).total_seconds()
            item["seconds"] = seconds
        out.append(item)
    return out


@router.get("/jobs/{job_id}")
async def job_detail(
    request: Request, session: SessionDep, jq: JQ, job_id: Annotated[int, Path(ge=1, le=MAX_ID)]
) -> Response:
    view = JobView.from_row(await jq.view(job_id))
    return render(
        request,
        "job.html",
        session=session,
        nav="jobs",
        refresh_s=refresh_s(jq),
        job=view,
        history=attempts_of(view),
        can_cancel=view.status in ("waiting", "pending", "scheduled"),
        can_retry=view.status in ("failed", "cancelled"),
        notice=dashboard_actions.notice(request),
    )


# --- dead-letter queue -------------------------------------------------------------------------


@router.get("/dlq")
async def dlq(
    request: Request,
    session: SessionDep,
    jq: JQ,
    queue: Text = None,
    type: Text = None,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    limit: Limit = PAGE_SIZE,
) -> Response:
    queue, type = blank(queue), blank(type)
    (rows, last), total = await asyncio.gather(
        jq.list_jobs(status="failed", queue=queue, type=type, limit=limit, cursor=decode_cursor(blank(cursor))),
        failed_count(jq, queue, type),
    )
    filters = {"queue": queue, "type": type}
    size = limit if limit != PAGE_SIZE else None
    return render(
        request,
        "dlq.html",
        session=session,
        nav="dlq",
        jobs=[JobView.from_row(r) for r in rows],
        filters=filters,
        total=total,
        total_text=count_text(total),
        queue_names=sorted(jq.queues),
        type_names=jq.registry.names,
        first_url=page_url(f"{base_path(request)}/dlq", **filters, limit=size) if cursor else None,
        next_url=page_url(f"{base_path(request)}/dlq", **filters, limit=size, cursor=encode_cursor(last))
        if last
        else None,
        notice=dashboard_actions.notice(request),
    )
