"""The CLI tests' registry (JOBQUEUE_REGISTRY=tests.acceptance.cli_registry:build): the slow one
plus `boom`, which fails at once, to fill the dead-letter queue."""

from __future__ import annotations

from typing import Any

from jobqueue import PermanentError
from jobqueue.registry import JobContext, Registry
from tests.acceptance.slow_registry import build as slow_registry


def build() -> Registry:
    registry = slow_registry()

    @registry.job("boom", max_attempts=1)
    async def boom(payload: dict[str, Any], ctx: JobContext) -> None:
        raise PermanentError("boom")

    return registry


def with_schedule() -> Registry:
    """`build()` plus a schedule declared in code, for `jobqueue schedules` and `migrate`."""
    from jobqueue.registry import Blueprint

    registry = build()
    bp = Blueprint()
    bp.schedule("every-hour", type="echo", cron="0 * * * *", payload={"from": "code"})
    registry.add_blueprint(bp)
    return registry
