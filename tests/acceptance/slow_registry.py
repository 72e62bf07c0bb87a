"""A registry for the CLI tests (JOBQUEUE_REGISTRY=tests.acceptance.slow_registry:build)."""

from __future__ import annotations

import asyncio
from typing import Any

from jobqueue.builtins import default_registry
from jobqueue.registry import JobContext, Registry


def build() -> Registry:
    registry = default_registry()

    @registry.job("sleep", timeout_ms=30_000)
    async def sleep(payload: dict[str, Any], ctx: JobContext) -> float:
        await asyncio.sleep(float(payload["seconds"]))
        return float(payload["seconds"])

    return registry
