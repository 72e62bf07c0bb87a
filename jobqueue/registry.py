"""Job types: a name, a pydantic payload model, defaults (queue, retries, timeout) and the handler.

`Blueprint` collects definitions where handlers live (`handlers/*.py`); a `Registry` is built from
blueprints and refuses a name defined twice. No module-level mutable registry: each app or test
builds its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from .errors import DuplicateJobType, InvalidJob
from .models import Backoff

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
        backoff: Backoff | None = None,
        timeout_ms: int | None = None,
    ) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            if any(t.name == name for t in self.types):
                raise DuplicateJobType(f"job type {name!r} is defined twice")
            self.types.append(JobType(name, fn, model, queue, max_attempts, backoff, timeout_ms))
            return fn

        return register


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
