"""Job types: a name, a pydantic payload model, defaults (queue, retries, timeout) and the handler.

`Blueprint` collects definitions where handlers live (`handlers/*.py`); a `Registry` is built from
blueprints and refuses a name defined twice. No module-level mutable registry: each app or test
builds its own.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from .errors import DuplicateJobType, InvalidDefinition, InvalidJob
from .models import MAX_TIMEOUT_MS, QUEUE_NAME, Backoff, Rate

if TYPE_CHECKING:
    from .models import JobRequest
    from .schedule_spec import ScheduleDecl

# Set on a handler by @blueprint.job, so @blueprint.schedule above it knows the type's name.
JOB_NAME_ATTR = "__jobqueue_type__"


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
    # Reads the dependencies of a job by id (one statement, when the handler asks).
    dependencies_of: Callable[[int], Awaitable[list[dict[str, Any]]]] | None = None
    clock: Any = None
    report_progress: Callable[[dict[str, Any]], None] | None = None

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    async def dependencies(self) -> list[dict[str, Any]]:
        """The jobs this one depends on (`depends_on`), in id order: each a dict with `id`,
        `type`, `status`, `result` and `error`. Under `on_dependency_failure="continue"` the
        failed or cancelled ones are here with their error; a job without dependencies gets []."""
        if self.dependencies_of is None:
            return []
        return await self.dependencies_of(self.job_id)

    async def progress(self, percent: float, message: str | None = None, data: Any = None) -> None:
        """Report how far the job has got: `percent` 0-100, an optional short `message` (at most
        500 characters) and JSON `data` (at most 4 KB). Cheap to call often: the latest value is
        kept in memory and written to Redis at most once a second (progress.py); the last one is
        stored with the outcome. A bad value raises InvalidProgress (a ValueError)."""
        from .clock import Clock
        from .progress import snapshot

        value = snapshot(self.clock or Clock(), percent, message, data)
        if self.report_progress is not None:
            self.report_progress(value)


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
    # Flow control: the group a payload belongs to (when the request names none), and this
    # type's own limits, across every drain (claim.lua).
    group: Callable[[Any], str | None] | None = None
    concurrency: int | None = None
    rate: Rate | None = None
    group_concurrency: int | None = None
    group_rate: Rate | None = None
    fair: bool = False

    @property
    def limited(self) -> bool:
        """Whether flow control counts this type's jobs as such (its members carry its tag)."""
        return bool(self.concurrency or self.rate or self.group_concurrency or self.group_rate or self.fair)

    def limits_spec(self) -> str:
        """claim.lua's spec of this type's limits: c=N,r=L/P/B,gc=N,gr=L/P/B,fair=1."""
        parts = []
        if self.concurrency:
            parts.append(f"c={self.concurrency}")
        if self.rate:
            parts.append(f"r={self.rate.spec()}")
        if self.group_concurrency:
            parts.append(f"gc={self.group_concurrency}")
        if self.group_rate:
            parts.append(f"gr={self.group_rate.spec()}")
        if self.fair:
            parts.append("fair=1")
        return ",".join(parts)

    def group_of(self, payload: Any) -> str | None:
        """The group its `group` function derives from a (validated) payload, checked."""
        if self.group is None:
            return None
        g = self.group(payload)
        if g is None:
            return None
        if not isinstance(g, str) or not 1 <= len(g) <= 200:
            raise InvalidJob(f"the group of this {self.name} job must be 1-200 characters, got {g!r}", field="group")
        return g

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
        self.schedules: list[ScheduleDecl] = []

    def schedule(self, schedule_id: str, *, type: str | None = None, **spec: Any) -> Callable[[Handler], Handler]:
        """Declare a recurring job, synced to Postgres at deploy (`jobqueue migrate` or
        `jobqueue schedules sync`) and lazily by the drains. Either on a job's handler, above its
        `@blueprint.job` (the schedule enqueues that type):

            @blueprint.schedule("nightly-report", cron="0 3 * * *", tz="Europe/Berlin")
            @blueprint.job("report.build")
            async def build(payload, ctx): ...

        or as a call naming the type: `blueprint.schedule("sweep", type="echo", every_ms=60_000)`.
        The options are those of PUT /api/schedules/{id}; they are checked here."""
        from .schedule_spec import ScheduleDecl, ScheduleRequest, check_schedule_id

        def declare(type_name: str) -> None:
            try:
                check_schedule_id(schedule_id)
                req = ScheduleRequest.model_validate({"type": type_name, **spec})
                req.timing()
            except ValueError as e:  # pydantic's ValidationError and InvalidTiming
                raise InvalidDefinition(f"schedule {schedule_id!r}: {e}") from None
            if any(d.id == schedule_id for d in self.schedules):
                raise InvalidDefinition(f"schedule {schedule_id!r} is declared twice")
            self.schedules.append(ScheduleDecl(schedule_id, req))

        if type is not None:
            declare(type)

        def on_handler(fn: Handler) -> Handler:
            if type is None:
                name = getattr(fn, JOB_NAME_ATTR, None) or self._pending_name(fn)
                declare(name)
            return fn

        return on_handler

    def _pending_name(self, fn: Handler) -> str:
        for t in self.types:
            if t.handler is fn:
                return t.name
        # `@schedule` above `@job` sees the handler before it is registered: wait for it.
        raise InvalidDefinition(
            f"@schedule on {getattr(fn, '__qualname__', fn)!r}: put it on a function decorated with "
            "@blueprint.job, or pass type="
        )

    def job(
        self,
        name: str,
        *,
        model: type[BaseModel] | None = None,
        queue: str = "default",
        max_attempts: int | None = None,
        backoff: Backoff | dict[str, Any] | None = None,
        timeout_ms: int | None = None,
        group: Callable[[Any], str | None] | None = None,
        concurrency: int | None = None,
        rate: Rate | dict[str, Any] | None = None,
        group_concurrency: int | None = None,
        group_rate: Rate | dict[str, Any] | None = None,
        fair: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Define a job type. Every option is checked here: a wrong one raises InvalidDefinition
        at import time, not a 500 at enqueue time.

        Flow control: `group(payload)` names a job's group when its request names none (a tenant
        id, a destination host); `concurrency` and `rate` limit this type's jobs, and
        `group_concurrency`/`group_rate` each group's of them, across all drains; `fair` serves
        the groups in turns (a tenant with 100,000 jobs does not starve one with 10)."""
        policy = _check_definition(name, model, queue, max_attempts, backoff, timeout_ms)
        flow = _check_flow(name, group, concurrency, rate, group_concurrency, group_rate, fair)

        def register(fn: Handler) -> Handler:
            if not _is_async(fn):
                raise InvalidDefinition(
                    f"job type {name!r}: the handler {getattr(fn, '__qualname__', fn)!r} must be an `async def` "
                    "function (it is awaited with the payload and a JobContext)"
                )
            if any(t.name == name for t in self.types):
                raise DuplicateJobType(f"job type {name!r} is defined twice")
            self.types.append(JobType(name, fn, model, queue, max_attempts, policy, timeout_ms, **flow))
            with contextlib.suppress(AttributeError, TypeError):  # some callables take no attributes
                setattr(fn, JOB_NAME_ATTR, name)
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


def _check_flow(
    name: str, group: Any, concurrency: Any, rate: Any, group_concurrency: Any, group_rate: Any, fair: Any
) -> dict[str, Any]:
    def bad(what: str) -> InvalidDefinition:
        return InvalidDefinition(f"job type {name!r}: {what}")

    if group is not None and not callable(group):
        raise bad("group must be a function of the payload returning the group's name (or None)")
    for label, n in (("concurrency", concurrency), ("group_concurrency", group_concurrency)):
        if n is not None and (type(n) is not int or n < 1):
            raise bad(f"{label} must be a positive integer, not {n!r}")
    rates: dict[str, Rate | None] = {}
    for label, r in (("rate", rate), ("group_rate", group_rate)):
        if r is None or isinstance(r, Rate):
            rates[label] = r
            continue
        try:
            rates[label] = Rate.model_validate(r)
        except ValidationError as e:
            first = e.errors()[0]
            raise bad(f"{label}.{'.'.join(str(x) for x in first['loc'])}: {first['msg']}") from None
    if not isinstance(fair, bool):
        raise bad("fair must be True or False")
    return {
        "group": group,
        "concurrency": concurrency,
        "rate": rates["rate"],
        "group_concurrency": group_concurrency,
        "group_rate": rates["group_rate"],
        "fair": fair,
    }


class Registry:
    def __init__(self, blueprints: Iterable[Blueprint] = ()) -> None:
        self._types: dict[str, JobType] = {}
        self._schedules: dict[str, ScheduleDecl] = {}
        for bp in blueprints:
            self.add_blueprint(bp)

    def add_blueprint(self, bp: Blueprint) -> None:
        for t in bp.types:
            self.add(t)
        for d in bp.schedules:
            if d.id in self._schedules:
                raise InvalidDefinition(f"schedule {d.id!r} is declared twice")
            self._schedules[d.id] = d

    @property
    def schedules(self) -> list[ScheduleDecl]:
        """The schedules declared in code, by id."""
        return [self._schedules[k] for k in sorted(self._schedules)]

    def type_limits(self) -> str:
        """claim.lua's ARGV of the types' limits: "tag=spec;tag=spec" ("" when none)."""
        from .keys import type_tag

        return ";".join(f"{type_tag(t.name)}={t.limits_spec()}" for t in self._types.values() if t.limited)

    def schedules_hash(self) -> str:
        """A digest of the code's schedules: the drains sync them when it changes."""
        import hashlib

        if not self._schedules:
            return ""
        doc = "|".join(f"{d.id}={d.spec.model_dump_json()}" for d in self.schedules)
        return hashlib.sha256(doc.encode()).hexdigest()[:16]

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
