"""Recurring jobs: declared in code and synced at deploy, managed over the API, fired by the drains.

Firing, exactly once per tick whatever runs: a claim (one Redis request, as always) reports the
schedules whose score in the `schedules` sorted set is due and leases them out of other claims'
sight; the drain reads their definitions (one statement), works out the ticks with the misfire
policy (schedule_spec.plan) and fires them all in one statement that moves each watermark with a
compare-and-set and inserts the jobs only where it moved (sql/queries.sql `fire_schedules`).
Two drains on the same tick: one compare-and-set matches, the other's matches nothing. A drain
that dies between the claim and the statement fires nothing; the lease runs out and another drain
fires the tick. A duplicate platform trigger only runs another claim. Redis losing the sorted set
loses nothing either: reconcile rebuilds it from Postgres. A tick costs 2 statements and 1 Redis
request (the new jobs and the next ticks), whatever the number of schedules due together.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from .broker import Broker
from .clock import Clock, to_ms
from .cron import InvalidTiming
from .errors import InvalidJob, JobNotFound, RedisUnavailable
from .keys import limiter_suffix, type_tag
from .models import Backoff
from .registry import Registry
from .schedule_spec import ScheduleDecl, ScheduleRequest, ScheduleView, check_schedule_id, plan
from .settings import Settings
from .state import DrainState
from .store import Row, Store
from .validation import encode_payload

log = logging.getLogger("jobqueue.schedules")

# A catch-up that still has ticks to fire comes back this long after its pass, not at once: each
# pass is bounded (catch_up_limit), so a long backlog does not flood one drain.
CATCH_UP_PAUSE_MS = 1000
DEFAULT_MAX_ATTEMPTS = 3
SPEC_COLUMNS = tuple(ScheduleRequest.model_fields)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ScheduleNotFound(JobNotFound):
    """No such schedule."""


class Schedules:
    def __init__(
        self, store: Store, broker: Broker, registry: Registry, settings: Settings, clock: Clock, state: DrainState
    ) -> None:
        self.store = store
        self.broker = broker
        self.registry = registry
        self.settings = settings
        self.clock = clock
        self.state = state

    # --- checks -------------------------------------------------------------------------------

    def parse(self, schedule_id: str, data: Any) -> ScheduleRequest:
        """An untrusted definition: a 422 naming the field, or the request."""
        try:
            check_schedule_id(schedule_id)
            spec = data if isinstance(data, ScheduleRequest) else ScheduleRequest.model_validate(data)
            spec.timing()
        except InvalidTiming as e:
            raise InvalidJob(f"{e.field}: {e}", field=e.field) from None
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "body"
            raise InvalidJob(f"{loc}: {first['msg']}", field=loc) from None
        jt = self.registry.get(spec.type)  # an unknown type is a 422 naming `type`
        jt.validate(spec.payload)  # ...and a payload that fails its model one naming `payload.x`
        if len(encode_payload(spec.payload)) > self.settings.max_payload_bytes:
            raise InvalidJob("the payload is larger than JOBQUEUE_MAX_PAYLOAD_BYTES", field="payload")
        return spec

    def _job(self, schedule_id: str, spec: ScheduleRequest, tick: datetime | None, n: int = 0) -> dict[str, Any]:
        """The job a tick makes, its options resolved as an enqueue would (request, type, defaults)."""
        jt = self.registry.get(spec.type) if spec.type in self.registry else None
        backoff = spec.backoff or (jt.backoff if jt else None) or Backoff()
        group = jt.group_of(jt.validate(spec.payload)) if jt else None
        return {
            "group_key": group,
            "limiter": limiter_suffix(type_tag(jt.name) if jt and jt.limited else "", group),
            "n": n,
            "schedule_id": schedule_id,
            "tick_us": _us(tick) if tick is not None else None,
            "queue": spec.queue or (jt.queue if jt else "default"),
            "type": spec.type,
            "payload": spec.payload,
            "priority": spec.priority,
            "max_attempts": spec.max_attempts or (jt.max_attempts if jt else None) or DEFAULT_MAX_ATTEMPTS,
            "backoff": backoff.model_dump(),
            "timeout_ms": spec.timeout_ms or (jt.timeout_ms if jt else None) or self.settings.default_timeout_ms,
        }

    # --- the API ------------------------------------------------------------------------------

    async def put(self, schedule_id: str, data: Any) -> tuple[ScheduleView, bool]:
        spec = self.parse(schedule_id, data)
        now = self.clock.now()
        first = spec.timing().next_after(now)
        doc = orjson.dumps({"id": schedule_id, **spec.model_dump(mode="json")}).decode()
        row = (await self.store.fetch("schedule_put", doc, first, now))[0]
        await self._index({row["id"]: row}, paused=[row["id"]] if row["paused"] else [])
        return await self.get(schedule_id), bool(row["created"])

    async def get(self, schedule_id: str) -> ScheduleView:
        row = await self.store.fetchrow("schedule_get", schedule_id)
        if row is None:
            raise ScheduleNotFound(f"schedule {schedule_id!r} not found")
        return ScheduleView.from_row(row)

    async def all(self) -> list[ScheduleView]:
        return [ScheduleView.from_row(r) for r in await self.store.fetch("schedules_list")]

    async def delete(self, schedule_id: str) -> None:
        if not await self.store.fetch("schedule_delete", schedule_id):
            raise ScheduleNotFound(f"schedule {schedule_id!r} not found")
        await self._index({}, paused=[schedule_id])

    async def set_paused(self, schedule_id: str, paused: bool) -> ScheduleView:
        rows = await self.store.fetch("schedule_set_paused", schedule_id, paused, self.clock.now())
        if not rows:
            raise ScheduleNotFound(f"schedule {schedule_id!r} not found")
        await self._index({} if paused else {schedule_id: rows[0]}, paused=[schedule_id] if paused else [])
        return await self.get(schedule_id)

    async def trigger(self, schedule_id: str) -> Row:
        """One job now, outside the ticks (the next tick is unchanged; `scheduled_for` is null)."""
        view = await self.get(schedule_id)
        spec = ScheduleRequest.model_validate(view.model_dump(include=set(SPEC_COLUMNS)))
        doc = orjson.dumps(self._job(schedule_id, spec, None)).decode()
        rows = await self.store.fetch("schedule_trigger", doc, self.clock.now())
        await self._push(rows, {}, [])
        return rows[0]

    # --- code ---------------------------------------------------------------------------------

    async def sync(self, decls: list[ScheduleDecl] | None = None) -> int:
        """Write the code's schedules to Postgres; returns how many changed. Never fires a job."""
        decls = self.registry.schedules if decls is None else decls
        if not decls:
            return 0
        now = self.clock.now()
        doc = [
            {
                "id": d.id,
                **d.spec.model_dump(mode="json"),
                "first_us": _us(d.spec.timing().next_after(now)),
                "code_hash": code_hash(d),
            }
            for d in decls
        ]
        rows = await self.store.fetch("schedules_sync", orjson.dumps(doc).decode(), now)
        await self._index({r["id"]: r for r in rows if not r["paused"]}, paused=[])
        return len(rows)

    # --- firing -------------------------------------------------------------------------------

    async def fire(self, due_ids: list[str]) -> int:
        """Fire what is due of the schedules a claim reported; returns the jobs made."""
        now = self.clock.now()
        defs = {r["id"]: r for r in await self.store.fetch("schedules_by_ids", due_ids)}
        gone = [sid for sid in due_ids if sid not in defs or defs[sid]["paused"]]
        rescore: dict[str, Row] = {}
        ids: list[str] = []
        expected: list[datetime] = []
        new_next: list[datetime] = []
        last_tick: list[datetime | None] = []
        jobs: list[dict[str, Any]] = []
        for sid, row in defs.items():
            if row["paused"]:
                continue
            spec = ScheduleRequest.model_validate({k: row[k] for k in SPEC_COLUMNS})
            p = plan(spec, row["next_run_at"], now)
            if row["next_run_at"] > now:
                rescore[sid] = row  # the Redis score was early (a stale index): put it right
                continue
            ids.append(sid)
            expected.append(row["next_run_at"])
            new_next.append(p.next_run_at)
            last_tick.append(p.ticks[-1] if p.ticks else None)
            jobs += [self._job(sid, spec, t, len(jobs) + i) for i, t in enumerate(p.ticks)]
        made: list[Row] = []
        moved: dict[str, Row] = {}
        if ids:
            for r in await self.store.fetch(
                "fire_schedules", ids, expected, new_next, last_tick, orjson.dumps(jobs).decode(), now
            ):
                if r["kind"] == "job":
                    made.append(r)
                else:
                    moved[r["schedule_id"]] = {"next_run_at": r["next_run_at"]}
            # A schedule whose compare-and-set lost was fired by another drain, which sets its score.
        await self._index(moved, paused=gone, rows=made, hold_past=True)
        if rescore:
            await self._index(rescore, paused=[])
        if made:
            log.info("schedules fired %d job(s)", len(made))
        return len(made)

    async def _index(
        self, due: dict[str, Row], *, paused: list[str], rows: list[Row] | None = None, hold_past: bool = False
    ) -> None:
        now_ms = self.clock.ms()
        scores = {}
        for sid, r in due.items():
            ms = to_ms(r["next_run_at"])
            # After a pass, a catch-up with ticks left (its watermark still in the past) comes back
            # after a pause; anything else (a resumed or new schedule) is due when its tick is.
            scores[sid] = now_ms + CATCH_UP_PAUSE_MS if hold_past and ms <= now_ms else ms
        await self._push(rows or [], scores, paused)

    async def _push(self, rows: list[Row], scores: dict[str, int], gone: list[str]) -> None:
        try:
            await self.broker.push(rows, schedules=scores, unschedule=gone)
        except RedisUnavailable as e:
            # The jobs and the watermarks are in Postgres: reconcile indexes both.
            self.state.needs_reconcile = True
            log.warning("schedules: the index could not be updated (reconcile will): %s", e.message)
        self.state.queues |= {r["queue"] for r in rows}


def code_hash(decl: ScheduleDecl) -> str:
    return hashlib.sha256(f"{decl.id}={decl.spec.model_dump_json()}".encode()).hexdigest()[:16]


def _us(dt: datetime) -> int:
    d = dt - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds
