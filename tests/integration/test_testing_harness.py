"""jobqueue.testing: users test their own job types against real Postgres and Redis, isolated,
on an injected clock. Run here as a user would: a test file of theirs, through pytest's own
pytester, with `-p jobqueue.testing`."""

from __future__ import annotations

from typing import Any

import pytest

from jobqueue.builtins import default_registry
from jobqueue.registry import JobContext
from jobqueue.testing import harness

pytest_plugins = ["pytester"]

USER_TESTS = """
import pytest
from pydantic import BaseModel
from jobqueue import Blueprint, RetryAfter
from jobqueue.registry import Registry

bp = Blueprint()
calls = []

class Receipt(BaseModel):
    order_id: str

@bp.job("email.receipt", model=Receipt, max_attempts=3)
async def receipt(payload: Receipt, ctx) -> dict:
    calls.append(ctx.attempt)
    if ctx.attempt == 1:
        raise RetryAfter(60_000, "mail server busy")
    return {"sent": payload.order_id}

@pytest.fixture
def jobqueue_registry():
    return Registry([bp])

async def test_a_receipt_is_retried_and_sent(jobqueue):
    job = await jobqueue.enqueue("email.receipt", {"order_id": "42"})
    await jobqueue.drain_until_idle()  # moves the clock past the minute of backoff by itself
    done = await jobqueue.get(job.id)
    assert (done.status, done.attempts, done.result) == ("completed", 2, {"sent": "42"})
    assert calls == [1, 2]

async def test_each_test_gets_its_own_queue(jobqueue):
    assert await jobqueue.jobs() == []
"""


def test_a_users_own_tests_run_with_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_receipts=USER_TESTS)
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest_subprocess("-p", "jobqueue.testing", "-q")
    result.assert_outcomes(passed=2)


async def test_the_harness_without_pytest_fixtures() -> None:
    registry = default_registry()
    ran: list[int] = []

    @registry.job("later")
    async def later(payload: dict[str, Any], ctx: JobContext) -> None:
        ran.append(ctx.job_id)

    async with harness(registry) as h:
        soon = await h.enqueue("later", {}, delay_ms=3_600_000)  # an hour from now, on the fake clock
        reports = await h.drain_until_idle()
        assert ran == [soon.id] and sum(r.completed for r in reports) == 1
        assert [j.status for j in await h.jobs()] == ["completed"]
        prefix = h.jq.keys.prefix
    async with harness(registry) as other:
        assert other.jq.keys.prefix != prefix and await other.jobs() == []
