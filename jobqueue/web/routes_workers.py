"""`/api/workers`: one bounded drain per call. Vercel Cron calls it with GET, QStash with POST;
both answer the same report. The budget is the function's maxDuration less a margin
(`Settings.budget_s`), so the response always leaves before the platform kills the function.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from .auth import WORKERS_PATH, require_worker
from .deps import JQ, SettingsDep
from .http_errors import COMMON_ERRORS, TOKEN_IN_USE, TOO_LARGE, ApiRoute

router = APIRouter(
    prefix=WORKERS_PATH,
    tags=["workers"],
    dependencies=[Depends(require_worker)],
    responses=COMMON_ERRORS | TOO_LARGE | TOKEN_IN_USE,
    route_class=ApiRoute,
)


class DrainResult(BaseModel):
    """What one drain did; `more` means work was left when the budget ran out."""

    claimed: int = Field(description="jobs claimed and granted")
    completed: int = Field(description="jobs whose handler returned")
    retried: int = Field(description="failed attempts scheduled to run again after their backoff")
    failed: int = Field(description="jobs that failed for good (dead-lettered)")
    released: int = Field(description="claimed but not started before the budget ended: back in their ready list")
    recovered: int = Field(description="expired leases taken back from dead workers")
    duration_ms: int
    more: bool = Field(description="work was left when the budget ran out")
    gated_until: str | None = Field(
        default=None,
        description='work waits on a flow-control limit until then (ISO-8601), or "slot": until a running job '
        "finishes; null: nothing waits on a limit (an idle drain is not a gated one)",
    )


async def _drain(jq: JQ, settings: SettingsDep) -> DrainResult:
    from jobqueue.worker import drain_once

    report = await drain_once(jq, settings.budget_s)
    # The report carries internals too (groups, dropped, dead jobs); the contract is these eight.
    return DrainResult.model_validate(report.contract())


# Two functions rather than one `api_route(methods=[...])`: each method needs its own operation id.
@router.get("", response_model=DrainResult, summary="Drain (Vercel Cron)")
async def drain_get(jq: JQ, settings: SettingsDep) -> DrainResult:
    return await _drain(jq, settings)


@router.post("", response_model=DrainResult, summary="Drain (QStash, kicks, manual)")
async def drain_post(jq: JQ, settings: SettingsDep) -> DrainResult:
    return await _drain(jq, settings)
