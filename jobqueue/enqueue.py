"""Enqueue: validate, insert (one statement per call), index in Redis (one request per call).

Two ways in:
- on the queue's own connections (`JobQueue.enqueue`): the row commits at once and is pushed.
- inside the application's own transaction (`connection=` an asyncpg connection, `session=` a
  SQLAlchemy/SQLModel AsyncSession): the row commits or rolls back with the application's data,
  so a job exists exactly when what it is about exists. Redis hears of it only after the commit:
  the rows are inserted `dispatched = false` and pushed by whoever flips that flag (the
  after-commit push, or the dispatch sweep), never before the commit, where a drain would find no
  row and drop the entry. After commit means: at the end of `JobQueue.transaction(conn)`, on the
  session's `after_commit` event, or at once on a connection with no transaction open. A process
  that dies between the commit and the push, or an application that commits on its own, leaves
  the job to the dispatch sweep (reconcile.sweep): claims run it every second for two minutes
  after such an enqueue, and every periodic reconcile runs it. A rolled-back transaction leaves
  no row, and nothing in Redis.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from .broker import Broker
from .clock import Clock
from .errors import InvalidJob, InvalidState, PayloadTooLarge, RedisUnavailable
from .keys import limiter_suffix, type_tag
from .models import Backoff, JobRequest
from .registry import JobType, Registry
from .settings import Settings
from .state import DrainState
from .store import Row, Store
from .validation import encode_payload, parse_request

log = logging.getLogger("jobqueue")

MAX_BATCH = 1000
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BACKOFF = Backoff()
DEFAULT_BACKOFF_JSON = DEFAULT_BACKOFF.model_dump_json()
CALLBACK_TYPE = "webhook.deliver"  # the job type that delivers completion callbacks
# One validator for a whole batch of requests (one call into pydantic-core, not one per job).
_REQUESTS: TypeAdapter[list[JobRequest]] = TypeAdapter(list[JobRequest])
SESSION_PENDING = "jobqueue.pending"  # session.info key: rows to push after the session commits

# The transaction opened by `Enqueuer.transaction`: its connection and the rows to push after it.
_open_tx: ContextVar[tuple[Any, list[Row]] | None] = ContextVar("jobqueue_transaction", default=None)

Kicker = Callable[[], Awaitable[None]]


class Enqueuer:
    def __init__(
        self, store: Store, broker: Broker, registry: Registry, settings: Settings, clock: Clock, state: DrainState
    ) -> None:
        self.store = store
        self.broker = broker
        self.registry = registry
        self.settings = settings
        self.clock = clock
        self.state = state
        # Awaited when an enqueue wins the kick's turn; see web/kick.py.
        self.kicker: Kicker | None = None
        self._background: set[asyncio.Task[None]] = set()

    def prepare_many(
        self, reqs: Sequence[JobRequest | dict[str, Any]], *, single: bool = False, created_by: int | None = None
    ) -> list[dict[str, Any]]:
        """Validate a whole call's requests (all-or-nothing) and prepare them for `insert`. The
        requests go through one TypeAdapter call rather than one model_validate each, the clock is
        read once and what depends only on the type is worked out once per call; on any invalid
        request the per-request path runs instead, so the 422 names the first bad index exactly
        as it always did."""
        now = self.clock.now()
        raw = [r for r in reqs if not isinstance(r, JobRequest)]
        if raw:
            try:
                parsed = iter(_REQUESTS.validate_python(raw))
            except ValidationError:
                return [
                    self.prepare(r, None if single else i, now=now, created_by=created_by) for i, r in enumerate(reqs)
                ]
            reqs = [r if isinstance(r, JobRequest) else next(parsed) for r in reqs]
        per_type: dict[str, _TypeFacts] = {}
        return [
            self.prepare(r, None if single else i, now=now, per_type=per_type, created_by=created_by)
            for i, r in enumerate(reqs)
        ]

    def prepare(
        self,
        req: JobRequest | dict[str, Any],
        index: int | None = None,
        *,
        now: datetime | None = None,
        per_type: dict[str, _TypeFacts] | None = None,
        created_by: int | None = None,
    ) -> dict[str, Any]:
        """One request, validated, as `insert` takes it. `per_type`: a call's cache of what
        depends only on the job type (see prepare_many); `created_by`: the job whose handler
        enqueues this one."""
        try:
            if not isinstance(req, JobRequest):
                req = parse_request(req)
            facts = per_type.get(req.type) if per_type is not None else None
            if facts is None:
                facts = _TypeFacts(self.registry.get(req.type))
                if per_type is not None:
                    per_type[req.type] = facts
            jt = facts.jt
            validated = jt.validate(req.payload)
            group = req.group if req.group is not None else jt.group_of(validated)
            callback = self._callback(req.callback_url) if req.callback_url is not None else None
        except InvalidJob as e:
            if index is None:
                raise
            raise InvalidJob(f"jobs[{index}]: {e.message}", field=f"jobs.{index}.{e.field}", index=index) from e
        payload = encode_payload(req.payload)
        if req.idempotency_key is not None and "\x00" in req.idempotency_key:
            raise InvalidJob("idempotency_key must not contain NUL characters", field="idempotency_key")
        if len(payload) > self.settings.max_payload_bytes:
            raise PayloadTooLarge(f"payload is {len(payload)} bytes; the limit is {self.settings.max_payload_bytes}")
        if now is None:
            now = self.clock.now()
        if req.delay_ms:
            run_at = now + timedelta(milliseconds=req.delay_ms)
        elif req.run_at is not None:
            run_at = max(req.run_at, now)
        else:
            run_at = now
        # The columns both the INSERT document and the locally rebuilt row carry. An option that
        # neither the request nor the type sets is None here: the INSERT takes the queue's
        # default (queues.settings), else the engine's, and returns what it took.
        columns = {
            "queue": req.queue or jt.queue,
            "type": req.type,
            "status": "scheduled" if run_at > now else "pending",
            "priority": req.priority,
            "max_attempts": req.max_attempts or jt.max_attempts,
            "backoff": req.backoff.model_dump() if req.backoff is not None else facts.backoff(),
            "timeout_ms": req.timeout_ms or jt.timeout_ms,
            "idempotency_key": req.idempotency_key,
            "group_key": group,
            "limiter": facts.limiter(group),
        }
        # Only a job that has them carries these keys: the others keep insert_jobs' document as it was.
        if callback is not None:
            columns["callback"] = callback
        if created_by is not None:
            columns["created_by"] = created_by
        prepared: dict[str, Any] = {
            **columns,
            "columns": columns,
            "payload": req.payload,
            "payload_json": payload,
            "run_at": run_at,
            "created_at": now,
        }
        if req.depends_on:
            # Outside `columns`: a job without dependencies takes insert_jobs, unchanged.
            prepared["depends_on"] = req.depends_on
            prepared["policy"] = req.on_dependency_failure or "fail"
        return prepared

    def _callback(self, url: str) -> dict[str, Any]:
        """A completion callback, resolved now into the webhook.deliver job the outcome's statement
        will insert (queue, retry policy, group and flow-control suffix), so that statement needs
        nothing but the row. The URL is checked by webhook.deliver's own payload model: a callback
        that was accepted here cannot fail validation when it is sent."""
        if CALLBACK_TYPE not in self.registry:
            raise InvalidJob(
                f"callback_url needs the {CALLBACK_TYPE} job type, which this registry lacks", field="callback_url"
            )
        jt = self.registry.get(CALLBACK_TYPE)
        try:
            group = jt.group_of(jt.validate({"url": url}))
        except InvalidJob as e:
            raise InvalidJob(f"callback_url: {e.message.split(': ', 2)[-1]}", field="callback_url") from None
        backoff = jt.backoff or DEFAULT_BACKOFF
        return {
            "url": url,
            "queue": jt.queue,
            "max_attempts": jt.max_attempts or DEFAULT_MAX_ATTEMPTS,
            "backoff": backoff.model_dump(),
            "timeout_ms": jt.timeout_ms or self.settings.default_timeout_ms,
            "group_key": group,
            "limiter": limiter_suffix(type_tag(jt.name) if jt.limited else "", group),
        }

    async def insert(self, jobs: list[dict[str, Any]], *, on: Any = None, again: bool = True) -> list[tuple[Row, bool]]:
        """Insert prepared jobs (one statement) and index the new ones in Redis (one request).
        `on`: an application's asyncpg connection; the rows are then part of its transaction and
        indexed only once that commits (see `_after_insert`)."""
        # One JSON document for the whole batch: asyncpg encodes one text parameter instead of
        # thirteen arrays (its array encoder costs several isinstance checks per element, more
        # client CPU than this document), and Postgres parses it in C. The payloads are
        # embedded as already encoded; null columns are left out (a smaller document to parse).
        stamps = _Stamps()
        rows = []
        for i, j in enumerate(jobs):
            row = {k: v for k, v in j["columns"].items() if v is not None}
            row["n"] = i
            row["payload"] = orjson.Fragment(j["payload_json"])
            row["run_at_us"] = stamps.us(j["run_at"])
            row["created_us"] = stamps.us(j["created_at"])
            rows.append(row)
        doc = orjson.dumps(rows).decode()
        returned = sorted(
            await self._fetch(on, "insert_jobs", doc, on is None, *self._defaults()), key=lambda r: r["id"]
        )
        resolved = {r["id"]: r for r in returned}
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
                row = _new_row(j, next(unkeyed), resolved)
            elif key in key_ids:
                row = _new_row(j, key_ids.pop(key), resolved)
            else:
                missing.append(key)
                out.append(None)
                continue
            inserted.append(row)
            out.append((row, True))
        if missing:
            # The key existed (or repeated within the batch): answer the job that holds it. ON
            # CONFLICT waited for any concurrent inserter to commit, so the row is visible now.
            existing = await self._fetch(on, "jobs_by_keys", [q for q, _ in missing], [k for _, k in missing])
            found = {(r["queue"], r["idempotency_key"]): (_decoded(r), False) for r in existing}
            vanished = [j for i, j in enumerate(jobs) if out[i] is None and _key(j) not in found]
            if vanished and again:
                # The job holding the key was deleted (retention, purge) between our INSERT and
                # this read: the key is free again, so insert once more.
                for j, got in zip(vanished, await self.insert(vanished, on=on, again=False), strict=True):
                    found[_key(j)] = got
            for i, j in enumerate(jobs):
                if out[i] is None:
                    if _key(j) not in found:
                        raise InvalidState(f"idempotency key {j['idempotency_key']!r} is held by a job being deleted")
                    out[i] = found[_key(j)]
        if inserted:
            if on is None:
                await self.dispatch(inserted)
            else:
                await self._after_insert(on, inserted)
        return [o for o in out if o is not None]

    async def dispatch(self, rows: list[Row]) -> None:
        """Index new rows in Redis. A failure here loses nothing: the rows are in Postgres and
        the next reconcile indexes them (in this process, the very next drain)."""
        want_kick = self.kicker is not None and any(r["status"] == "pending" for r in rows)
        kick = (self.clock.ms(), self.settings.kick_interval_ms) if want_kick else None
        try:
            won = await self.broker.push(rows, kick=kick)
        except RedisUnavailable as e:
            self.state.needs_reconcile = True
            log.warning("enqueue: jobs stored but not indexed in Redis (reconcile will): %s", e.message)
            return
        if won and self.kicker is not None:
            try:
                await self.kicker()
            except Exception as e:  # a kick is an optimisation; cron still drains
                log.warning("kick failed: %s", e)

    def _defaults(self) -> tuple[int, int, str]:
        """The engine's defaults, for options neither request, type nor queue sets."""
        return DEFAULT_MAX_ATTEMPTS, self.settings.default_timeout_ms, DEFAULT_BACKOFF_JSON

    async def dispatch_committed(self, rows: list[Row]) -> None:
        """Push committed jobs of an application transaction, if the sweep has not already."""
        taken = await self.store.fetch("dispatch_jobs", [r["id"] for r in rows])
        if taken:
            await self.dispatch(taken)

    async def _fetch(self, on: Any, name: str, *args: Any) -> list[Row]:
        if on is None:
            return await self.store.fetch(name, *args)
        return await self.store.fetch_on(on, name, *args)

    async def _after_insert(self, conn: Any, rows: list[Row]) -> None:
        tx = _open_tx.get()
        if tx is not None and tx[0] is conn:
            tx[1].extend(rows)  # pushed when `transaction()` commits
        elif not conn.is_in_transaction():
            await self.dispatch_committed(rows)  # autocommit: the rows are committed already
        else:
            # A transaction we cannot see the end of (the caller's own, or a session's: its
            # after_commit pushes): arm the sweep in case nothing else ever does.
            await self._arm_sweep()

    async def _arm_sweep(self) -> None:
        try:
            await self.broker.arm_sweep(self.clock.ms())
        except RedisUnavailable as e:  # the periodic reconcile sweeps too
            log.warning("enqueue: could not arm the dispatch sweep: %s", e.message)

    @asynccontextmanager
    async def transaction(self, conn: Any) -> AsyncIterator[Any]:
        """`async with jq.transaction(conn):` opens a transaction on the application's asyncpg
        connection; jobs enqueued with `connection=conn` inside it are pushed once it commits."""
        pending: list[Row] = []
        token = _open_tx.set((conn, pending))
        try:
            async with conn.transaction():
                yield conn
        finally:
            _open_tx.reset(token)
        if pending and not conn.is_in_transaction():  # the outermost transaction has committed
            await self.dispatch_committed(pending)
        elif pending:
            await self._arm_sweep()  # a savepoint inside a transaction we do not own

    async def enqueue_in_session(self, session: Any, jobs: list[dict[str, Any]]) -> list[tuple[Row, bool]]:
        """Insert inside a SQLAlchemy/SQLModel AsyncSession's transaction; pushed on its commit."""
        conn = await self.store.session_connection(session)
        pending: list[Row] | None = session.info.get(SESSION_PENDING)
        if pending is None:
            pending = session.info[SESSION_PENDING] = []
            self._listen(session, pending)
        results = await self.insert(jobs, on=_Borrowed(conn))  # arms the sweep, as a backstop
        pending.extend(row for row, created in results if created)
        return results

    def _listen(self, session: Any, pending: list[Row]) -> None:
        from sqlalchemy import event

        def committed(_: Any) -> None:
            rows, pending[:] = list(pending), []
            if rows:
                # The event is synchronous; the push runs right after, on the session's loop.
                task = asyncio.get_running_loop().create_task(self.dispatch_committed(rows))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

        def rolled_back(_: Any) -> None:
            pending.clear()

        event.listen(session.sync_session, "after_commit", committed)
        event.listen(session.sync_session, "after_rollback", rolled_back)

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


class _TypeFacts:
    """What an enqueue call works out once per job type rather than once per job."""

    __slots__ = ("_backoff", "_limiters", "jt")

    def __init__(self, jt: JobType) -> None:
        self.jt = jt
        self._backoff = jt.backoff.model_dump() if jt.backoff is not None else None
        self._limiters: dict[str | None, str] = {}

    def backoff(self) -> dict[str, Any] | None:
        """The type's policy as a dict of the row's own (rows are handed to callers)."""
        return dict(self._backoff) if self._backoff is not None else None

    def limiter(self, group: str | None) -> str:
        got = self._limiters.get(group)
        if got is None:
            jt = self.jt
            got = self._limiters[group] = limiter_suffix(type_tag(jt.name) if jt.limited else "", group)
        return got


class _Borrowed:
    """A session's connection, which reports itself as in a transaction so that the rows wait for
    the session's commit (the session's after_commit pushes them)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def is_in_transaction(self) -> bool:
        return True


def _decoded(row: Row) -> Row:
    """A row read on an application's connection has its JSON as text (its codecs are not ours)."""
    for col in ("payload", "backoff", "result", "history", "progress", "callback"):
        if isinstance(row.get(col), str):
            row[col] = orjson.loads(row[col])
    return row


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _key(j: dict[str, Any]) -> tuple[str, str]:
    return (j["queue"], j["idempotency_key"])


def _us(dt: datetime) -> int:
    """Microseconds since the epoch, exactly (a float timestamp can be 1 us off)."""
    d = dt - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


class _Stamps:
    """`_us` for a batch, whose jobs mostly share one time (the call's clock reading)."""

    __slots__ = ("_dt", "_us")

    def __init__(self) -> None:
        self._dt: datetime | None = None
        self._us = 0

    def us(self, dt: datetime) -> int:
        if dt is not self._dt:
            self._dt, self._us = dt, _us(dt)
        return self._us


@functools.lru_cache(maxsize=64)
def _backoff_policy(text: str) -> Any:
    return orjson.loads(text)


def _loads_backoff(text: str) -> Any:
    """A resolved default policy: the same few texts come back for every row of a batch, so the
    decode is cached, and each row gets its own copy (rows are handed to callers)."""
    return dict(_backoff_policy(text))


def _new_row(j: dict[str, Any], job_id: int, resolved: dict[int, Row]) -> Row:
    """The row Postgres now holds for a job just inserted (what RETURNING * would have said): what
    was sent, and the defaults the INSERT resolved (the queue's or the engine's)."""
    columns = dict(j["columns"])
    got = resolved[job_id]
    if columns["max_attempts"] is None:
        columns["max_attempts"] = got["max_attempts"]
    if columns["timeout_ms"] is None:
        columns["timeout_ms"] = got["timeout_ms"]
    if columns["backoff"] is None:
        columns["backoff"] = _loads_backoff(got["backoff_text"])
    return {
        "id": job_id,
        **columns,
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
