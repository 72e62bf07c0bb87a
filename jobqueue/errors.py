"""One error hierarchy for the engine; the HTTP layer maps it to status codes in one place.

The class docstring is the default message (as in procrastinate's exceptions.py).
"""

from __future__ import annotations

from typing import Any


class JobQueueError(Exception):
    """A job queue error occurred."""

    status_code = 500

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.details = details
        super().__init__(self.message)


class InvalidJob(JobQueueError):
    """The job is invalid."""

    status_code = 422

    def __init__(self, message: str | None = None, *, field: str = "", **details: Any) -> None:
        super().__init__(message, field=field, **details)
        self.field = field


class InvalidRequest(InvalidJob):
    """The request is invalid."""

    # A 422 about the request itself (malformed JSON, a bad parameter or cursor, a bad operator
    # body), as opposed to the engine's `invalid_job` about the job it describes.


class PayloadTooLarge(JobQueueError):
    """The request body is too large."""

    status_code = 413


class JobNotFound(JobQueueError):
    """No such job."""

    status_code = 404


class InvalidState(JobQueueError):
    """The job's state does not allow this operation."""

    status_code = 409


class Unauthorized(JobQueueError):
    """Missing or invalid credentials."""

    status_code = 401


class Forbidden(JobQueueError):
    """This credential may not do this."""

    status_code = 403

    # A valid credential outside its scope (JOBS_ENQUEUE_TOKEN or JOBS_METRICS_TOKEN on a route
    # they do not open): not a failed credential, so never counted by the throttle.


class Unavailable(JobQueueError):
    """A dependency is unreachable."""

    status_code = 503

    def __init__(self, dependency: str, message: str | None = None) -> None:
        super().__init__(message or f"{dependency} is unavailable", dependency=dependency)
        self.dependency = dependency


class RedisUnavailable(Unavailable):
    """Redis is unreachable or answered with a transport-level error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__("redis", message)


class PostgresUnavailable(Unavailable):
    """Postgres is unreachable."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__("postgres", message)


class StatementFailed(JobQueueError):
    """Postgres refused a statement."""

    # Raised by the store for errors of the statement itself (a value it cannot store, a
    # constraint), as opposed to PostgresUnavailable: retrying the same statement cannot help.


class ConfigurationError(JobQueueError):
    """The configuration is invalid."""


class InvalidDefinition(ConfigurationError):
    """A job type is defined with an option it cannot have."""


class DuplicateJobType(InvalidDefinition):
    """A job type is registered twice."""


# --- signals a handler raises -------------------------------------------------------------


class HandlerSignal(Exception):
    """Base for exceptions that handlers raise to steer retries."""


class PermanentError(HandlerSignal):
    """The job cannot succeed: fail it now, without further attempts."""


class RetryAfter(HandlerSignal):
    """Retry this job after `delay_ms` (e.g. an HTTP 429 with Retry-After), counting the attempt."""

    def __init__(self, delay_ms: int, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay_ms = max(0, int(delay_ms))
        self.reason = reason


class RateLimited(HandlerSignal):
    """Slow down (e.g. an HTTP 429): hold back this job's whole group for `retry_after_ms` and put
    the job back in it, without counting an attempt."""

    def __init__(self, retry_after_ms: int, reason: str = "rate limited") -> None:
        super().__init__(reason)
        self.retry_after_ms = max(0, int(retry_after_ms))
        self.reason = reason


class InvalidProgress(JobQueueError, ValueError):
    """A progress report was refused: percent must be a number from 0 to 100, message a short
    string, data JSON of bounded size. Raised to the handler by `ctx.progress`; left uncaught, it
    fails the job like any other bug in its handler."""
