"""A step-by-step model of parallel drains over the real claim and acknowledgement scripts, the
real grant and outcome statements and the real reconcile (Postgres and Redis on this machine),
with the injected clock: each step is one thing a drain does, so hypothesis can interleave them
in any order and check the flow-control guarantees after every step (test_flow_properties.py).

What the drain loop adds around these steps (tasks, lingering, heartbeats) is not modelled:
test_flow_control.py runs real drains in parallel for that."""

from __future__ import annotations

import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from jobqueue.broker import Ack, Lease
from jobqueue.clock import FakeClock, from_ms, iso, to_ms
from jobqueue.drain.execute import Executor, released
from jobqueue.drain.recorder import Recorder
from jobqueue.drain.report import DrainReport
from jobqueue.engine import JobQueue
from jobqueue.reconcile import reconcile, scopes_of

LEASE_MS = 30_000  # the provisional lease score of a claim (the sim's drains never heartbeat)


@dataclass
class Held:
    row: dict[str, Any]
    member: str
    token: str


@dataclass
class SimDrain:
    held: dict[int, Held] = field(default_factory=dict)


@dataclass
class Start:
    job_id: int
    at_ms: int
    scopes: list[str]
    first: bool


class FlowSim:
    """Drains as plain objects; `fates` says how each job's next run ends (the handler reads it)."""

    def __init__(self, jq: JobQueue, clock: FakeClock, queue: str, drains: int) -> None:
        self.jq = jq
        self.clock = clock
        self.queue = queue
        self.drains = [SimDrain() for _ in range(drains)]
        self.fates: dict[int, str] = {}
        self.limiter: dict[int, str] = {}  # job id -> its flow-control suffix
        self.starts: list[Start] = []
        self.started: set[int] = set()
        self.executor = Executor(jq.registry, clock, jq.settings, jq.enqueue_from_handler)

    # --- the steps ----------------------------------------------------------------------------

    async def enqueue(self, jobs: list[dict[str, Any]]) -> list[int]:
        rows = [r for r, _ in await self.jq.enqueue_many(jobs)]
        for r in rows:
            full = await self.jq.get(r["id"])
            self.limiter[r["id"]] = full["limiter"] or ""
        return [r["id"] for r in rows]

    async def claim(self, d: int, n: int) -> int:
        """One claim and its grant, as Drain._claim and Drain._grant do them; the rows granted
        start at once. Returns how many started."""
        jq, drain = self.jq, self.drains[d]
        token = secrets.token_hex(6)
        now_ms = self.clock.ms()
        claimed = await jq.broker.claim(
            [(self.queue, n)], n, now_ms, now_ms + LEASE_MS, token, 0, type_limits=jq.registry.type_limits()
        )
        if claimed.epoch_missing:
            await reconcile(jq.store, jq.broker, jq.dispatch, self.clock, full=True)
            return 0
        if not claimed.members:
            return 0
        now = self.clock.now()
        rows = await jq.store.fetch(
            "claim", list(claimed.members), now, token, now + timedelta(hours=1), 1000, iso(now)
        )
        # Started in pop order, as Drain._grant starts them: Postgres returns the granted rows in
        # no particular order (a hash join's), which made the FIFO check flaky.
        order = {jid: i for i, jid in enumerate(claimed.members)}
        rows.sort(key=lambda r: order[r["id"]])
        ack = Ack(jq.keys)
        answered = set()
        started = 0
        for r in rows:
            jid = r["id"]
            answered.add(jid)
            queue, member = claimed.members[jid]
            if r["kind"] == "run":
                drain.held[jid] = Held(dict(r), member, token)
                self.starts.append(Start(jid, now_ms, ["q", *scopes_of(self.limiter[jid])], jid not in self.started))
                self.started.add(jid)
                started += 1
            elif r["kind"] == "dead":
                ack.done(queue, member, token)
            elif r["kind"] == "held":
                ack.hand_back(queue, member, token, r["lease_token"], to_ms(r["lease_expires_at"]))
            else:
                ack.retry(queue, member, token, to_ms(r["run_at"]))
        for jid in claimed.members.keys() - answered:
            queue, member = claimed.members[jid]
            ack.done(queue, member, token)
        if ack:
            await jq.broker.ack(ack, now_ms)
        return started

    async def finish(self, d: int, pick: int, fate: str) -> None:
        """The job `pick` (modulo what drain `d` holds) ends: "ok", "retry" (RetryAfter),
        "rate_limited" (RateLimited) or "released" (granted after the budget's end)."""
        drain = self.drains[d]
        if not drain.held:
            return
        jid = sorted(drain.held)[pick % len(drain.held)]
        h = drain.held.pop(jid)
        if fate == "released":
            out = released(h.row, h.token)
        else:
            self.fates[jid] = fate
            out = await self.executor.run(h.row, h.token, 5.0)
        await self._record(out, h)

    async def _record(self, out: Any, h: Held) -> None:
        jq = self.jq
        rec = Recorder(
            jq.store,
            jq.broker,
            jq.keys,
            self.clock,
            DrainReport(),
            members=lambda _jid: (self.queue, h.member),
            on_recorded=lambda _jid: None,
            group_max=100,
            linger_s=0,
            give_up_at=float("inf"),
        )
        rec.start()
        rec.add(out)
        await rec.close()
        assert rec.error is None

    async def advance(self, ms: int) -> None:
        """Time passes, in steps shorter than a lease: the live drains' heartbeats keep their
        leases (Postgres and Redis, as drain/leases.py does); a killed drain's run out."""
        while ms > 0:
            step = min(ms, LEASE_MS // 3)
            self.clock.advance(step)
            ms -= step
            held = [(jid, h) for drain in self.drains for jid, h in drain.held.items()]
            if not held:
                continue
            until_ms = self.clock.ms() + LEASE_MS
            await self.jq.store.fetch(
                "extend_leases", [j for j, _ in held], [h.token for _, h in held], [from_ms(until_ms)] * len(held)
            )
            await self.jq.broker.extend(Lease(self.queue, h.member, h.token, until_ms) for _, h in held)

    def kill(self, d: int) -> None:
        """The drain's process dies: its jobs stop running; their leases run out in time."""
        self.drains[d].held.clear()

    async def flush(self) -> None:
        """Redis loses everything (a failover without persistence, an operator's FLUSHDB)."""
        await self.jq.broker.forget_prefix()

    # --- what holds ---------------------------------------------------------------------------

    def running(self) -> dict[str, int]:
        """Jobs running now (held by live drains) per scope ("q" the whole queue)."""
        out: dict[str, int] = defaultdict(int)
        for drain in self.drains:
            for jid in drain.held:
                for s in ["q", *scopes_of(self.limiter[jid])]:
                    out[s] += 1
        return out

    def holders(self) -> dict[int, int]:
        return {jid: i for i, drain in enumerate(self.drains) for jid in drain.held}

    async def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """The limiter's counts (inflight) and the leases in the processing set, per scope."""
        k = self.jq.keys
        inflight, leases = await self.jq.redis.pipeline(
            [["HGETALL", k.inflight(self.queue)], ["ZRANGE", k.processing(self.queue), 0, -1]]
        )
        counts = _hash(inflight)
        by_scope: dict[str, int] = defaultdict(int)
        for lease in leases or []:
            member = lease.split("|", 1)[0]
            parts = member.split(":", 3)
            for s in scopes_of(parts[3] if len(parts) > 3 else ""):
                by_scope[s] += 1
        return {s: int(v) for s, v in counts.items() if int(v)}, dict(by_scope)

    async def parked_scopes(self) -> tuple[set[str], set[str]]:
        """The scopes parked jobs wait under, and the scopes listed in parked_keys."""
        k = self.jq.keys
        entries, listed = await self.jq.redis.pipeline(
            [["ZRANGE", k.parked(self.queue), 0, -1], ["ZRANGE", k.parked_keys(self.queue), 0, -1]]
        )
        return {e.split("|", 1)[0] for e in entries or []}, set(listed or [])


def _hash(raw: Any) -> dict[str, str]:
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    items = list(raw or [])
    return {str(items[i]): str(items[i + 1]) for i in range(0, len(items), 2)}
