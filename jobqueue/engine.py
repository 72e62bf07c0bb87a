"""`JobQueue`: the engine's front door. Enqueue, read, and the operator actions; the drain lives in
jobqueue/drain/ and reconcile in reconcile.py, both reached from here. It talks to Postgres only
through the store's named statements and to Redis only through the broker's operations."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from .broker import Broker, job_member
from .clock import Clock, iso
from .dependencies import GRAPH_CAP, Dependencies
from .drain import DrainReport, DrainState
from .enqueue import MAX_BATCH, Enqueuer
from .enqueue_graph import GraphEnqueuer
from .errors import ConfigurationError, InvalidJob, InvalidState, JobNotFound, RedisUnavailable
from .keys import Keys
from .models import STATUSES, JobRequest, JobView, QueueSettings
from .progress import live as live_progress
from .registry import Registry
from .schedules import Schedules
from .settings import Settings
from .store import Row, Store
from .transports import RedisPyTransport, RedisTransport, UpstashTransport
from .validation import check_id, check_queue_name, like_pattern, parse_model, search_id
from .waiting import MAX_WAIT_S, Waiters

log = logging.getLogger("jobqueue")


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
        self.dispatch = DrainState(registry.queues, registry.type_limits())
        self.enqueuer = Enqueuer(store, self.broker, registry, self.settings, self.clock, self.dispatch)
        self.schedules = Schedules(store, self.broker, registry, self.settings, self.clock, self.dispatch)
        # Callers waiting for jobs to end (GET /api/jobs/{id}?wait_s=); see waiting.py.
        self.waiters = Waiters(self.broker)
        self.deps = Dependencies(store, self.clock, self.enqueuer.dispatch, ended=self._cascaded)
        self.graph_enqueuer = GraphEnqueuer(self.enqueuer, self.deps)
        # Awaited after every drain with (engine, report): housekeeping, alerts. See drain/loop.py.
        self.drain_hooks: list[Callable[[JobQueue, DrainReport], Awaitable[None]]] = []

    async def _cascaded(self, job_ids: list[int]) -> None:
        """Dependents cancelled down a graph: their waiters answer, here and elsewhere."""
        self.waiters.notify(job_ids)
        # Without Redis, a waiter elsewhere answers at its timeout, with the view.
        with contextlib.suppress(RedisUnavailable):
            await self.broker.ended(job_ids, self.clock.ms())

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
    def kicker(self) -> Callable[[], Awaitable[None]] | None:
        """Awaited when an enqueue wins the kick's turn (web/kick.py installs QStash's)."""
        return self.enqueuer.kicker

    @kicker.setter
    def kicker(self, kicker: Callable[[], Awaitable[None]] | None) -> None:
        self.enqueuer.kicker = kicker

    @property
    def queues(self) -> set[str]:
        """Every queue this process knows of."""
        return self.dispatch.queues

    @property
    def redis(self) -> RedisTransport:
        """The transport, for its request counter (commands go through `broker`)."""
        return self.broker.redis

    async def close(self) -> None:
        await self.waiters.close()
        await self.enqueuer.close()
        await self.store.close()
        await self.broker.redis.close()

    # --- enqueue ----------------------------------------------------------------------------

    async def enqueue(
        self, req: JobRequest | dict[str, Any], *, connection: Any = None, session: Any = None
    ) -> tuple[Row, bool]:
        """Enqueue one job. Returns (row, created); created is False for a repeated idempotency key.
        `connection` (asyncpg) or `session` (SQLAlchemy/SQLModel AsyncSession): insert inside the
        application's own transaction (see enqueue.py)."""
        return (await self.enqueue_many([req], connection=connection, session=session, single=True))[0]

    async def enqueue_from_handler(self, req: JobRequest | dict[str, Any], *, created_by: int | None = None) -> JobView:
        """`ctx.enqueue` in a handler: a follow-up job, answered as the API shows it; it records
        the job whose handler made it (`created_by`)."""
        row, _ = (await self.enqueue_many([req], single=True, created_by=created_by))[0]
        return JobView.from_row(row)

    async def enqueue_many(
        self,
        reqs: Sequence[JobRequest | dict[str, Any]],
        *,
        connection: Any = None,
        session: Any = None,
        single: bool = False,
        created_by: int | None = None,
    ) -> list[tuple[Row, bool]]:
        """All-or-nothing: every request is validated before anything is written; then one INSERT
        and one Redis request for the lot. `connection`/`session` as for `enqueue`."""
        if len(reqs) > MAX_BATCH:
            raise InvalidJob(f"at most {MAX_BATCH} jobs per batch, got {len(reqs)}", field="jobs")
        prepared = self.enqueuer.prepare_many(reqs, single=single, created_by=created_by)
        if not prepared:
            return []
        if any("depends_on" in p for p in prepared):
            if session is not None or connection is not None:
                raise InvalidJob(
                    "depends_on is not available inside an application's transaction (connection=, session=)",
                    field="depends_on",
                )
            return await self.graph_enqueuer.insert(prepared, single=single)
        if session is not None:
            return await self.enqueuer.enqueue_in_session(session, prepared)
        return await self.enqueuer.insert(prepared, on=connection)

    async def flow(
        self, parent: JobRequest | dict[str, Any], children: Sequence[JobRequest | dict[str, Any]]
    ) -> tuple[Row, list[Row]]:
        """A parent that runs when all its children are done (BullMQ's FlowProducer, expressed as
        dependencies): one all-or-nothing batch, the children first and the parent depending on
        each of them (and on whatever its own `depends_on` names). Returns (parent, children)."""
        if not 1 <= len(children) < MAX_BATCH:
            raise InvalidJob(f"a flow has 1 to {MAX_BATCH - 1} children, got {len(children)}", field="children")
        top = parent.model_dump(exclude_none=True) if isinstance(parent, JobRequest) else dict(parent)
        top["depends_on"] = [*(top.get("depends_on") or ()), *({"index": i} for i in range(len(children)))]
        rows = await self.enqueue_many([*children, top])
        return rows[-1][0], [r for r, _ in rows[:-1]]

    def transaction(self, connection: Any) -> Any:
        """`async with jq.transaction(conn):` a transaction on the application's asyncpg
        connection; jobs enqueued in it with `connection=conn` are pushed once it commits."""
        return self.enqueuer.transaction(connection)

    # --- reads ------------------------------------------------------------------------------

    async def get(self, job_id: int) -> Row:
        row = await self.store.fetchrow("get_job", check_id(job_id))
        if row is None:
            raise JobNotFound(f"job {job_id} not found")
        return row

    async def get_with_graph(self, job_id: int) -> Row:
        """The job with the jobs it depends on and its dependents (`depends_on`, `dependents`:
        id, type, status), as its view and the dashboard show them."""
        row = await self.store.fetchrow("get_job_graph", check_id(job_id), GRAPH_CAP)
        if row is None:
            raise JobNotFound(f"job {job_id} not found")
        return row

    async def live(self, rows: list[Row]) -> list[Row]:
        """The rows with their running jobs' progress as reported so far (one Redis request, only
        when a row is processing); a finished job's last report is its own column."""
        running = [r for r in rows if r["status"] == "processing" and r.get("lease_token")]
        if not running:
            return rows
        try:
            got = await self.broker.progress([(r["id"], r["lease_token"]) for r in running])
        except RedisUnavailable:  # progress is a view nicety: the job itself is in Postgres
            return rows
        for r in running:
            value = live_progress(got.get(r["id"]), r["attempts"])
            if value is not None:
                r["progress"] = value
        return rows

    async def view(self, job_id: int, wait_s: float | None = None) -> Row:
        """A job as the API shows it: its graph (`depends_on`, `dependents`) and live progress;
        with `wait_s`, once it is terminal or after that many seconds (at most 25), whichever
        comes first (waiting.py)."""
        check_id(job_id)
        if wait_s is None:
            row = await self.get_with_graph(job_id)
        else:
            if not 0 < wait_s <= MAX_WAIT_S:
                raise InvalidJob(f"wait_s must be more than 0 and at most {MAX_WAIT_S}", field="wait_s")
            row = await self.waiters.wait(job_id, wait_s, lambda: self.get_with_graph(job_id))
        return (await self.live([row]))[0]

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        type: str | None = None,
        search: str | None = None,
        limit: int = 50,
        cursor: int | None = None,
        schedule_id: str | None = None,
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
            schedule_id,
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
        """Every queue in use: counts per status, the pause flag and the settings."""
        rows = await self.store.fetch("queue_counts")
        kept = [r for r in await self.store.fetch("queues") if r["paused"] or r["settings"]]
        out: dict[str, dict[str, Any]] = {}
        for q in sorted(self.queues | {r["queue"] for r in rows} | {r["name"] for r in kept}):
            out[q] = {"name": q, "paused": False, "counts": dict.fromkeys(STATUSES, 0), "settings": {}}
        for r in rows:
            out[r["queue"]]["counts"][r["status"]] = int(r["n"])
        for r in kept:
            out[r["name"]]["paused"] = bool(r["paused"])
            out[r["name"]]["settings"] = r["settings"]
        return out

    async def queue_settings(self, queue: str) -> QueueSettings:
        rows = [r for r in await self.store.fetch("queues") if r["name"] == queue]
        return QueueSettings.model_validate(rows[0]["settings"] if rows else {})

    async def set_queue_settings(self, queue: str, patch: dict[str, Any]) -> QueueSettings:
        """Change some of a queue's settings (the fields given; null clears one). Postgres first
        (the durable copy reconcile restores from), then the limits the claims read in Redis."""
        check_queue_name(queue)
        given = parse_model(QueueSettings, patch)  # a 422 naming the field; changes nothing
        current = await self.queue_settings(queue)
        merged = current.model_copy(update={k: getattr(given, k) for k in given.model_fields_set})
        doc = merged.model_dump_json(exclude_none=True)
        await self.store.fetch("queue_settings_put", queue, doc, self.clock.now())
        await self.broker.set_limits({queue: merged.limits()})
        self.dispatch.queues.add(queue)
        return merged

    # --- operator actions ---------------------------------------------------------------------

    async def cancel(self, job_id: int) -> Row:
        row = await self.store.fetchrow("cancel", check_id(job_id), self.clock.now())
        if row is None:
            current = await self.get(job_id)
            raise InvalidState(
                f"job {job_id} is {current['status']}; only waiting, pending or scheduled jobs can be cancelled"
            )
        callback = {k[3:]: row.pop(k) for k in list(row) if k.startswith("cb_")}
        row.pop("final_view", None)  # what the callback (if any) carries
        self.waiters.notify([job_id])
        # Its dependents under the `fail` policy are cancelled too, down the graph; the others
        # count it as finished. Always looked at: a dependent inserted while this committed
        # would not be in the row's has_dependents (resolve's fresh snapshot sees it).
        await self.deps.release([row["id"]])
        # A cancelled id left in Redis is dropped when popped; a delayed one would sit in its
        # sorted set until its due time, so remove it now (best effort: the claim still drops it).
        # The same request tells waiters elsewhere and indexes the completion callback, if any.
        try:
            await self.broker.cancelled(
                row["queue"], job_member(row), job_id, self.clock.ms(), [callback] if callback["id"] else []
            )
        except RedisUnavailable:
            if callback["id"]:
                self.dispatch.needs_reconcile = True  # the callback is in Postgres: reconcile pushes it
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
            await self.enqueuer.dispatch(rows)
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


def view(row: Row) -> dict[str, Any]:
    return JobView.from_row(row).model_dump(mode="json")
