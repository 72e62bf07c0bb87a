"""The dashboard's state-changing forms: log out, pause/resume a queue and change its settings,
cancel or retry a job, and the dead-letter queue's replay (selected jobs, or everything matching a
filter) and purge. (The schedules' forms are in dashboard_schedules.py.)

Every one is a POST that needs the session's CSRF token and a same-site origin (`CsrfDep`).
The destructive ones (cancel, retry, replay, purge) take two steps: the first POST answers a
confirmation page that says what will happen (how many jobs), and only its own POST, carrying
`confirm=yes`, acts. A page rather than `onsubmit="return confirm(...)"`: it works without
JavaScript, under a CSP that forbids inline script, and on a phone. After acting, each answers a
303 to a page that shows a fixed notice chosen by `msg` (never text taken from the URL).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Path, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import Field

from .dashboard_auth import COOKIE, CsrfDep, base_path
from .dashboard_render import DashboardRoute, render
from .deps import JQ, MAX_ID, StorableStr

if TYPE_CHECKING:
    from jobqueue.engine import JobQueue

router = APIRouter(route_class=DashboardRoute)

COUNT_CAP = 10_000  # counts shown on pages stop here ("10,000+"): a huge DLQ must not slow them
SHOWN_IDS = 20  # a confirmation lists this many of the selected ids

# Failed jobs matching an optional queue and type ($1, $2), and finished before $3 when given,
# counted up to a cap ($4).
NOTICES = {
    "paused": "Queue {q} is paused: its jobs are kept and nothing is drained until you resume it.",
    "resumed": "Queue {q} is draining again.",
    "settings": "Queue {q}'s settings are saved; the next claims apply them.",
    "schedule_paused": "Schedule {s} is paused: it fires nothing until you resume it.",
    "schedule_resumed": "Schedule {s} fires again from its next tick (its misfire policy decides about missed ones).",
    "triggered": "Schedule {s} enqueued this job now; its next tick is unchanged.",
    "cancelled": "The job was cancelled.",
    "retried": "The job is queued again with a fresh set of attempts.",
    "replayed": "{n} job(s) queued again with a fresh set of attempts.",
    "purged": "{n} dead-lettered job(s) deleted.",
    "nothing": "Select at least one job first.",
    "loggedout": "You are logged out.",
}
QUEUE_NAME = r"^[A-Za-z0-9_.-]{1,100}$"
SCHEDULE_ID = r"^[A-Za-z0-9_.:-]{1,200}$"
QueueName = Annotated[str, Path(min_length=1, max_length=100, pattern=QUEUE_NAME)]
JobId = Annotated[int, Path(ge=1, le=MAX_ID)]
Confirm = Annotated[str, Form(max_length=10)]
FilterField = Annotated[StorableStr, Form(max_length=200)]  # a NUL is a 422 page, not a driver error


def notice(request: Request) -> str | None:
    """The message for `?msg=`; only its own parameters, validated, go into the fixed text."""
    template = NOTICES.get(request.query_params.get("msg", ""))
    if template is None:
        return None
    q = request.query_params.get("q", "")
    n = request.query_params.get("n", "")
    s = request.query_params.get("s", "")
    return template.format(
        q=q if re.fullmatch(QUEUE_NAME, q) else "?",
        n=n if n.isdigit() else "?",
        s=s if re.fullmatch(SCHEDULE_ID, s) else "?",
    )


def done(request: Request, path: str, msg: str, **params: Any) -> RedirectResponse:
    """A 303 to `path` below the dashboard's base ("" is the overview) with the notice `msg`."""
    return RedirectResponse(f"{base_path(request)}{path}?{urlencode({'msg': msg, **params})}", status_code=303)


def confirm_page(request: Request, session: Any, *, title: str, body: str, button: str, **extra: Any) -> Response:
    """The first step of a destructive action: the same form again, with confirm=yes."""
    extra.setdefault("fields", [])
    extra.setdefault("ids", [])
    extra.setdefault("back", f"{base_path(request)}/dlq")
    extra.setdefault("danger", False)
    return render(
        request,
        "confirm.html",
        session=session,
        title=title,
        body=body,
        button=button,
        action=request.url.path,
        **extra,
    )


async def failed_count(jq: JobQueue, queue: str | None, type: str | None, before_days: float | None = None) -> int:
    before = None if before_days is None else jq.clock.now() - timedelta(days=before_days)
    return await jq.failed_count(queue, type, before, COUNT_CAP + 1)


def count_text(n: int) -> str:
    return f"{COUNT_CAP:,}+" if n > COUNT_CAP else f"{n:,}"


# --- session and queues --------------------------------------------------------------------------


@router.post("/logout")
async def logout(request: Request, session: CsrfDep) -> Response:
    response = done(request, "/login", "loggedout")
    response.delete_cookie(COOKIE, path=base_path(request), httponly=True, samesite="lax")
    return response


@router.post("/queues/{name}/pause")
async def pause(request: Request, name: QueueName, session: CsrfDep, jq: JQ) -> Response:
    await jq.set_paused(name, True)  # reversible and loses nothing, so no confirmation step
    return done(request, "", "paused", q=name)


@router.post("/queues/{name}/resume")
async def resume(request: Request, name: QueueName, session: CsrfDep, jq: JQ) -> Response:
    await jq.set_paused(name, False)
    return done(request, "", "resumed", q=name)


@router.post("/queues/{name}/settings")
async def queue_settings(request: Request, name: QueueName, session: CsrfDep, jq: JQ) -> Response:
    """The overview's settings form: each field sent sets its option (an empty one clears it), a
    field left out of the post keeps it; reversible, so no confirmation step. A bad value is a
    422 page naming the field, and nothing changes."""
    from jobqueue.errors import InvalidJob
    from jobqueue.queue_admin import OPTIONS, parse_option, settings_patch

    # Read from the parsed form itself (cached by Starlette, bounded by BodyLimit): a declared
    # `Form()` parameter would turn an empty field into "not sent", and empty means "clear" here.
    form = await request.form()
    changes: dict[str, Any] = {}
    for option in OPTIONS:
        value = form.get(option)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > 100:
            raise InvalidJob(f"{option}: at most 100 characters of text", field=option)
        changes[option] = parse_option(option, value)
    await jq.set_queue_settings(name, settings_patch(await jq.queue_settings(name), changes))
    return done(request, "", "settings", q=name)


# --- one job -------------------------------------------------------------------------------------


@router.post("/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: JobId, session: CsrfDep, jq: JQ, confirm: Confirm = "") -> Response:
    if confirm != "yes":
        row = await jq.get(job_id)  # a 404 page for a job that is not there, before asking
        return confirm_page(
            request,
            session,
            title=f"Cancel job #{job_id}?",
            body=f"The {row['type']} job will not run. You can retry it later from its page.",
            button="Cancel job",
            back=f"{base_path(request)}/jobs/{job_id}",
        )
    await jq.cancel(job_id)  # a 409 page when it already started or finished
    return done(request, f"/jobs/{job_id}", "cancelled")


@router.post("/jobs/{job_id}/retry")
async def retry(request: Request, job_id: JobId, session: CsrfDep, jq: JQ, confirm: Confirm = "") -> Response:
    if confirm != "yes":
        row = await jq.get(job_id)
        return confirm_page(
            request,
            session,
            title=f"Retry job #{job_id}?",
            body=f"The {row['type']} job runs again with a fresh set of {row['max_attempts']} attempt(s); "
            "its history keeps the earlier ones.",
            button="Retry job",
            back=f"{base_path(request)}/jobs/{job_id}",
        )
    await jq.retry(job_id)
    return done(request, f"/jobs/{job_id}", "retried")


# --- dead-letter queue ---------------------------------------------------------------------------


@router.post("/dlq/replay")
async def replay_selected(
    request: Request,
    session: CsrfDep,
    jq: JQ,
    ids: Annotated[list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None, Form(max_length=500)] = None,
    confirm: Confirm = "",
) -> Response:
    ids = sorted(set(ids or []))
    if not ids:
        return done(request, "/dlq", "nothing")
    if confirm != "yes":
        shown = ", ".join(f"#{i}" for i in ids[:SHOWN_IDS]) + (" …" if len(ids) > SHOWN_IDS else "")
        return confirm_page(
            request,
            session,
            title=f"Replay {len(ids)} job(s)?",
            body=f"They run again with a fresh set of attempts: {shown}.",
            button=f"Replay {len(ids)} job(s)",
            ids=ids,
        )
    n = await jq.replay(ids)
    return done(request, "/dlq", "replayed", n=n)


@router.post("/dlq/replay-matching")
async def replay_matching(
    request: Request, session: CsrfDep, jq: JQ, queue: FilterField = "", type: FilterField = "", confirm: Confirm = ""
) -> Response:
    q, t = queue.strip() or None, type.strip() or None
    if confirm != "yes":
        scope = " and ".join(p for p in (q and f"queue {q}", t and f"type {t}") if p) or "every queue and type"
        n = await failed_count(jq, q, t)
        return confirm_page(
            request,
            session,
            title=f"Replay {count_text(n)} dead-lettered job(s)?",
            body=f"Every failed job in {scope} runs again with a fresh set of attempts.",
            button=f"Replay {count_text(n)} job(s)",
            fields=[("queue", queue), ("type", type)],
        )
    n = await jq.replay(None, queue=q, type=t)
    return done(request, "/dlq", "replayed", n=n)


@router.post("/dlq/purge")
async def purge(
    request: Request,
    session: CsrfDep,
    jq: JQ,
    older_than_days: Annotated[float, Form(ge=0, le=36_500)],
    confirm: Confirm = "",
) -> Response:
    if confirm != "yes":
        n = await failed_count(jq, None, None, older_than_days)
        return confirm_page(
            request,
            session,
            title=f"Delete {count_text(n)} dead-lettered job(s)?",
            body=f"Failed jobs that finished more than {older_than_days:g} day(s) ago are deleted for good, "
            "in every queue. This cannot be undone.",
            button=f"Delete {count_text(n)} job(s)",
            fields=[("older_than_days", f"{older_than_days:g}")],
            danger=True,
        )
    n = await jq.purge(older_than_days)
    return done(request, "/dlq", "purged", n=n)
