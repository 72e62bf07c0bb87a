"""Run one granted job: validate its payload, call its handler under its timeout, and turn what
happened into an `Outcome` (completed, retried with backoff, rate limited, or failed). Never raises: every
failure of a handler is an outcome of its job, not of the drain."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import orjson

from ..clock import Clock
from ..errors import JobQueueError, PermanentError, RateLimited, RetryAfter
from ..progress import ProgressBoard
from ..registry import JobContext, Registry
from ..retry import MAX_DELAY_MS, backoff_delay_ms
from ..validation import NUL_ESCAPE
from .report import Outcome

joblog = logging.getLogger("jobqueue.jobs")

MAX_ERROR_CHARS = 4000
# RateLimited gives its attempt back, but not forever: once a job's history holds this many
# entries (starts and requeues), a RateLimited counts as an attempt like RetryAfter.
RATE_LIMITED_FREE_STARTS = 200


class Executor:
    """What running a job needs from the engine, and nothing more."""

    def __init__(
        self,
        registry: Registry,
        clock: Clock,
        settings: Any,
        enqueue: Callable[..., Awaitable[Any]],
        dependencies: Callable[[int], Awaitable[list[dict[str, Any]]]] | None = None,
        progress: ProgressBoard | None = None,
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.settings = settings
        self.enqueue = enqueue
        self.dependencies = dependencies
        self.progress = progress or ProgressBoard(clock)

    async def run(self, row: dict[str, Any], token: str, timeout_s: float) -> Outcome:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        jid = row["id"]
        # The Redis copy outlives the lease a little, then goes by itself (progress.py).
        self.progress.start(jid, row["attempts"], token, int(timeout_s * 1000) + self.settings.lease_grace_ms + 10_000)
        try:
            jt = self.registry.get(row["type"])
            payload = jt.validate(row["payload"])
            ctx = JobContext(
                job_id=row["id"],
                type=row["type"],
                queue=row["queue"],
                attempt=row["attempts"],
                max_attempts=row["max_attempts"],
                deadline=loop.time() + timeout_s,
                enqueue=functools.partial(self.enqueue, created_by=row["id"]),
                settings=self.settings,
                dependencies_of=self.dependencies,
                clock=self.clock,
                report_progress=functools.partial(self.progress.report, jid),
            )
            # asyncio.timeout, not wait_for: wait_for wraps every job in one more task.
            async with asyncio.timeout(timeout_s):
                result = await jt.handler(payload, ctx)
            out = Outcome(row, "completed", "completed", result=_encode_result(result))
        except PermanentError as e:
            out = failed(row, f"PermanentError: {e}")
        except JobQueueError as e:  # unknown type or a payload that no longer validates
            out = failed(row, f"{type(e).__name__}: {e.message}")
        except RetryAfter as e:
            out = self._retry_or_fail(row, f"RetryAfter: {e.reason}", e.delay_ms)
        except RateLimited as e:
            if (row.get("history_len") or 0) >= RATE_LIMITED_FREE_STARTS:
                # A receiver that says "slow down" forever: from here on each one counts as an
                # attempt, so the job reaches the dead-letter queue rather than wait for good
                # (and its history stops growing).
                out = self._retry_or_fail(row, f"RateLimited: {e.reason}", e.retry_after_ms)
            else:
                # Back to its group, held there for retry_after_ms; the attempt is not counted.
                until = self.clock.now() + timedelta(milliseconds=min(e.retry_after_ms, MAX_DELAY_MS))
                out = Outcome(row, "rate_limited", "pending", error=clean(f"RateLimited: {e.reason}"), run_at=until)
        except TimeoutError:
            out = self._retry_or_fail(row, f"TimeoutError: timed out after {int(timeout_s * 1000)} ms", None)
        except Exception as e:
            tb = "".join(traceback.format_exception(e, limit=-3))
            out = self._retry_or_fail(row, f"{type(e).__name__}: {e}\n{tb}"[:MAX_ERROR_CHARS], None)
        out.token = token
        out.progress = self.progress.finish(jid)  # the last report, written with the outcome
        out.duration_ms = int((time.perf_counter() - t0) * 1000)
        log_outcome(row, out.outcome, out.error, out.duration_ms)
        return out

    def _retry_or_fail(self, row: dict[str, Any], error: str, delay_ms: int | None) -> Outcome:
        if row["attempts"] >= row["max_attempts"]:
            return failed(row, error)
        if delay_ms is None:
            # The claim returns the policy as text: only a retry pays for parsing it.
            delay_ms = backoff_delay_ms(orjson.loads(row["backoff"]), row["attempts"])
        delay_ms = min(delay_ms, MAX_DELAY_MS)
        run_at = self.clock.now() + timedelta(milliseconds=delay_ms)
        return Outcome(row, "retried", "scheduled", error=clean(error), run_at=run_at)


def _encode_result(result: Any) -> str:
    try:
        raw = orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, ValueError) as e:
        raise PermanentError(f"the handler's result is not JSON-serialisable: {e}") from e
    if NUL_ESCAPE.search(raw):
        raise PermanentError("the handler's result contains a NUL character, which Postgres cannot store")
    return raw.decode()


def clean(text: str) -> str:
    """Error text Postgres can store: no NUL, no lone surrogates (exception messages are
    arbitrary: they may quote the bytes that broke a parser)."""
    return text.replace("\x00", "\\x00").encode("utf-8", "replace").decode("utf-8")[:MAX_ERROR_CHARS]


def failed(row: dict[str, Any], error: str, token: str = "") -> Outcome:
    return Outcome(row, "failed", "failed", token=token, error=clean(error))


def released(row: dict[str, Any], token: str) -> Outcome:
    """Claimed but never started: the attempt is given back and the job goes to the front of
    its ready list."""
    return Outcome(row, "released", "pending", token=token)


def log_outcome(row: dict[str, Any], outcome: str, error: str | None, duration_ms: int) -> None:
    if joblog.isEnabledFor(logging.INFO):
        joblog.info(
            json.dumps(
                {
                    "event": "job",
                    "id": row["id"],
                    "type": row.get("type"),
                    "queue": row.get("queue"),
                    "attempt": row.get("attempts"),
                    "outcome": outcome,
                    "duration_ms": duration_ms,
                    "error": (error or "").split("\n", 1)[0][:500] or None,
                }
            )
        )
