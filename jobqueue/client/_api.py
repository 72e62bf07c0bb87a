"""The HTTP API described once, without I/O: each endpoint is a function answering a `Call` (the
request to send and how to read its answer), and `wait()` is a generator of `Call`s and `Sleep`s.
`Client` and `AsyncClient` (_http.py) only execute them, so the twins cannot drift apart.

Nothing here imports httpx or pydantic at import time: the parsers load the models (models.py)
on the first answer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, Required, TypeAlias, TypedDict, TypeVar
from urllib.parse import quote

from . import _time

if TYPE_CHECKING:
    import httpx

    from .models import Health, Job, JobPage, Metrics, QueueInfo, QueueState, Schedule

T = TypeVar("T")

FIRST_POLL_S = 0.2
MAX_POLL_S = 2.0
POLL_GROWTH = 1.5
MAX_WAIT_S = 25  # DESIGN.md section 8: the longest GET /api/jobs/{id}?wait_s=N the server holds

Priority: TypeAlias = "int | Literal['low', 'normal', 'high', 'urgent']"


class JobSpec(TypedDict, total=False):
    """One job of `enqueue_many()`; the same fields as `enqueue()`'s arguments."""

    type: Required[str]
    payload: Mapping[str, Any]
    queue: str
    priority: Priority
    delay_ms: int
    run_at: datetime | str
    max_attempts: int
    backoff: Mapping[str, Any]
    timeout_ms: int
    idempotency_key: str
    group: str
    depends_on: Sequence[int | Mapping[str, int]]  # in a batch, {"index": N} is the batch's N-th job
    on_dependency_failure: Literal["fail", "ignore", "continue"]
    callback_url: str


# --- errors ------------------------------------------------------------------------------------


class APIError(Exception):
    """The API answered an error (or could not be reached: `status_code` is None then).

    `retry_after_s` is the `Retry-After` of a 429 or 503, when the server sent one."""

    def __init__(
        self,
        status_code: int | None,
        code: str,
        message: str,
        field: str | None = None,
        dependency: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field
        self.dependency = dependency
        self.retry_after_s = retry_after_s
        where = f" (field {field})" if field else f" ({dependency})" if dependency else ""
        super().__init__(f"{status_code or 'no response'} {code}: {message}{where}")


class WaitTimeout(TimeoutError):
    """The job did not reach a terminal state in time; `job` is the last state seen."""

    def __init__(self, job: Job, timeout: float) -> None:
        self.job = job
        super().__init__(f"job {job.id} is still {job.status} after {timeout:g} s")


def error_from(resp: httpx.Response) -> APIError:
    """An error answer as an APIError: our `{"error": {...}}` body, or whatever a proxy or the
    platform sent instead (an HTML 502, a gateway's timeout)."""
    try:
        err = resp.json()["error"]
        code, message = str(err["code"]), str(err["message"])
        field, dependency = err.get("field"), err.get("dependency")
    except (ValueError, KeyError, TypeError):
        code, message, field, dependency = "http_error", resp.text[:200] or resp.reason_phrase, None, None
    retry_after: float | None = None
    with contextlib.suppress(KeyError, ValueError):  # absent, or an HTTP date: the caller paces itself
        retry_after = float(resp.headers["retry-after"])
    return APIError(resp.status_code, code, message, field, dependency, retry_after)


def connection_error(e: Exception) -> APIError:
    return APIError(None, "connection_error", f"{type(e).__name__}: {e}")


def settings(base_url: str | None, token: str | None) -> tuple[str, dict[str, str]]:
    """The base URL and headers, from the arguments or JOBQUEUE_URL / JOBS_API_TOKEN."""
    base_url = base_url or os.environ.get("JOBQUEUE_URL")
    if not base_url:
        raise ValueError("pass base_url or set JOBQUEUE_URL (e.g. https://myapp.vercel.app)")
    token = token if token is not None else os.environ.get("JOBS_API_TOKEN")
    if not token:
        raise ValueError("pass token or set JOBS_API_TOKEN")
    return base_url.rstrip("/"), {"Authorization": f"Bearer {token}", "User-Agent": "jobqueue-client"}


# --- calls -------------------------------------------------------------------------------------


class Call(Generic[T]):
    """One request and how to read its answer. `hold_s` is how long the server may hold the answer
    on purpose (a long poll), added to the client's read timeout; `accept` lists error statuses
    whose body is still an answer (a 503 from /api/health says what is down)."""

    __slots__ = ("accept", "body", "hold_s", "method", "params", "parse", "path")

    def __init__(
        self,
        method: str,
        path: str,
        parse: Callable[[httpx.Response], T],
        *,
        params: Mapping[str, str | int | float | None] | None = None,
        body: Any = None,
        hold_s: float = 0.0,
        accept: frozenset[int] = frozenset(),
    ) -> None:
        self.method = method
        self.path = path
        self.parse = parse
        # None means "not given": the server applies its default.
        self.params: dict[str, str | int | float] = {k: v for k, v in (params or {}).items() if v is not None}
        self.body = body
        self.hold_s = hold_s
        self.accept = accept

    def read(self, resp: httpx.Response) -> T:
        """The answer, or APIError: for an error status, and for a body this client cannot read."""
        if resp.status_code >= 400 and resp.status_code not in self.accept:
            raise error_from(resp)
        try:
            return self.parse(resp)
        except (ValueError, KeyError, TypeError) as e:  # pydantic's ValidationError is a ValueError
            if resp.status_code >= 400:
                raise error_from(resp) from e
            raise APIError(
                resp.status_code, "invalid_response", f"{self.method} {self.path}: unexpected answer: {e}"
            ) from e

    def __repr__(self) -> str:
        return f"Call({self.method} {self.path} params={self.params} body={self.body!r})"


class Sleep:
    """A step of a flow: pause this long before the next call."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __repr__(self) -> str:
        return f"Sleep({self.seconds:g})"


if TYPE_CHECKING:
    # A flow yields calls (and receives their answers) and sleeps; its return value is the result.
    Flow: TypeAlias = Generator[Call[Any] | Sleep, Any, T]


# --- answers -----------------------------------------------------------------------------------
# The models load here, on the first answer, not when the client is imported.


def _job(resp: httpx.Response) -> Job:
    from .models import Job

    return Job.model_validate_json(resp.content)


def _page(resp: httpx.Response) -> JobPage:
    from .models import JobPage

    return JobPage.model_validate_json(resp.content)


def _jobs(resp: httpx.Response) -> list[Job]:
    return _page(resp).jobs  # a batch answers {"jobs": [...]}, a page without its cursor


def _queues(resp: httpx.Response) -> list[QueueInfo]:
    from .models import QueueList

    return QueueList.model_validate_json(resp.content).queues


def _queue(resp: httpx.Response) -> QueueInfo:
    from .models import QueueInfo

    return QueueInfo.model_validate_json(resp.content)


def _queue_state(resp: httpx.Response) -> QueueState:
    from .models import QueueState

    return QueueState.model_validate_json(resp.content)


def _metrics(resp: httpx.Response) -> Metrics:
    from .models import Metrics

    return Metrics.model_validate_json(resp.content)


def _health(resp: httpx.Response) -> Health:
    from .models import Health

    return Health.model_validate_json(resp.content)


def _schedule(resp: httpx.Response) -> Schedule:
    from .models import Schedule

    return Schedule.model_validate_json(resp.content)


def _schedules(resp: httpx.Response) -> list[Schedule]:
    from .models import ScheduleList

    return ScheduleList.model_validate_json(resp.content).schedules


def _nothing(resp: httpx.Response) -> None:
    return None


def _text(resp: httpx.Response) -> str:
    return resp.text


def _count(key: str) -> Callable[[httpx.Response], int]:
    def parse(resp: httpx.Response) -> int:
        n = resp.json()[key]
        if type(n) is not int:
            raise TypeError(f"{key} is {n!r}, not an integer")
        return n

    return parse


# --- request bodies ----------------------------------------------------------------------------


def job_request(type: str, payload: Mapping[str, Any] | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """The body of POST /api/jobs. Options left as None are left out, so the server applies its
    defaults; datetimes travel as ISO-8601."""
    body: dict[str, Any] = {"type": type, "payload": dict(payload or {})}
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Mapping):
            value = dict(value)
        elif isinstance(value, Sequence) and not isinstance(value, str):
            value = [dict(v) if isinstance(v, Mapping) else v for v in value]
        body[key] = value
    return body


def _batch_item(i: int, job: Mapping[str, Any]) -> dict[str, Any]:
    item = dict(job)
    if "type" not in item:
        raise ValueError(f"jobs[{i}] has no type")
    return job_request(item.pop("type"), item.pop("payload", None), item)


def _id(job_id: int) -> int:
    return int(job_id)  # a str or a numpy integer from the caller's code still makes a clean path


# --- endpoints: one function per route, named as the client's method -------------------------


def enqueue(
    type: str,
    payload: Mapping[str, Any] | None = None,
    *,
    queue: str | None = None,
    priority: Priority | None = None,
    delay_ms: int | None = None,
    run_at: datetime | str | None = None,
    max_attempts: int | None = None,
    backoff: Mapping[str, Any] | None = None,
    timeout_ms: int | None = None,
    idempotency_key: str | None = None,
    group: str | None = None,
    depends_on: Sequence[int | Mapping[str, int]] | None = None,
    on_dependency_failure: Literal["fail", "ignore", "continue"] | None = None,
    callback_url: str | None = None,
) -> Call[Job]:
    """Enqueue one job (`POST /api/jobs`). Options left as None take the server's (or the job
    type's) defaults; `run_at` is a timezone-aware datetime or an ISO-8601 string. A repeated
    `idempotency_key` in the same queue answers the job that already holds it."""
    options = {
        "queue": queue,
        "priority": priority,
        "delay_ms": delay_ms,
        "run_at": run_at,
        "max_attempts": max_attempts,
        "backoff": backoff,
        "timeout_ms": timeout_ms,
        "idempotency_key": idempotency_key,
        "group": group,
        "depends_on": depends_on,
        "on_dependency_failure": on_dependency_failure,
        "callback_url": callback_url,
    }
    return Call("POST", "/api/jobs", _job, body=job_request(type, payload, options))


def enqueue_many(jobs: Sequence[JobSpec | Mapping[str, Any]]) -> Call[list[Job]]:
    """Enqueue up to 1000 jobs at once (`POST /api/jobs/batch`), all or nothing: a 422 names the
    first bad one (`jobs.N`). Each job is a mapping with `type`, `payload` and `enqueue()`'s options."""
    return Call("POST", "/api/jobs/batch", _jobs, body={"jobs": [_batch_item(i, j) for i, j in enumerate(jobs)]})


def flow(parent: JobSpec | Mapping[str, Any], children: Sequence[JobSpec | Mapping[str, Any]]) -> Call[list[Job]]:
    """A parent that runs when all its children are done (BullMQ's flow, as dependencies): one
    all-or-nothing batch, children first, the parent last with `depends_on` on each of them (and
    on whatever its own `depends_on` names). The parent reads their results with
    `ctx.dependencies()`. Answers the children, then the parent."""
    if not 1 <= len(children) < 1000:
        raise ValueError("a flow has 1 to 999 children (one batch)")
    top = dict(parent)
    top["depends_on"] = [*top.get("depends_on", ()), *({"index": i} for i in range(len(children)))]
    return enqueue_many([*children, top])


def get(job_id: int, *, wait_s: int | None = None) -> Call[Job]:
    """One job (`GET /api/jobs/{id}`). With `wait_s` (1-25) a server that long-polls answers as
    soon as the job is terminal or after that many seconds; an older one answers at once."""
    if wait_s is not None:
        wait_s = min(int(wait_s), MAX_WAIT_S) or None
        if wait_s is not None and wait_s < 0:
            raise ValueError("wait_s must be >= 0")
    return Call("GET", f"/api/jobs/{_id(job_id)}", _job, params={"wait_s": wait_s}, hold_s=wait_s or 0)


def list_jobs(
    *,
    status: str | None = None,
    queue: str | None = None,
    type: str | None = None,
    schedule_id: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[JobPage]:
    """One page of jobs, newest first (`GET /api/jobs`): `limit` up to 200 (the server's default is
    50); pass the page's `next_cursor` as `cursor` for the next, older page."""
    params = {"status": status, "queue": queue, "type": type, "schedule_id": schedule_id, "limit": limit}
    return Call("GET", "/api/jobs", _page, params={**params, "cursor": cursor})


def cancel(job_id: int) -> Call[Job]:
    """Cancel a pending or scheduled job; a 409 `APIError` when its state does not allow it."""
    return Call("POST", f"/api/jobs/{_id(job_id)}/cancel", _job)


def retry(job_id: int) -> Call[Job]:
    """Re-run a failed or cancelled job with fresh attempts (its history is kept); 409 otherwise."""
    return Call("POST", f"/api/jobs/{_id(job_id)}/retry", _job)


def list_dlq(
    *, queue: str | None = None, type: str | None = None, limit: int | None = None, cursor: str | None = None
) -> Call[JobPage]:
    """One page of the dead-letter queue (failed jobs), newest first (`GET /api/dlq`)."""
    return Call("GET", "/api/dlq", _page, params={"queue": queue, "type": type, "limit": limit, "cursor": cursor})


def replay_dlq(ids: Sequence[int] | None = None, *, queue: str | None = None, type: str | None = None) -> Call[int]:
    """Re-run dead-lettered jobs with fresh attempts, by `ids` or by a `queue` and/or `type`
    filter (`POST /api/dlq/replay`); answers how many were replayed. Giving nothing is an error,
    as it is for the server: nothing must not mean everything."""
    if ids is not None and (queue is not None or type is not None):
        raise ValueError("give ids or a queue/type filter, not both")
    if ids is None:
        if queue is None and type is None:
            raise ValueError("give ids, or a queue and/or a type, to replay")
        body: dict[str, Any] = {k: v for k, v in (("queue", queue), ("type", type)) if v is not None}
    else:
        body = {"ids": [_id(i) for i in ids]}
    return Call("POST", "/api/dlq/replay", _count("replayed"), body=body)


def purge_dlq(older_than_days: float) -> Call[int]:
    """Delete dead-lettered jobs that failed more than `older_than_days` ago; answers how many."""
    return Call("DELETE", "/api/dlq", _count("purged"), params={"older_than_days": older_than_days})


def list_queues() -> Call[list[QueueInfo]]:
    """Every queue with its counts per status, its paused flag and its settings (`GET /api/queues`)."""
    return Call("GET", "/api/queues", _queues)


QUEUE_SETTINGS = frozenset(
    {"defaults", "concurrency", "rate", "group_concurrency", "group_rate", "retention", "aging_ms"}
)


def set_queue(name: str, **settings: Any) -> Call[QueueInfo]:
    """Change a queue's settings (`PUT /api/queues/{name}`) and answer the queue: `concurrency`,
    `rate` (`{"limit", "period_ms", "burst"}`), `group_concurrency`, `group_rate`, `aging_ms`,
    `defaults` (`{"max_attempts", "backoff", "timeout_ms"}`) and `retention`
    (`{"completed": {"age_days", "count"}, "failed": {...}}`). Only the settings given change;
    `None` clears one. An object replaces the whole field (give all of `defaults` you want kept).
    A bad value is a 422 `APIError` naming the field, and nothing changes."""
    unknown = sorted(set(settings) - QUEUE_SETTINGS)
    if unknown:
        raise TypeError(
            f"set_queue() got an unknown setting {unknown[0]!r}; one of {', '.join(sorted(QUEUE_SETTINGS))}"
        )
    body = {k: dict(v) if isinstance(v, Mapping) else v for k, v in settings.items()}
    return Call("PUT", f"/api/queues/{quote(name, safe='')}", _queue, body=body)


def pause_queue(name: str) -> Call[QueueState]:
    """Stop draining a queue; its jobs stay safe and run once it is resumed."""
    return Call("POST", f"/api/queues/{quote(name, safe='')}/pause", _queue_state)


def resume_queue(name: str) -> Call[QueueState]:
    """Drain a paused queue again."""
    return Call("POST", f"/api/queues/{quote(name, safe='')}/resume", _queue_state)


def list_schedules() -> Call[list[Schedule]]:
    """Every schedule, by id, with its next and last run and its last job."""
    return Call("GET", "/api/schedules", _schedules)


def get_schedule(schedule_id: str) -> Call[Schedule]:
    """One schedule with its next and last run and its last job."""
    return Call("GET", f"/api/schedules/{quote(schedule_id, safe='')}", _schedule)


def put_schedule(
    schedule_id: str, type: str, payload: Mapping[str, Any] | None = None, **options: Any
) -> Call[Schedule]:
    """Create or replace a schedule: `cron` (+ `tz`) or `every_ms`, and optionally `queue`,
    `priority`, `max_attempts`, `backoff`, `timeout_ms`, `misfire`, `misfire_grace_ms`,
    `catch_up_limit`, `overlap`, `paused` (the fields of PUT /api/schedules/{id})."""
    body = {"type": type, "payload": dict(payload or {}), **{k: v for k, v in options.items() if v is not None}}
    return Call("PUT", f"/api/schedules/{quote(schedule_id, safe='')}", _schedule, body=body)


def delete_schedule(schedule_id: str) -> Call[None]:
    """Delete a schedule; the jobs it made stay."""
    return Call("DELETE", f"/api/schedules/{quote(schedule_id, safe='')}", _nothing)


def pause_schedule(schedule_id: str) -> Call[Schedule]:
    """Stop firing a schedule (its ticks pass; the misfire policy decides on resume)."""
    return Call("POST", f"/api/schedules/{quote(schedule_id, safe='')}/pause", _schedule)


def resume_schedule(schedule_id: str) -> Call[Schedule]:
    """Fire a paused schedule again."""
    return Call("POST", f"/api/schedules/{quote(schedule_id, safe='')}/resume", _schedule)


def trigger_schedule(schedule_id: str) -> Call[Job]:
    """Enqueue one job of the schedule now; its next tick is unchanged."""
    return Call("POST", f"/api/schedules/{quote(schedule_id, safe='')}/trigger", _job)


def metrics() -> Call[Metrics]:
    """Per-queue metrics (`GET /api/metrics`; their definitions are in jobqueue/metrics.py)."""
    return Call("GET", "/api/metrics", _metrics)


def metrics_text() -> Call[str]:
    """The same metrics in the Prometheus text format (`GET /api/metrics/prometheus`)."""
    return Call("GET", "/api/metrics/prometheus", _text)


def health() -> Call[Health]:
    """Liveness of Postgres and Redis (`GET /api/health`). A 503 that says what is down is an
    answer, not an error: check `.ok`."""
    return Call("GET", "/api/health", _health, accept=frozenset({503}))


# --- paging and waiting ------------------------------------------------------------------------


def following(call: Call[JobPage], page: JobPage) -> Call[JobPage] | None:
    """The call for the page after `page`, or None at the end."""
    if page.next_cursor is None:
        return None
    if page.next_cursor == call.params.get("cursor"):  # a server bug must not page forever
        raise APIError(200, "invalid_response", f"{call.path} answered the cursor it was given")
    return Call(call.method, call.path, call.parse, params={**call.params, "cursor": page.next_cursor})


def poll_delays() -> Iterator[float]:
    """0.2 s, growing by half each time, to 2 s apart."""
    delay = FIRST_POLL_S
    while True:
        yield delay
        delay = min(delay * POLL_GROWTH, MAX_POLL_S)


def wait(job_id: int, timeout: float = 60.0, *, long_poll_s: int = MAX_WAIT_S) -> Flow[Job]:
    """Wait until the job is completed, failed or cancelled and answer it; `WaitTimeout` (a
    `TimeoutError`, carrying the last state seen) after `timeout` seconds.

    Each look asks the server to hold the answer (`?wait_s=`, up to `long_poll_s` and the time
    left, in whole seconds; 0 turns it off). The next look comes no sooner than the polling delay
    (0.2 s growing to 2 s) after the previous one started: a server that held the request is asked
    again at once, one that ignores `wait_s` and answers at once is polled with that backoff."""
    hold_cap = max(0, min(int(long_poll_s), MAX_WAIT_S))
    deadline = _time.monotonic() + timeout
    for delay in poll_delays():
        asked = _time.monotonic()
        hold = min(hold_cap, int(deadline - asked))
        job: Job = yield get(job_id, wait_s=hold if hold >= 1 else None)
        if job.terminal:
            return job
        now = _time.monotonic()
        left = deadline - now
        if left <= 0:
            raise WaitTimeout(job, timeout)
        pause = min(delay - (now - asked), left)
        if pause > 0:
            yield Sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover
