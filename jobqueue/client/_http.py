"""`Client` and `AsyncClient`: the two executors of what _api.py describes.

Each method is bound from its description with one of the small adapters below (`_sync`,
`_sync_pages`, `_sync_flow` and their async twins), which take the endpoint function's signature
and docstring as the method's own; an executor only sends a `Call` and reads its answer
(`_run`), follows `next_cursor`, or drives a flow's calls and sleeps (`_drive`). So a new endpoint
is one function in _api.py and one line in each class here, and the twins cannot drift apart.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from . import _api, _time
from ._api import Call, Sleep, connection_error

if TYPE_CHECKING:
    import httpx

    from ._api import Flow
    from .models import Job, JobPage

P = ParamSpec("P")
T = TypeVar("T")

_SELF = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)


def _as_method(
    fn: Any, build: Callable[..., Any], owner: str, returns: str | None = None, name: str | None = None
) -> Any:
    """`fn` under the endpoint's name, docstring and signature (for help() and whatever else
    introspects at run time), as a method of `owner` answering `returns`: by default what the
    endpoint's `Call[...]` or `Flow[...]` holds."""
    sig = inspect.signature(build)
    if returns is None:
        ann = str(sig.return_annotation)  # a string: every module here defers its annotations
        returns = ann.partition("[")[2][:-1] or ann
    fn.__name__ = name or build.__name__
    fn.__qualname__ = f"{owner}.{fn.__name__}"
    fn.__module__ = "jobqueue.client"
    fn.__doc__ = build.__doc__
    fn.__signature__ = sig.replace(parameters=[_SELF, *sig.parameters.values()], return_annotation=returns)
    return fn


# --- the synchronous executor --------------------------------------------------------------------


def _sync(build: Callable[P, Call[T]]) -> Callable[Concatenate[Client, P], T]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(build(*args, **kwargs))

    result: Callable[Concatenate[Client, P], T] = _as_method(method, build, "Client")
    return result


def _sync_pages(build: Callable[P, Call[JobPage]], name: str) -> Callable[Concatenate[Client, P], Iterator[Job]]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[Job]:
        call: Call[JobPage] | None = build(*args, **kwargs)
        while call is not None:
            page = self._run(call)
            yield from page.jobs
            call = _api.following(call, page)

    result: Callable[Concatenate[Client, P], Iterator[Job]] = _as_method(method, build, "Client", "Iterator[Job]", name)
    result.__doc__ = _pages_doc(build)
    return result


def _sync_flow(build: Callable[P, Flow[T]]) -> Callable[Concatenate[Client, P], T]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._drive(build(*args, **kwargs))

    result: Callable[Concatenate[Client, P], T] = _as_method(method, build, "Client")
    return result


def _pages_doc(build: Callable[..., Any]) -> str:
    return (
        f"Every item that `{build.__name__}()` pages through, newest first, following `next_cursor`"
        " page after page (`limit` is the page size, `cursor` where to start); lazy: a page is"
        " fetched when the previous one is used up."
    )


class Client:
    """Synchronous client of the jobqueue HTTP API; one connection pool, closed by `close()` or
    the `with` block. `base_url` and `token` default to JOBQUEUE_URL and JOBS_API_TOKEN;
    `timeout` (seconds) applies to each request, plus the time a long poll is asked to hold;
    `transport` is for tests (an `httpx.MockTransport`, a WSGI transport)."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        import httpx

        self.base_url, headers = _api.settings(base_url, token)
        self._timeout = timeout
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def _run(self, call: Call[T]) -> T:
        import httpx

        try:
            resp = self._http.request(
                call.method, call.path, params=call.params, json=call.body, timeout=self._timeout + call.hold_s
            )
        except httpx.TransportError as e:
            raise connection_error(e) from e
        return call.read(resp)

    def _drive(self, flow: Flow[T]) -> T:
        answer: Any = None
        while True:
            try:
                step = flow.send(answer)
            except StopIteration as done:
                result: T = done.value
                return result
            if isinstance(step, Sleep):
                _time.sleep(step.seconds)
                answer = None
            else:
                answer = self._run(step)

    enqueue = _sync(_api.enqueue)
    enqueue_many = _sync(_api.enqueue_many)
    flow = _sync(_api.flow)
    get = _sync(_api.get)
    list_jobs = _sync(_api.list_jobs)
    iter_jobs = _sync_pages(_api.list_jobs, "iter_jobs")
    cancel = _sync(_api.cancel)
    retry = _sync(_api.retry)
    wait = _sync_flow(_api.wait)
    list_dlq = _sync(_api.list_dlq)
    iter_dlq = _sync_pages(_api.list_dlq, "iter_dlq")
    replay_dlq = _sync(_api.replay_dlq)
    purge_dlq = _sync(_api.purge_dlq)
    list_queues = _sync(_api.list_queues)
    pause_queue = _sync(_api.pause_queue)
    resume_queue = _sync(_api.resume_queue)
    set_queue = _sync(_api.set_queue)
    list_schedules = _sync(_api.list_schedules)
    get_schedule = _sync(_api.get_schedule)
    put_schedule = _sync(_api.put_schedule)
    delete_schedule = _sync(_api.delete_schedule)
    pause_schedule = _sync(_api.pause_schedule)
    resume_schedule = _sync(_api.resume_schedule)
    trigger_schedule = _sync(_api.trigger_schedule)
    metrics = _sync(_api.metrics)
    metrics_text = _sync(_api.metrics_text)
    health = _sync(_api.health)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"


# --- the asynchronous executor -------------------------------------------------------------------


def _async(build: Callable[P, Call[T]]) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(build(*args, **kwargs))

    result: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]] = _as_method(method, build, "AsyncClient")
    return result


def _async_pages(
    build: Callable[P, Call[JobPage]], name: str
) -> Callable[Concatenate[AsyncClient, P], AsyncIterator[Job]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[Job]:
        call: Call[JobPage] | None = build(*args, **kwargs)
        while call is not None:
            page = await self._run(call)
            for job in page.jobs:
                yield job
            call = _api.following(call, page)

    result: Callable[Concatenate[AsyncClient, P], AsyncIterator[Job]] = _as_method(
        method, build, "AsyncClient", "AsyncIterator[Job]", name
    )
    result.__doc__ = _pages_doc(build)
    return result


def _async_flow(build: Callable[P, Flow[T]]) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._drive(build(*args, **kwargs))

    result: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]] = _as_method(method, build, "AsyncClient")
    return result


class AsyncClient:
    """The asynchronous twin of `Client`, with the same methods as coroutines (and `iter_*` as
    async iterators): `async with AsyncClient() as jobs: await jobs.enqueue(...)`."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        import httpx

        self.base_url, headers = _api.settings(base_url, token)
        self._timeout = timeout
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    async def _run(self, call: Call[T]) -> T:
        import httpx

        try:
            resp = await self._http.request(
                call.method, call.path, params=call.params, json=call.body, timeout=self._timeout + call.hold_s
            )
        except httpx.TransportError as e:
            raise connection_error(e) from e
        return call.read(resp)

    async def _drive(self, flow: Flow[T]) -> T:
        answer: Any = None
        while True:
            try:
                step = flow.send(answer)
            except StopIteration as done:
                result: T = done.value
                return result
            if isinstance(step, Sleep):
                await _time.async_sleep(step.seconds)
                answer = None
            else:
                answer = await self._run(step)

    enqueue = _async(_api.enqueue)
    enqueue_many = _async(_api.enqueue_many)
    flow = _async(_api.flow)
    get = _async(_api.get)
    list_jobs = _async(_api.list_jobs)
    iter_jobs = _async_pages(_api.list_jobs, "iter_jobs")
    cancel = _async(_api.cancel)
    retry = _async(_api.retry)
    wait = _async_flow(_api.wait)
    list_dlq = _async(_api.list_dlq)
    iter_dlq = _async_pages(_api.list_dlq, "iter_dlq")
    replay_dlq = _async(_api.replay_dlq)
    purge_dlq = _async(_api.purge_dlq)
    list_queues = _async(_api.list_queues)
    pause_queue = _async(_api.pause_queue)
    resume_queue = _async(_api.resume_queue)
    set_queue = _async(_api.set_queue)
    list_schedules = _async(_api.list_schedules)
    get_schedule = _async(_api.get_schedule)
    put_schedule = _async(_api.put_schedule)
    delete_schedule = _async(_api.delete_schedule)
    pause_schedule = _async(_api.pause_schedule)
    resume_schedule = _async(_api.resume_schedule)
    trigger_schedule = _async(_api.trigger_schedule)
    metrics = _async(_api.metrics)
    metrics_text = _async(_api.metrics_text)
    health = _async(_api.health)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"
