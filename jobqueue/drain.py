"""The drain: what /api/workers, `jobqueue drain`, `jobqueue worker` and the tests all run.

Per batch: claim (one Redis request: promote due delayed, recover expired leases, pop up to N
across priorities, record leases) -> grant (one Postgres statement: count the attempt, set the
lease; drop what is gone, cancelled or done) -> run the handlers concurrently, each under its
timeout -> record every outcome (one Postgres statement) -> acknowledge (one Redis pipeline:
remove leases, retries to `delayed`, releases back to ready). Repeat while work remains and the
budget allows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from .broker import Ack, Claimed
from .clock import iso, to_ms
from .errors import JobQueueError, PermanentError, PostgresUnavailable, RetryAfter
from .registry import JobContext
from .retry import MAX_DELAY_MS, backoff_delay_ms
from .validation import NUL_ESCAPE

if TYPE_CHECKING:
    from .engine import JobQueue

log = logging.getLogger("jobqueue.drain")
joblog = logging.getLogger("jobqueue.jobs")

MIN_HEADROOM_S = 0.05  # do not claim a new batch with less than this left
MAX_ERROR_CHARS = 4000


@dataclass
class DrainReport:
    claimed: int = 0
    completed: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    recovered: int = 0
    duration_ms: int = 0
    more: bool = False
    batches: int = 0
    dropped: int = 0
    reconciled: int = 0
    # Jobs that reached `failed` in this drain (id, type, queue, error): for alerts, not the response.
    dead: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("dead")
        return d


@dataclass
class Outcome:
    row: dict[str, Any]
    outcome: str  # completed | retried | failed | released
    status: str
    result: str | None = None
    error: str | None = None
    run_at: Any = None
    duration_ms: int = 0


async def drain(
    jq: JobQueue,
    budget_s: float,
    *,
    max_jobs: int | None = None,
    stop: asyncio.Event | None = None,
    batch_size: int | None = None,
) -> DrainReport:
    loop = asyncio.get_running_loop()
    started = loop.time()
    run = _Drain(jq, deadline=started + budget_s, max_jobs=max_jobs, stop=stop, batch=batch_size)

    if jq.needs_reconcile:
        # A push failed in this process: index what Postgres has and Redis lacks, the rows just
        # written included (they are why we are here; a duplicate of a racing push is harmless).
        jq.needs_reconcile = False
        run.report.reconciled += (await jq.reconcile(full=False, fresh_s=0))["restored"]

    try:
        await run.lane(first=True)
    except BaseException:
        # The other lanes must not run on after this drain has failed (their jobs are left
        # leased, as after a crash, and come back when the leases expire).
        for lane in run.lanes:
            lane.cancel()
        await asyncio.gather(*run.lanes, return_exceptions=True)
        raise
    if run.lanes:
        await asyncio.gather(*run.lanes)
    report = run.report
    for hook in jq.drain_hooks:
        # Housekeeping and alerts ride on drains; their failures never fail the drain.
        try:
            await hook(jq, report)
        except Exception:
            log.exception("drain hook %s failed", getattr(hook, "__name__", hook))
    report.duration_ms = int((loop.time() - started) * 1000)
    log.info(json.dumps({"event": "drain", **report.as_dict()}))
    return report


class _Drain:
    """One drain's shared state. Work runs in lanes: each lane loops claim -> grant -> run ->
    record -> ack. The first lane starts the others only once a claim comes back full, so an idle
    or light drain stays one request per look, while a backlog overlaps one lane's Postgres and
    Redis waits with another lane's handlers (DESIGN.md's O(1) per batch holds per lane)."""

    def __init__(
        self, jq: JobQueue, *, deadline: float, max_jobs: int | None, stop: asyncio.Event | None, batch: int | None
    ) -> None:
        self.jq = jq
        self.deadline = deadline
        self.stop = stop
        self.batch = min(batch or jq.settings.batch_size, 1000)
        self.unclaimed = max_jobs  # jobs this drain may still claim (None: no cap)
        self.report = DrainReport()
        self.lanes: list[asyncio.Task[None]] = []
        self.sem = asyncio.Semaphore(jq.settings.concurrency)

    def _reserve(self) -> int:
        if self.unclaimed is None:
            return self.batch
        n = min(self.batch, self.unclaimed)
        self.unclaimed -= n
        return n

    def _give_back(self, n: int) -> None:
        if self.unclaimed is not None:
            self.unclaimed += n

    async def lane(self, *, first: bool = False) -> None:
        jq, s, report = self.jq, self.jq.settings, self.report
        loop = asyncio.get_running_loop()
        while True:
            left = self.deadline - loop.time()
            if left < MIN_HEADROOM_S or (self.stop is not None and self.stop.is_set()):
                report.more = True
                return
            limit = self._reserve()
            if limit <= 0:
                report.more = True
                return
            token = secrets.token_hex(6)
            now_ms = jq.clock.ms()
            lease_deadline_ms = now_ms + int(left * 1000) + s.lease_grace_ms
            try:
                claimed = await jq.broker.claim(
                    jq.queue_order(), limit, now_ms, lease_deadline_ms, token, s.reconcile_interval_s * 1000
                )
            finally:
                self._give_back(limit)
            self._give_back(-len(claimed.members))
            restored = 0
            known_before = len(jq.queues)
            if claimed.epoch_missing or claimed.reconcile_due:
                # Redis lost its data (no epoch marker), or the periodic check is due.
                result = await jq.reconcile(full=claimed.epoch_missing)
                if claimed.epoch_missing and result["skipped"]:
                    # Another drain holds the lock and is rebuilding the index: leave the work
                    # to it rather than spin on claims that take nothing until it is done.
                    return
                restored = result["restored"]
                report.reconciled += restored
            jq.queues |= set(claimed.known_queues)  # reconcile may have found some too
            if not claimed.members:
                if len(jq.queues) > known_before or claimed.epoch_missing or restored:
                    continue  # new queues, a rebuilt index or restored jobs: look again at once
                return
            if first and not self.lanes and len(claimed.members) >= limit:
                self.lanes = [asyncio.create_task(self.lane()) for _ in range(s.drain_lanes - 1)]
            report.batches += 1
            await _run_batch(jq, claimed, token, self.deadline, report, self.stop, self.sem)


def _dead(row: dict[str, Any], error: str | None) -> dict[str, Any]:
    return {"id": row["id"], "type": row.get("type"), "queue": row.get("queue"), "error": (error or "")[:500]}


async def _run_batch(
    jq: JobQueue,
    claimed: Claimed,
    token: str,
    deadline: float,
    report: DrainReport,
    stop: asyncio.Event | None,
    sem: asyncio.Semaphore,
) -> None:
    s = jq.settings
    now = jq.clock.now()
    ack = Ack(jq.keys)
    ids = list(claimed.members)
    # Postgres failing here leaves the Redis leases alone: whether the grant committed is unknown
    # (a lost reply), and either way the lease entries bring the jobs back when they expire, while
    # giving the members back at once would strand a job whose grant did commit.
    rows = await jq.store.fetch(
        "claim",
        ids,
        now,
        token,
        now + timedelta(seconds=max(0.0, deadline - asyncio.get_running_loop().time())),
        s.lease_grace_ms,
        iso(now),
    )
    granted: set[int] = set()
    to_run: list[dict[str, Any]] = []
    for r in rows:
        jid = r["id"]
        granted.add(jid)
        queue, member = claimed.members[jid]
        if r["kind"] == "run":
            to_run.append(r)
            report.claimed += 1
            if r["recovered"]:
                report.recovered += 1
        elif r["kind"] == "dead":
            ack.done(queue, member, token)
            report.failed += 1
            report.recovered += 1
            report.dead.append(_dead(r, r.get("error")))
            _log_outcome(r, "failed", r.get("error"), 0)
        else:  # defer: a scheduled row that is not due (restored early): back to delayed
            ack.retry(queue, member, token, to_ms(r["run_at"]))
    for jid in set(ids) - granted:
        queue, member = claimed.members[jid]
        ack.done(queue, member, token)
        report.dropped += 1

    # Start in pop order (priority, then FIFO); Postgres returns the rows in no particular order.
    order = {jid: i for i, jid in enumerate(claimed.members)}
    to_run.sort(key=lambda r: order[r["id"]])
    outcomes = list(await asyncio.gather(*(_run_one(jq, r, sem, deadline, stop) for r in to_run)))

    if outcomes:
        written = await _record(jq, outcomes, token)
        holders = {r["id"] for r in written}
        for o in outcomes:
            jid = o.row["id"]
            queue, member = claimed.members[jid]
            if jid not in holders:
                # Our lease was taken over (we ran past it): the new holder owns the job now.
                ack.done(queue, member, token)
                continue
            setattr(report, o.outcome, getattr(report, o.outcome) + 1)
            if o.outcome == "failed":
                report.dead.append(_dead(o.row, o.error))
            if o.outcome == "retried":
                ack.retry(queue, member, token, to_ms(o.run_at))
            elif o.outcome == "released":
                ack.release(queue, member, token, o.row["priority"])
            else:
                ack.done(queue, member, token)
    await jq.broker.ack(ack)


async def _record(jq: JobQueue, outcomes: list[Outcome], token: str) -> list[dict[str, Any]]:
    """Write every outcome in one statement. Should Postgres refuse a value in it (text it cannot
    store slipped past the checks in _run_one), write them one by one instead, so one poisoned
    outcome fails its own job rather than the batch (whose jobs would all run again)."""
    fin = jq.clock.now()

    async def write(batch: list[Outcome]) -> list[dict[str, Any]]:
        return await jq.store.fetch(
            "finish",
            [o.row["id"] for o in batch],
            [o.status for o in batch],
            [o.result for o in batch],
            [o.error for o in batch],
            [o.run_at for o in batch],
            [o.outcome for o in batch],
            [o.duration_ms for o in batch],
            token,
            fin,
            iso(fin),
        )

    try:
        return await write(outcomes)
    except PostgresUnavailable:
        raise
    except asyncpg.PostgresError as e:
        log.error("recording a batch's outcomes failed (%s); recording them one by one", type(e).__name__)
    written: list[dict[str, Any]] = []
    for o in outcomes:
        try:
            written += await write([o])
        except PostgresUnavailable:
            raise
        except asyncpg.PostgresError as e:
            failed = _failed(o.row, f"the outcome could not be stored: {type(e).__name__}")
            failed.duration_ms = o.duration_ms
            written += await write([failed])
            o.outcome, o.status, o.error, o.result, o.run_at = "failed", "failed", failed.error, None, None
    return written


async def _run_one(
    jq: JobQueue, row: dict[str, Any], sem: asyncio.Semaphore, deadline: float, stop: asyncio.Event | None
) -> Outcome:
    loop = asyncio.get_running_loop()
    async with sem:
        remaining = deadline - loop.time()
        if remaining <= MIN_HEADROOM_S or (stop is not None and stop.is_set()):
            # Claimed but never started: give it back now rather than let the lease run out.
            return Outcome(row, "released", "pending")
        t0 = time.perf_counter()
        timeout_s = min(row["timeout_ms"] / 1000, remaining)
        try:
            jt = jq.registry.get(row["type"])
            payload = jt.validate(row["payload"])
            ctx = JobContext(
                job_id=row["id"],
                type=row["type"],
                queue=row["queue"],
                attempt=row["attempts"],
                max_attempts=row["max_attempts"],
                deadline=loop.time() + timeout_s,
                enqueue=lambda req: jq.enqueue(req),
                settings=jq.settings,
            )
            # asyncio.timeout, not wait_for: wait_for wraps every job in one more task.
            async with asyncio.timeout(timeout_s):
                result = await jt.handler(payload, ctx)
            try:
                raw = orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS)
            except (TypeError, ValueError) as e:
                raise PermanentError(f"the handler's result is not JSON-serialisable: {e}") from e
            if NUL_ESCAPE.search(raw):
                raise PermanentError("the handler's result contains a NUL character, which Postgres cannot store")
            encoded = raw.decode()
            out = Outcome(row, "completed", "completed", result=encoded)
        except PermanentError as e:
            out = _failed(row, f"PermanentError: {e}")
        except JobQueueError as e:  # unknown type or a payload that no longer validates
            out = _failed(row, f"{type(e).__name__}: {e.message}")
        except RetryAfter as e:
            out = _retry_or_fail(jq, row, f"RetryAfter: {e.reason}", e.delay_ms)
        except TimeoutError:
            out = _retry_or_fail(jq, row, f"TimeoutError: timed out after {int(timeout_s * 1000)} ms", None)
        except Exception as e:
            tb = "".join(traceback.format_exception(e, limit=-3))
            out = _retry_or_fail(jq, row, f"{type(e).__name__}: {e}\n{tb}"[:MAX_ERROR_CHARS], None)
        out.duration_ms = int((time.perf_counter() - t0) * 1000)
        _log_outcome(row, out.outcome, out.error, out.duration_ms)
        return out


def _clean(text: str) -> str:
    """Error text Postgres can store: no NUL, no lone surrogates (exception messages are
    arbitrary: they may quote the bytes that broke a parser)."""
    return text.replace("\x00", "\\x00").encode("utf-8", "replace").decode("utf-8")[:MAX_ERROR_CHARS]


def _failed(row: dict[str, Any], error: str) -> Outcome:
    return Outcome(row, "failed", "failed", error=_clean(error))


def _retry_or_fail(jq: JobQueue, row: dict[str, Any], error: str, delay_ms: int | None) -> Outcome:
    if row["attempts"] >= row["max_attempts"]:
        return _failed(row, error)
    if delay_ms is None:
        # The claim returns the policy as text: only a retry pays for parsing it.
        delay_ms = backoff_delay_ms(orjson.loads(row["backoff"]), row["attempts"])
    delay_ms = min(delay_ms, MAX_DELAY_MS)
    return Outcome(
        row, "retried", "scheduled", error=_clean(error), run_at=jq.clock.now() + timedelta(milliseconds=delay_ms)
    )


def _log_outcome(row: dict[str, Any], outcome: str, error: str | None, duration_ms: int) -> None:
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
