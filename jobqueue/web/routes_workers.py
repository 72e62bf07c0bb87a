"""`/api/workers`: one bounded drain per call. Vercel Cron calls it with GET, QStash with POST;
both answer the same report. The budget is the function's maxDuration less a margin
(`Settings.budget_s`), so the response always leaves before the platform kills the function.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from .auth import require_worker
from .deps import JQ, SettingsDep
from .http_errors import COMMON_ERRORS, TOO_LARGE

router = APIRouter(
    prefix="/api/workers",
    tags=["workers"],
    dependencies=[Depends(require_worker)],
    responses=COMMON_ERRORS | TOO_LARGE,
)


class DrainResult(BaseModel):
    """What one drain did; `more` means work was left when the budget ran out."""

    claimed: int
    completed: int
    retried: int
    failed: int
    released: int
    recovered: int
    duration_ms: int
    more: bool


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
