"""Job types: a name, a pydantic payload model, defaults (queue, retries, timeout) and the handler.

`Blueprint` collects definitions where handlers live (`handlers/*.py`); a `Registry` is built from
blueprints and refuses a name defined twice. No module-level mutable registry: each app or test
builds its own.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from .errors import DuplicateJobType, InvalidDefinition, InvalidJob
from .models import MAX_TIMEOUT_MS, QUEUE_NAME, Backoff

if TYPE_CHECKING:
    from .models import JobRequest


@dataclass
class JobContext:
    """What a handler knows about the run it is in."""

    job_id: int
    type: str
    queue: str
    attempt: int
    max_attempts: int
    deadline: float  # loop.time() by which the handler is cancelled
    enqueue: Callable[[JobRequest], Awaitable[Any]]
    settings: Any = None

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts


Handler = Callable[[Any, JobContext], Awaitable[Any]]


@dataclass(frozen=True)
class JobType:
    name: str
    handler: Handler
    model: type[BaseModel] | None = None
    queue: str = "default"
    # None: the queue's default, else the engine's (3 attempts, Backoff(), JOBQUEUE_DEFAULT_TIMEOUT_MS).
    max_attempts: int | None = None
    backoff: Backoff | None = None
    timeout_ms: int | None = None

    def validate(self, payload: dict[str, Any]) -> BaseModel | dict[str, Any]:
        """Validate an untrusted payload; the error names the offending field."""
        if self.model is None:
            return payload
        try:
            return self.model.model_validate(payload)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise InvalidJob(
                f"payload does not match {self.name}: {loc or 'payload'}: {first['msg']}",
                field=f"payload.{loc}" if loc else "payload",
            ) from e


class Blueprint:
    """Definitions to add to a Registry; `@blueprint.job(...)` registers a handler."""

    def __init__(self) -> None:
        self.types: list[JobType] = []

    def job(
        self,
        name: str,
        *,
        model: type[BaseModel] | None = None,
        queue: str = "default",
        max_attempts: int | None = None,
        backoff: Backoff | dict[str, Any] | None = None,
        timeout_ms: int | None = None,
    ) -> Callable[[Handler], Handler]:
        """Define a job type. Every option is checked here: a wrong one raises InvalidDefinition
        at import time, not a 500 at enqueue time."""
        policy = _check_definition(name, model, queue, max_attempts, backoff, timeout_ms)

        def register(fn: Handler) -> Handler:
            if not _is_async(fn):
                raise InvalidDefinition(
                    f"job type {name!r}: the handler {getattr(fn, '__qualname__', fn)!r} must be an `async def` "
                    "function (it is awaited with the payload and a JobContext)"
                )
            if any(t.name == name for t in self.types):
                raise DuplicateJobType(f"job type {name!r} is defined twice")
            self.types.append(JobType(name, fn, model, queue, max_attempts, policy, timeout_ms))
            return fn

        return register


def _is_async(fn: Any) -> bool:
    target = fn.func if isinstance(fn, functools.partial) else fn
    # A callable object with an async __call__ is awaited the same way.
    call = type(target).__call__ if not inspect.isfunction(target) and callable(target) else None
    return inspect.iscoroutinefunction(target) or (call is not None and inspect.iscoroutinefunction(call))


def _check_definition(
    name: Any, model: Any, queue: Any, max_attempts: Any, backoff: Any, timeout_ms: Any
) -> Backoff | None:
    """Refuse a wrong option when the job type is defined, with the reason, rather than let every
    enqueue of it fail later (as a 500). Returns the backoff policy as a `Backoff`."""

    def bad(what: str) -> InvalidDefinition:
        return InvalidDefinition(f"job type {name!r}: {what}")

    if not isinstance(name, str) or not 1 <= len(name) <= 200 or name != name.strip():
        raise InvalidDefinition(f"a job type's name must be 1-200 characters without surrounding spaces, not {name!r}")
    if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise bad(f"model must be a pydantic BaseModel subclass, not {model!r}")
    if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
        raise bad(f"queue must be 1-100 characters of letters, digits, '_', '.' or '-', not {queue!r}")
    if max_attempts is not None and (type(max_attempts) is not int or not 1 <= max_attempts <= 100):
        raise bad(f"max_attempts must be an integer from 1 to 100, not {max_attempts!r}")
    if timeout_ms is not None and (type(timeout_ms) is not int or not 1 <= timeout_ms <= MAX_TIMEOUT_MS):
        raise bad(f"timeout_ms must be an integer from 1 to {MAX_TIMEOUT_MS}, not {timeout_ms!r}")
    if backoff is None or isinstance(backoff, Backoff):
        return backoff
    if isinstance(backoff, dict):
        try:
            return Backoff.model_validate(backoff)
        except ValidationError as e:
            first = e.errors()[0]
            raise bad(f"backoff.{'.'.join(str(x) for x in first['loc'])}: {first['msg']}") from None
    raise bad(f"backoff must be a jobqueue.Backoff (or a dict of its fields), not {type(backoff).__name__}")


class Registry:
    def __init__(self, blueprints: Iterable[Blueprint] = ()) -> None:
        self._types: dict[str, JobType] = {}
        for bp in blueprints:
            self.add_blueprint(bp)

    def add_blueprint(self, bp: Blueprint) -> None:
        for t in bp.types:
            self.add(t)

    def add(self, t: JobType) -> None:
        if t.name in self._types:
            raise DuplicateJobType(f"job type {t.name!r} is registered twice")
        self._types[t.name] = t

    def job(self, name: str, **options: Any) -> Callable[[Handler], Handler]:
        """Register directly on this registry (tests, small apps)."""
        bp = Blueprint()

        def register(fn: Handler) -> Handler:
            bp.job(name, **options)(fn)
            self.add_blueprint(bp)
            return fn

        return register

    def get(self, name: str) -> JobType:
        try:
            return self._types[name]
        except KeyError:
            raise InvalidJob(f"unknown job type {name!r}", field="type") from None

    def __contains__(self, name: object) -> bool:
        return name in self._types

    @property
    def names(self) -> list[str]:
        return sorted(self._types)

    @property
    def queues(self) -> set[str]:
        return {t.queue for t in self._types.values()} | {"default"}


# What an app hands to `create_app(registry=...)` and the Lambda handler: a registry, a function
# that builds one, or its "module:callable" name; the latter two are resolved on first use, so
# importing the entry point does not import every job module (a cold start pays only for imports).
RegistrySource = Registry | Callable[[], Registry] | str


def resolve_registry(source: RegistrySource) -> Registry:
    if isinstance(source, Registry):
        return source
    if isinstance(source, str):
        return load_registry(source)
    return source()


def load_registry(spec: str) -> Registry:
    """`module:callable` returning a Registry (JOBQUEUE_REGISTRY; apps point it at their own).
    Imported by name so the engine does not depend on any job module."""
    module, _, attr = spec.partition(":")
    made = getattr(importlib.import_module(module), attr or "default_registry")()
    if not isinstance(made, Registry):
        from .errors import ConfigurationError

        raise ConfigurationError(f"JOBQUEUE_REGISTRY={spec!r} returned {type(made).__name__}, not a Registry")
    return made
