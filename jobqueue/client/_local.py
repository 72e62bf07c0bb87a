"""`enqueue()` in-process: for code deployed in the same app as the queue, without HTTP."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._api import job_request


async def enqueue(
    target: Any,
    type: str,
    payload: Mapping[str, Any] | None = None,
    *,
    connection: Any = None,
    session: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """Enqueue in-process, without an HTTP round trip: for code deployed in the same app.

    `target` is the `JobQueue`, the FastAPI app built by `create_app()`, the router built by
    `jobqueue.web.router()`, or a `Request` to either (inside a route: `await enqueue(request,
    "echo", {...})`). The same validation runs as for `POST /api/jobs` (an `InvalidJob` from
    `jobqueue.errors` on bad input); the answer is the job as the API renders it, a JSON-ready
    dict (`jobqueue.client.Job.model_validate(...)` makes it the typed model). A repeated
    idempotency key answers the existing job.

    Inside the application's own transaction, so that the job exists exactly when the rows it is
    about do: `connection=` an asyncpg connection (in `async with jq.transaction(conn):` the job
    is pushed to Redis once it commits), or `session=` a SQLAlchemy/SQLModel AsyncSession (pushed
    on its commit). A rollback leaves no job. See `JobQueue.enqueue`.
    """
    from ..engine import view

    jq = _engine_of(target)
    row, _created = await jq.enqueue(job_request(type, payload, options), connection=connection, session=session)
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
    raise TypeError(
        f"enqueue() needs a JobQueue, the jobqueue FastAPI app or router, or a Request, not {type(target).__name__}"
    )
