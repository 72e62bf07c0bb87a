"""`JobQueue`: the engine's front door. Enqueue, read, and the operator actions; the drain lives in
jobqueue/drain/ and reconcile in reconcile.py, both reached from here. It talks to Postgres only
through the store's named statements and to Redis only through the broker's operations."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from .broker import Broker, job_member
from .clock import Clock, iso
from .drain import DrainReport, DrainState
from .errors import ConfigurationError, InvalidJob, InvalidState, JobNotFound, PayloadTooLarge, RedisUnavailable
from .keys import Keys
from .models import STATUSES, Backoff, JobRequest, JobView
from .registry import Registry
from .settings import Settings
from .store import Row, Store
from .transports import RedisPyTransport, RedisTransport, UpstashTransport
from .validation import check_id, encode_payload, like_pattern, parse_request, search_id

log = logging.getLogger("jobqueue")

MAX_BATCH = 1000
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BACKOFF = Backoff()


def transport_from_settings(s: Settings) -> RedisTransport:
    if s.upstash_url and s.upstash_token:
        return UpstashTransport(s.upstash_url, s.upstash_token, timeout_s=s.redis_timeout_s)
    if s.redis_url:
        return RedisPyTransport.from_url(s.redis_url, timeout_s=s.redis_timeout_s)
    raise ConfigurationError("no Redis configured: set UPSTASH_REDIS_REST_URL/TOKEN or REDIS_URL")


class JobQueue:
    def __init__(
        self,
        store: Store,
        redis: RedisTransport,
        registry: Registry,
        settings: Settings | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.store = store
        self.keys = Keys(self.settings.prefix)
        self.broker = Broker(redis, self.keys)
        self.registry = registry
        self.clock = clock or Clock()
        # What this process's drains share: the queues they know, their rotation, and whether a
        # push failed here (the drain owns it; see drain/state.py).
        self.dispatch = DrainState(registry.queues)
        # Called (awaited) when an enqueue wins the kick debounce; see web/kick.py.
        self.kicker: Callable[[], Awaitable[None]] | None = None
        # Awaited after every drain with (engine, report): housekeeping, alerts. See drain/loop.py.
        self.drain_hooks: list[Callable[[JobQueue, DrainReport], Awaitable[None]]] = []

    @classmethod
    def from_settings(
        cls, settings: Settings, registry: Registry, clock: Clock | None = None, redis: RedisTransport | None = None
    ) -> JobQueue:
        if not settings.database_url:
            raise ConfigurationError("DATABASE_URL is not set")
        store = Store(
            settings.database_url,
            pool_max=settings.pg_pool_max,
            timeout_s=settings.pg_timeout_s,
            statement_cache=settings.pg_statement_cache,
        )
        jq = cls(store, redis or transport_from_settings(settings), registry, settings, clock)
        from .alerts import alerts_hook
        from .housekeeping import housekeeping_hook

        # Retention and alerts ride on drains (neither costs anything on an idle one).
        jq.drain_hooks += [housekeeping_hook, alerts_hook]
        return jq

    @property
    def queues(self) -> set[str]:
        """Every queue this process knows of."""
        return self.dispatch.queues

    @property
    def redis(self) -> RedisTransport:
        """The transport, for its request counter (commands go through `broker`)."""
        return self.broker.redis

    async def close(self) -> None:
        await self.store.close()
        await self.broker.redis.close()

    # --- enqueue ----------------------------------------------------------------------------

    def _prepare(self, req: JobRequest | dict[str, Any], index: int | None = None) -> dict[str, Any]:
        try:
            if not isinstance(req, JobRequest):
                req = parse_request(req)
            jt = self.registry.get(req.type)
            jt.validate(req.payload)
        except InvalidJob as e:
            if index is None:
                raise
            raise InvalidJob(f"jobs[{index}]: {e.message}", field=f"jobs.{index}.{e.field}", index=index) from e
        payload = encode_payload(req.payload)
        if req.idempotency_key is not None and "\x00" in req.idempotency_key:
            raise InvalidJob("idempotency_key must not contain NUL characters", field="idempotency_key")
        if len(payload) > self.settings.max_payload_bytes:
            raise PayloadTooLarge(f"payload is {len(payload)} bytes; the limit is {self.settings.max_payload_bytes}")
        now = self.clock.now()
        if req.delay_ms:
            run_at = now + timedelta(milliseconds=req.delay_ms)
        elif req.run_at is not None:
            run_at = max(req.run_at, now)
        else:
            run_at = now
        backoff = req.backoff or jt.backoff or DEFAULT_BACKOFF
        # The columns both the INSERT document and the locally rebuilt row carry.
        columns = {
            "queue": req.queue or jt.queue,
            "type": req.type,
            "status": "scheduled" if run_at > now else "pending",
            "priority": req.priority,
            "max_attempts": req.max_attempts or jt.max_attempts or DEFAULT_MAX_ATTEMPTS,
            "backoff": backoff.model_dump(),
            "timeout_ms": req.timeout_ms or jt.timeout_ms or self.settings.default_timeout_ms,
            "idempotency_key": req.idempotency_key,
        }
        return {
            **columns,
            "columns": columns,
            "payload": req.payload,
            "payload_json": payload,
            "run_at": run_at,
            "created_at": now,
        }

    async def enqueue(self, req: JobRequest | dict[str, Any]) -> tuple[Row, bool]:
        """Enqueue one job. Returns (row, created); created is False for a repeated idempotency key."""
        return (await self._enqueue_prepared([self._prepare(req)]))[0]

    async def enqueue_from_handler(self, req: JobRequest | dict[str, Any]) -> JobView:
        """`ctx.enqueue` in a handler: a follow-up job, answered as the API shows it."""
        row, _ = await self.enqueue(req)
        return JobView.from_row(row)

    async def enqueue_many(self, reqs: Sequence[JobRequest | dict[str, Any]]) -> list[tuple[Row, bool]]:
        """All-or-nothing: every request is validated before anything is written; then one INSERT
        and one Redis request for the lot."""
        if len(reqs) > MAX_BATCH:
            raise InvalidJob(f"at most {MAX_BATCH} jobs per batch, got {len(reqs)}", field="jobs")
        prepared = [self._prepare(r, i) for i, r in enumerate(reqs)]
        return await self._enqueue_prepared(prepared) if prepared else []

    async def _enqueue_prepared(self, jobs: list[dict[str, Any]], *, again: bool = True) -> list[tuple[Row, bool]]:
        # One JSON document for the whole batch: asyncpg encodes one text parameter instead of
        # eleven arrays, and Postgres parses it in C. The payloads are embedded as already encoded.
        doc = orjson.dumps(
            [
                {
                    "n": i,
                    **j["columns"],
                    "payload": orjson.Fragment(j["payload_json"]),
                    "run_at_us": _us(j["run_at"]),
                    "created_us": _us(j["created_at"]),
                }
                for i, j in enumerate(jobs)
            ]
        ).decode()
        returned = sorted(await self.store.fetch("insert_jobs", doc), key=lambda r: r["id"])
        # Identity values follow the insert order, so the unkeyed ids match the unkeyed jobs in
        # order; keyed jobs match by key (the first job with a key wins within a batch).
        unkeyed = iter(r["id"] for r in returned if not r["idempotency_key"])
        key_ids = {(r["queue"], r["idempotency_key"]): r["id"] for r in returned if r["idempotency_key"]}
        # Rows are rebuilt from what was sent rather than returned by Postgres: decoding
        # RETURNING * was the largest cost of a bulk enqueue after the insert itself.
        inserted: list[Row] = []
        out: list[tuple[Row, bool] | None] = []
        missing: list[tuple[str, str]] = []
        for j in jobs:
            key = (j["queue"], j["idempotency_key"]) if j["idempotency_key"] else None
            if key is None:
                row = _new_row(j, next(unkeyed))
            elif key in key_ids:
                row = _new_row(j, key_ids.pop(key))
            else:
                missing.append(key)
                out.append(None)
                continue
            inserted.append(row)
            out.append((row, True))
        if missing:
            # The key existed (or repeated within the batch): answer the job that holds it. ON
            # CONFLICT waited for any concurrent inserter to commit, so the row is visible now.
            existing = await self.store.fetch("jobs_by_keys", [q for q, _ in missing], [k for _, k in missing])
            found = {(r["queue"], r["idempotency_key"]): (r, False) for r in existing}
            vanished = [j for i, j in enumerate(jobs) if out[i] is None and _key(j) not in found]
            if vanished and again:
                # The job holding the key was deleted (retention, purge) between our INSERT and
                # this read: the key is free again, so insert once more.
                for j, got in zip(vanished, await self._enqueue_prepared(vanished, again=False), strict=True):
                    found[_key(j)] = got
            for i, j in enumerate(jobs):
                if out[i] is None:
                    if _key(j) not in found:
                        raise InvalidState(f"idempotency key {j['idempotency_key']!r} is held by a job being deleted")
                    out[i] = found[_key(j)]
        if inserted:
            await self._dispatch(inserted)
        return [o for o in out if o is not None]

    async def _dispatch(self, rows: list[Row]) -> None:
        """Index new rows in Redis. A failure here loses nothing: the rows are in Postgres and
        the next reconcile indexes them (in this process, the very next drain)."""
        want_kick = self.kicker is not None and any(r["status"] == "pending" for r in rows)
        kick = (self.clock.ms(), self.settings.kick_interval_ms) if want_kick else None
        try:
            won = await self.broker.push(rows, kick=kick)
        except RedisUnavailable as e:
            self.dispatch.needs_reconcile = True
            log.warning("enqueue: jobs stored but not indexed in Redis (reconcile will): %s", e.message)
            return
        if won and self.kicker is not None:
            try:
                await self.kicker()
            except Exception as e:  # a kick is an optimisation; cron still drains
                log.warning("kick failed: %s", e)

    # --- reads ------------------------------------------------------------------------------

    async def get(self, job_id: int) -> Row:
        row = await self.store.fetchrow("get_job", check_id(job_id))
        if row is None:
            raise JobNotFound(f"job {job_id} not found")
        return row

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        type: str | None = None,
        search: str | None = None,
        limit: int = 50,
        cursor: int | None = None,
    ) -> tuple[list[Row], int | None]:
        """Newest first, keyset-paged on id. `cursor` is the last id of the previous page.
        `search` matches an id, an idempotency key or a type exactly, or text in the payload."""
        if status is not None and status not in STATUSES:
            raise InvalidJob(f"unknown status {status!r}", field="status")
        if not 1 <= limit <= 200:
            raise InvalidJob("limit must be between 1 and 200", field="limit")
        search = search or None
        args: list[Any] = [
            queue,
            type,
            cursor,
            search,
            search_id(search) if search else None,
            like_pattern(search) if search else None,
            limit + 1,
        ]
        if status is None:
            rows = await self.store.fetch("list_jobs", *args)
        else:
            rows = await self.store.fetch("list_jobs_by_status", *args, status)
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1]["id"] if more and rows else None)

    async def hourly_outcomes(self, since: datetime, until: datetime) -> list[Row]:
        """Completed and failed jobs per queue and whole hour before `until` (the dashboard's charts)."""
        return await self.store.fetch("hourly_outcomes", since, until)

    async def failed_count(
        self, queue: str | None, type: str | None, finished_before: datetime | None, cap: int
    ) -> int:
        """Dead-lettered jobs matching the filter, counted up to `cap`."""
        rows = await self.store.fetch("failed_count", queue, type, finished_before, cap)
        return int(rows[0]["n"])

    async def queue_counts(self) -> dict[str, dict[str, Any]]:
        rows = await self.store.fetch("queue_counts")
        paused_rows = await self.store.fetch("queues")
        out: dict[str, dict[str, Any]] = {}
        for q in sorted(self.queues | {r["queue"] for r in rows} | {r["name"] for r in paused_rows}):
            out[q] = {"name": q, "paused": False, "counts": dict.fromkeys(STATUSES, 0)}
        for r in rows:
            out[r["queue"]]["counts"][r["status"]] = int(r["n"])
        for r in paused_rows:
            out[r["name"]]["paused"] = bool(r["paused"])
        return out

    # --- operator actions ---------------------------------------------------------------------

    async def cancel(self, job_id: int) -> Row:
        row = await self.store.fetchrow("cancel", check_id(job_id), self.clock.now())
        if row is None:
            current = await self.get(job_id)
            raise InvalidState(f"job {job_id} is {current['status']}; only pending or scheduled jobs can be cancelled")
        # A cancelled id left in Redis is dropped when popped; a delayed one would sit in its
        # sorted set until its due time, so remove it now (best effort: the claim still drops it).
        with contextlib.suppress(RedisUnavailable):
            await self.broker.forget_delayed(row["queue"], job_member(row))
        return row

    async def retry(self, job_id: int) -> Row:
        rows = await self._rerun([check_id(job_id)])
        if not rows:
            current = await self.get(job_id)
            raise InvalidState(f"job {job_id} is {current['status']}; only failed or cancelled jobs can be retried")
        return rows[0]

    async def _rerun(self, ids: list[int]) -> list[Row]:
        now = self.clock.now()
        rows = await self.store.fetch("rerun", ids, now, iso(now))
        if rows:
            await self._dispatch(rows)
        return rows

    async def replay(self, ids: list[int] | None = None, *, queue: str | None = None, type: str | None = None) -> int:
        """Re-run dead-lettered jobs, by ids or by filter, in chunks of 1000."""
        if ids is not None:
            total = 0
            for i in range(0, len(ids), MAX_BATCH):
                chunk = [int(x) for x in ids[i : i + MAX_BATCH] if 0 < int(x) < 2**63]
                total += len(await self._rerun(chunk)) if chunk else 0
            return total
        total, after = 0, 0
        while True:
            rows = await self.store.fetch("failed_ids_by_filter", queue, type, after, MAX_BATCH)
            if not rows:
                return total
            after = rows[-1]["id"]
            total += len(await self._rerun([r["id"] for r in rows]))

    async def purge(self, older_than_days: float) -> int:
        if older_than_days < 0:
            raise InvalidJob("older_than_days must be >= 0", field="older_than_days")
        cutoff = self.clock.now() - timedelta(days=older_than_days)
        total = 0
        while True:
            n = len(await self.store.fetch("purge_failed", cutoff, 5000))
            total += n
            if n < 5000:
                return total

    async def set_paused(self, queue: str, paused: bool) -> None:
        # Postgres first: it is the durable copy that reconcile restores Redis from.
        await self.store.fetch("set_paused", queue, paused, self.clock.now())
        await self.broker.set_paused(queue, paused)
        self.dispatch.queues.add(queue)

    # --- drain and reconcile (delegated) ------------------------------------------------------

    async def drain(self, budget_s: float | None = None, **kw: Any) -> DrainReport:
        from .drain import drain

        return await drain(self, self.settings.budget_s if budget_s is None else budget_s, **kw)

    async def reconcile(self, *, full: bool = False, fresh_s: float | None = None) -> dict[str, int]:
        from .reconcile import reconcile

        return await reconcile(self.store, self.broker, self.dispatch, self.clock, full=full, fresh_s=fresh_s)

    async def ping(self) -> None:
        """Both dependencies answer (the health route)."""
        await self.store.ping()
        await self.broker.ping()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _key(j: dict[str, Any]) -> tuple[str, str]:
    return (j["queue"], j["idempotency_key"])


def _us(dt: datetime) -> int:
    """Microseconds since the epoch, exactly (a float timestamp can be 1 us off)."""
    d = dt - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _new_row(j: dict[str, Any], job_id: int) -> Row:
    """The row Postgres now holds for a job just inserted (what RETURNING * would have said)."""
    return {
        "id": job_id,
        **j["columns"],
        "payload": j["payload"],
        "attempts": 0,
        "run_at": j["run_at"],
        "lease_token": None,
        "lease_expires_at": None,
        "result": None,
        "error": None,
        "history": [],
        "created_at": j["created_at"],
        "started_at": None,
        "finished_at": None,
    }


def view(row: Row) -> dict[str, Any]:
    return JobView.from_row(row).model_dump(mode="json")
