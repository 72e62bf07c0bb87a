"""AWS Lambda: `LambdaHandler`, the `handler(event, context)` a deployment exports (this repository's
`api/lambda.py` does: handler string `api/lambda.handler`; the runtime turns the slashes into dots
and imports `api.lambda` with importlib, so the keyword in the name is no obstacle).

One function serves both roles:

- HTTP: API Gateway REST (payload v1), HTTP API (v1 or v2) and Function URL events go through
  Mangum to the same FastAPI app Vercel runs.
- Drain: an EventBridge schedule (`"source": "aws.events"`, `"detail-type": "Scheduled Event"`),
  or any event `{"jobqueue": "drain"}` (an EventBridge Scheduler target's input, a manual
  invoke), runs one drain and returns its report. The budget is the tighter of
  JOBQUEUE_MAX_DURATION_S less the margin and the invocation's remaining time less the margin, so
  the drain ends before Lambda's timeout whatever the two are set to.

Mangum runs with `lifespan="off"`: it would otherwise run startup and shutdown around every
invocation, closing the engine each time. Resources stay lazy instead (built by the first request
that needs them) and live as long as the warm execution environment. Everything runs on one
event loop owned here and set as the current loop before each invocation: the asyncpg pool is
bound to the loop that made it, and Mangum looks the loop up with `asyncio.get_event_loop()` on
every call, which must keep finding the same one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from jobqueue.registry import RegistrySource

log = logging.getLogger("jobqueue.lambda")


def is_drain_event(event: Any) -> bool:
    if not isinstance(event, dict):
        return False
    scheduled = event.get("source") == "aws.events" or event.get("detail-type") == "Scheduled Event"
    return scheduled or event.get("jobqueue") == "drain"


class LambdaHandler:
    """`handler(event, context)`. The app is built on the first invocation, from the environment
    unless one is given (tests), and kept for the life of the execution environment."""

    def __init__(self, app: FastAPI | None = None, *, registry: RegistrySource | None = None) -> None:
        self._app = app
        self._registry = registry
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mangum: Any = None

    @property
    def app(self) -> FastAPI:
        if self._app is None:
            from jobqueue.web.app import create_app

            self._app = create_app(registry=self._registry)
        return self._app

    def _enter_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        return self._loop

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        loop = self._enter_loop()
        if is_drain_event(event):
            return loop.run_until_complete(self._drain(context))
        if self._mangum is None:
            try:
                from mangum import Mangum
            except ModuleNotFoundError as e:
                raise ModuleNotFoundError(
                    "the Lambda handler serves HTTP events through Mangum: pip install 'jobqueue[lambda]'", name=e.name
                ) from e

            # Built after the loop is current: Mangum's constructor looks one up.
            self._mangum = Mangum(self.app, lifespan="off")
        response: dict[str, Any] = self._mangum(event, context)
        return response

    async def _drain(self, context: Any) -> dict[str, Any]:
        from jobqueue.worker import drain_once

        jq = self.app.state.resources.jq()
        settings = jq.settings
        budget = settings.budget_s
        remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
        if callable(remaining_ms):
            budget = min(budget, max(1.0, remaining_ms() / 1000 - settings.budget_margin_s))
        # A QStash kick continues a drain that left work behind, when configured; else the next schedule.
        report = await drain_once(jq, budget)
        return report.contract()

    def close(self) -> None:
        """Close the engine and the loop. Lambda never calls this (the environment is frozen,
        then discarded); tests and scripts that make handlers do."""
        if self._loop is None or self._loop.is_closed():
            return
        if self._app is not None:
            self._loop.run_until_complete(self._app.state.resources.close())
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()
        asyncio.set_event_loop(None)
