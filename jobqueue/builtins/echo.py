"""`echo`: returns its payload. For smoke tests and benchmarks."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from jobqueue.registry import Blueprint, JobContext

blueprint = Blueprint()


class EchoPayload(BaseModel):
    model_config = ConfigDict(extra="allow")


@blueprint.job("echo", model=EchoPayload, max_attempts=3, timeout_ms=10_000)
async def echo(payload: EchoPayload, ctx: JobContext) -> Any:
    return payload.model_dump()
