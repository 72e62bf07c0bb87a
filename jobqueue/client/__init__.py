"""Clients for application code: `Client` (sync) and `AsyncClient` over the HTTP API, and
`enqueue()` for code deployed in the same app as the queue.

    from jobqueue.client import Client

    with Client() as jobs:  # JOBQUEUE_URL and JOBS_API_TOKEN from the environment
        job = jobs.enqueue("echo", {"hello": "world"}, idempotency_key="order-42")
        done = jobs.wait(job.id, timeout=30)  # completed, failed or cancelled
        for failed in jobs.iter_dlq(queue="emails"):
            print(failed.id, failed.error)

The two clients have the same methods (the async ones are coroutines) and cover the whole API:
jobs (`enqueue`, `enqueue_many`, `flow`, `get`, `list_jobs`, `iter_jobs`, `cancel`, `retry`, `wait`),
the dead-letter queue (`list_dlq`, `iter_dlq`, `replay_dlq`, `purge_dlq`), queues
(`list_queues`, `set_queue`, `pause_queue`, `resume_queue`), `metrics`, `metrics_text` and
`health`. They answer typed models (`Job`, `JobPage`, `QueueInfo`, ... in
`jobqueue.client.models`) that keep any field a newer server adds. An error answer raises
`APIError` with the status code and the body's `code`, `message`, `field` and `dependency`; a
transport failure raises it too, with `status_code=None` and code `connection_error`. `wait()`
raises `WaitTimeout` (a `TimeoutError`) with the last state seen.

Light to import: httpx loads when a client is made, pydantic with the first answer (or the first
use of a model's name here), the engine only when `enqueue()` runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._api import APIError, JobSpec, WaitTimeout
from ._http import AsyncClient, Client
from ._local import enqueue

if TYPE_CHECKING:
    from .models import (
        Health,
        Job,
        JobPage,
        Metrics,
        Progress,
        QueueInfo,
        QueueMetrics,
        QueueSettings,
        QueueState,
        Schedule,
    )

__all__ = [
    "APIError",
    "AsyncClient",
    "Client",
    "Health",
    "Job",
    "JobPage",
    "JobSpec",
    "Metrics",
    "Progress",
    "QueueInfo",
    "QueueMetrics",
    "QueueSettings",
    "QueueState",
    "Schedule",
    "WaitTimeout",
    "enqueue",
]

_MODELS = frozenset(
    {
        "Health",
        "Job",
        "JobPage",
        "Metrics",
        "Progress",
        "QueueInfo",
        "QueueMetrics",
        "QueueSettings",
        "QueueState",
        "Schedule",
    }
)


def __getattr__(name: str) -> Any:
    # The models load pydantic (~100 ms): only when a name of theirs is used.
    if name in _MODELS:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'jobqueue.client' has no attribute {name!r}")
