"""jobqueue: a durable job queue for serverless Python. Postgres is the truth; Redis dispatches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import PermanentError, RateLimited, RetryAfter

if TYPE_CHECKING:
    from .models import Backoff
    from .registry import Blueprint, JobContext, Registry

__all__ = ["Backoff", "Blueprint", "JobContext", "PermanentError", "RateLimited", "Registry", "RetryAfter"]


def __getattr__(name: str) -> Any:
    # The registry imports pydantic (~100 ms); app code that only uses the HTTP client should
    # not pay for it on a cold start.
    if name in ("Blueprint", "JobContext", "Registry"):
        from . import registry

        return getattr(registry, name)
    if name == "Backoff":
        from .models import Backoff

        return Backoff
    raise AttributeError(f"module 'jobqueue' has no attribute {name!r}")
