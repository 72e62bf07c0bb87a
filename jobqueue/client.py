"""Clients for application code: `Client` (sync) and `AsyncClient` over HTTP, and `enqueue()` for
code deployed in the same app as the queue.

    from jobqueue.client import Client

    with Client() as jobs:  # JOBQUEUE_URL and JOBS_API_TOKEN from the environment
        job = jobs.enqueue("echo", {"hello": "world"}, idempotency_key="order-42")
        done = jobs.wait(job["id"], timeout=30)  # completed, failed or cancelled

Every method answers the API's JSON (a job is a dict, as `GET /api/jobs/{id}` renders it). Any
error answer raises `APIError` with the status code and the body's `code`, `message`, `field` and
`dependency`; a transport failure raises it too, with `status_code=None` and code
`connection_error`. `wait()` raises `WaitTimeout` (a `TimeoutError`) with the last state seen.

Light to import: httpx loads when a client is made, the engine only when `enqueue()` runs.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

TERMINAL = frozenset({"completed", "failed", "cancelled"})
FIRST_POLL_S = 0.2
MAX_POLL_S = 2.0
POLL_GROWTH = 1.5

# Looked up at call time, so tests can run wait() on a fake clock.
_monotonic = time.monotonic
_sleep = time.sleep
_async_sleep = asyncio.sleep


class APIError(Exception):
    """The API answered an error (or could not be reached: `status_code` is None then)."""

    def __init__(
        self,
        status_code: int | None,
        code: str,
        message: str,
        field: str | None = None,
        dependency: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field
        self.dependency = dependency
        where = f" (field {field})" if field else f" ({dependency})" if dependency else ""
        super().__init__(f"{status_code or 'no response'} {code}: {message}{where}")


class WaitTimeout(TimeoutError):
    """The job did not reach a terminal state in time; `job` is the last state seen."""

    def __init__(self, job: Mapping[str, Any], timeout: float) -> None:
        self.job = dict(job)
        super().__init__(f"job {job.get('id')} is still {job.get('status')} after {timeout:g} s")


def _poll_delays() -> Iterator[float]:
    delay = FIRST_POLL_S
    while True:
        yield delay
        delay = min(delay * POLL_GROWTH, MAX_POLL_S)


def _job_request(type: str, payload: Mapping[str, Any] | None, options: Mapping[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type, "payload": dict(payload or {})}
    for key, value in options.items():
        if value is not None:
            body[key] = value.isoformat() if isinstance(value, datetime) else value
    return body


def _batch_item(job: Mapping[str, Any]) -> dict[str, Any]:
    item = dict(job)
    return _job_request(item.pop("type"), item.pop("payload", None), item)


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        err = resp.json()["error"]
        code, message = str(err["code"]), str(err["message"])
        field, dependency = err.get("field"), err.get("dependency")
    except (ValueError, KeyError, TypeError):  # not our error shape: a proxy's page, a platform error
        code, message, field, dependency = "http_error", resp.text[:200] or resp.reason_phrase, None, None
    raise APIError(resp.status_code, code, message, field, dependency)


def _connection_error(e: Exception) -> APIError:
    return APIError(None, "connection_error", f"{type(e).__name__}: {e}")


class _Base:
    def __init__(self, base_url: str | None, token: str | None) -> None:
        base_url = base_url or os.environ.get("JOBQUEUE_URL")
        if not base_url:
            raise ValueError("pass base_url or set JOBQUEUE_URL (e.g. https://myapp.vercel.app)")
        token = token if token is not None else os.environ.get("JOBS_API_TOKEN")
        if not token:
            raise ValueError("pass token or set JOBS_API_TOKEN")
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "User-Agent": "jobqueue-client"}


class Client(_Base):
    """Synchronous client; one connection pool, closed by `close()` or the `with` block."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        import httpx

        super().__init__(base_url, token)
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport)

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        import httpx

        try:
            resp = self._http.request(method, path, json=json)
        except httpx.TransportError as e:
            raise _connection_error(e) from e
        _raise_for(resp)
        return resp.json()

    def enqueue(self, type: str, payload: Mapping[str, Any] | None = None, **options: Any) -> dict[str, Any]:
        """Options as the API takes them: queue, priority, delay_ms, run_at (a datetime or ISO
        string), max_attempts, backoff, timeout_ms, idempotency_key. A repeated idempotency key
        answers the job that already holds it."""
        job: dict[str, Any] = self._call("POST", "/api/jobs", _job_request(type, payload, options))
        return job

    def enqueue_many(self, jobs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Up to 1000 jobs, each a dict with `type`, `payload` and options; all or nothing."""
        made: list[dict[str, Any]] = self._call("POST", "/api/jobs/batch", {"jobs": [_batch_item(j) for j in jobs]})[
            "jobs"
        ]
        return made

    def get(self, job_id: int) -> dict[str, Any]:
        job: dict[str, Any] = self._call("GET", f"/api/jobs/{int(job_id)}")
        return job

    def cancel(self, job_id: int) -> dict[str, Any]:
        job: dict[str, Any] = self._call("POST", f"/api/jobs/{int(job_id)}/cancel")
        return job

    def retry(self, job_id: int) -> dict[str, Any]:
        job: dict[str, Any] = self._call("POST", f"/api/jobs/{int(job_id)}/retry")
        return job

    def wait(self, job_id: int, timeout: float = 60.0) -> dict[str, Any]:
        """Poll until the job is completed, failed or cancelled (0.2 s, growing to 2 s apart)."""
        deadline = _monotonic() + timeout
        for delay in _poll_delays():
            job = self.get(job_id)
            left = deadline - _monotonic()
            if job["status"] in TERMINAL:
                return job
            if left <= 0:
                raise WaitTimeout(job, timeout)
            _sleep(min(delay, left))
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """Asynchronous client; `async with AsyncClient() as jobs: await jobs.enqueue(...)`."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        import httpx

        super().__init__(base_url, token)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    async def _call(self, method: str, path: str, json: Any = None) -> Any:
        import httpx

        try:
            resp = await self._http.request(method, path, json=json)
        except httpx.TransportError as e:
            raise _connection_error(e) from e
        _raise_for(resp)
        return resp.json()

    async def enqueue(self, type: str, payload: Mapping[str, Any] | None = None, **options: Any) -> dict[str, Any]:
        """See `Client.enqueue`."""
        job: dict[str, Any] = await self._call("POST", "/api/jobs", _job_request(type, payload, options))
        return job

    async def enqueue_many(self, jobs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        body = {"jobs": [_batch_item(j) for j in jobs]}
        made: list[dict[str, Any]] = (await self._call("POST", "/api/jobs/batch", body))["jobs"]
        return made

    async def get(self, job_id: int) -> dict[str, Any]:
        job: dict[str, Any] = await self._call("GET", f"/api/jobs/{int(job_id)}")
        return job

    async def cancel(self, job_id: int) -> dict[str, Any]:
        job: dict[str, Any] = await self._call("POST", f"/api/jobs/{int(job_id)}/cancel")
        return job

    async def retry(self, job_id: int) -> dict[str, Any]:
        job: dict[str, Any] = await self._call("POST", f"/api/jobs/{int(job_id)}/retry")
        return job

    async def wait(self, job_id: int, timeout: float = 60.0) -> dict[str, Any]:
        """See `Client.wait`."""
        deadline = _monotonic() + timeout
        for delay in _poll_delays():
            job = await self.get(job_id)
            left = deadline - _monotonic()
            if job["status"] in TERMINAL:
                return job
            if left <= 0:
                raise WaitTimeout(job, timeout)
            await _async_sleep(min(delay, left))
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def enqueue(target: Any, type: str, payload: Mapping[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    """Enqueue in-process, without an HTTP round trip: for code deployed in the same app.

    `target` is the `JobQueue`, the FastAPI app built by `create_app()`, or a `Request` to it
    (inside a route: `await enqueue(request, "echo", {...})`). The same validation runs as for
    `POST /api/jobs` (an `InvalidJob` from `jobqueue.errors` on bad input); the answer is the job
    as the API renders it. A repeated idempotency key answers the existing job.
    """
    from .engine import view

    jq = _engine_of(target)
    row, _created = await jq.enqueue(_job_request(type, payload, options))
    return view(row)


def _engine_of(target: Any) -> Any:
    # Duck-typed on purpose: this module may not import the API (import-linter contract).
    app = getattr(target, "app", None)
    if app is not None and hasattr(getattr(app, "state", None), "resources"):
        target = app  # a Request
    state = getattr(target, "state", None)
    if state is not None and hasattr(state, "resources"):
        return state.resources.jq()  # the app's lazily built engine
    if hasattr(target, "enqueue") and hasattr(target, "store"):
        return target
    raise TypeError(f"enqueue() needs a JobQueue, the jobqueue FastAPI app or a Request, not {type(target).__name__}")
