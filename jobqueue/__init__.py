"""jobqueue: a durable job queue for serverless Python. Postgres is the truth; Redis dispatches."""

from __future__ import annotations

from .errors import PermanentError, RetryAfter
from .registry import Blueprint, JobContext, Registry

__all__ = ["Blueprint", "JobContext", "PermanentError", "Registry", "RetryAfter"]
