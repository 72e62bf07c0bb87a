"""Flow control's guarantees under any interleaving (issue 11): hypothesis drives several drains
(flowsim.FlowSim: the real scripts, statements and reconcile) through random claims, outcomes
(completed, retried, RateLimited, released at a budget's end), killed drains whose leases run out,
time passing and Redis flushes, with random limits per queue, type and group. After every step:

- the jobs running never exceed the concurrency of their queue, type, group or type's group;
- the starts in any window of one period never exceed the rate's limit plus its burst;
- the limiter's counts equal the leases in the processing set, scope by scope;
- every running job has its lease there (once Redis has been rebuilt after a flush).

At the end, with nothing failing any more, every job completes (nothing parked is stranded), and
the first starts of each type's group, priority by priority, came in the order they were enqueued.

JOBQUEUE_PROPERTY_EXAMPLES raises the number of examples (30 by default) for a longer hunt."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import defaultdict
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from jobqueue import RateLimited, RetryAfter
from jobqueue.clock import FakeClock
from jobqueue.engine import JobQueue
from jobqueue.models import Rate
from jobqueue.registry import JobContext, Registry
from jobqueue.settings import Settings
from jobqueue.store import Store
from jobqueue.transports import RedisPyTransport

from .flowsim import LEASE_MS, FlowSim

QUEUE = "flow"
GROUPS = ["acme", "globex", "initech"]
EXAMPLES = int(os.environ.get("JOBQUEUE_PROPERTY_EXAMPLES", "30"))

rates = st.none() | st.builds(
    Rate,
    limit=st.integers(1, 3),
    period_ms=st.sampled_from([1000, 2000, 3000]),
    burst=st.integers(1, 2),
)
concurrency = st.none() | st.integers(1, 3)
limits = st.fixed_dictionaries(
    {
        "queue": st.fixed_dictionaries(
            {"concurrency": concurrency, "rate": rates, "group_concurrency": concurrency, "group_rate": rates}
        ),
        "typed": st.fixed_dictionaries(
            {
                "concurrency": concurrency,
                "rate": rates,
                "group_concurrency": concurrency,
                "group_rate": rates,
                "fair": st.booleans(),
            }
        ),
    }
)


def build_registry(fates: dict[int, str], typed: dict[str, Any]) -> Registry:
    registry = Registry()

    async def handler(payload: dict[str, Any], ctx: JobContext) -> str:
        fate = fates.get(ctx.job_id, "ok")
        if fate == "retry":
            raise RetryAfter(500)
        if fate == "rate_limited":
            raise RateLimited(1500)
        return "ok"

    # "plain" has no limits of its own (only the queue's); "typed" has the drawn ones.
    registry.job("plain", queue=QUEUE, max_attempts=100, timeout_ms=20_000)(handler)
    registry.job("typed", queue=QUEUE, max_attempts=100, timeout_ms=20_000, **typed)(handler)
    return registry


class FlowMachine(RuleBasedStateMachine):
    def __init__(self, database_url: str, redis_url: str, prefix: str) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.database_url, self.redis_url, self.prefix = database_url, redis_url, prefix
        self.sim: FlowSim | None = None
        self.jq: JobQueue | None = None
        self.enqueued: list[tuple[int, str, str | None, int]] = []  # id, type, group, priority
        self.flushed = False

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @initialize(config=limits, drains=st.integers(2, 4))
    def setup(self, config: dict[str, Any], drains: int) -> None:
        self.config = config
        self.run(self._setup(config, drains))

    async def _setup(self, config: dict[str, Any], drains: int) -> None:
        conn = await asyncpg.connect(self.database_url)
        try:
            await conn.execute("TRUNCATE jobs, queues RESTART IDENTITY CASCADE")
        finally:
            await conn.close()
        clock = FakeClock()
        fates: dict[int, str] = {}
        registry = build_registry(fates, config["typed"])
        prefix = f"{self.prefix}x{uuid.uuid4().hex[:6]}"  # removed at teardown
        s = Settings(JOBQUEUE_PREFIX=prefix, DATABASE_URL=self.database_url)
        self.jq = JobQueue(
            Store(self.database_url, pool_max=4), RedisPyTransport.from_url(self.redis_url), registry, s, clock
        )
        await self.jq.set_queue_settings(QUEUE, {k: v for k, v in config["queue"].items() if v is not None})
        self.sim = FlowSim(self.jq, clock, QUEUE, drains)
        self.sim.fates = fates
        await self.sim.claim(0, 1)  # the first claim finds no epoch marker and builds the index

    # --- steps ----------------------------------------------------------------------------------

    @rule(
        kind=st.sampled_from(["plain", "typed"]),
        group=st.sampled_from([*GROUPS, None]),
        priority=st.sampled_from([0, 5, 9]),
        n=st.integers(1, 4),
    )
    def enqueue(self, kind: str, group: str | None, priority: int, n: int) -> None:
        assert self.sim is not None
        jobs = [{"type": kind, "payload": {}, "group": group, "priority": priority} for _ in range(n)]
        for jid in self.run(self.sim.enqueue(jobs)):
            self.enqueued.append((jid, kind, group, priority))

    @rule(d=st.integers(0, 3), n=st.integers(1, 6))
    def claim(self, d: int, n: int) -> None:
        assert self.sim is not None
        self.run(self.sim.claim(d % len(self.sim.drains), n))

    @rule(
        d=st.integers(0, 3),
        pick=st.integers(0, 20),
        fate=st.sampled_from(["ok", "ok", "retry", "rate_limited", "released"]),
    )
    def finish(self, d: int, pick: int, fate: str) -> None:
        assert self.sim is not None
        self.run(self.sim.finish(d % len(self.sim.drains), pick, fate))

    @rule(d=st.integers(0, 3))
    def kill(self, d: int) -> None:
        assert self.sim is not None
        self.sim.kill(d % len(self.sim.drains))

    @rule(ms=st.sampled_from([0, 100, 400, 1000, 2500, LEASE_MS + 2000]))
    def advance(self, ms: int) -> None:
        assert self.sim is not None
        self.run(self.sim.advance(ms))

    @rule()
    def flush(self) -> None:
        assert self.sim is not None
        self.run(self.sim.flush())

    # --- after every step -----------------------------------------------------------------------

    def limit_of(self, scope: str) -> tuple[int | None, Rate | None]:
        q, t = self.config["queue"], self.config["typed"]
        if scope == "q":
            return q["concurrency"], q["rate"]
        if scope.startswith("g:"):
            return q["group_concurrency"], q["group_rate"]
        if ":g:" in scope:
            return t["group_concurrency"], t["group_rate"]
        return t["concurrency"], t["rate"]

    @invariant()
    def running_within_every_concurrency(self) -> None:
        if self.sim is None:
            return
        for scope, n in self.sim.running().items():
            c, _ = self.limit_of(scope)
            assert c is None or n <= c, f"{n} running in {scope}, limit {c}"

    @invariant()
    def starts_within_every_rate(self) -> None:
        if self.sim is None:
            return
        by_scope: dict[str, list[int]] = defaultdict(list)
        for s in self.sim.starts:
            for scope in s.scopes:
                by_scope[scope].append(s.at_ms)
        for scope, times in by_scope.items():
            _, rate = self.limit_of(scope)
            if rate is None:
                continue
            times.sort()
            for i, t in enumerate(times):
                window = sum(1 for u in times[i:] if u < t + rate.period_ms)
                assert window <= rate.limit + rate.burst, f"{window} starts in {scope} within {rate}"

    @invariant()
    def counts_equal_leases(self) -> None:
        if self.sim is None:
            return
        counts, leases = self.run(self.sim.counts())
        assert counts == leases

    @invariant()
    def parked_jobs_wait_in_listed_scopes(self) -> None:
        # A parked job whose scope is not listed would never be looked at again.
        if self.sim is None:
            return
        waiting, listed = self.run(self.sim.parked_scopes())
        assert waiting <= listed, f"parked under unlisted scopes: {waiting - listed}"

    @invariant()
    def running_jobs_hold_leases(self) -> None:
        if self.sim is None or not self.run(self.jq.redis.command("EXISTS", self.jq.keys.epoch)):  # type: ignore[union-attr]
            return  # flushed, not rebuilt yet: the next claim rebuilds (and restores these leases)
        assert self.jq is not None
        listed = self.run(self.jq.redis.command("ZRANGE", self.jq.keys.processing(QUEUE), 0, -1))
        leased = {int(m.split("|", 1)[0].split(":")[2]) for m in listed or []}
        assert set(self.sim.holders()) <= leased

    # --- the end --------------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if self.sim is not None:
                self.run(self.settle())
        finally:
            if self.jq is not None:
                self.run(self.jq.broker.forget_prefix())
                self.run(self.jq.close())
            self.loop.close()

    async def settle(self) -> None:
        """Nothing fails any more: every job completes; first starts are FIFO per scope."""
        sim = self.sim
        assert sim is not None and self.jq is not None
        for _ in range(600):
            for d in range(len(sim.drains)):
                while sim.drains[d].held:
                    await sim.finish(d, 0, "ok")
            left = [jid for jid, *_ in self.enqueued if (await self.jq.get(jid))["status"] != "completed"]
            if not left:
                break
            await sim.advance(1000)
            for d in range(len(sim.drains)):
                await sim.claim(d, 6)
        else:
            raise AssertionError(f"jobs never completed: {left}")
        assert await sim.counts() == ({}, {})
        first = [s.job_id for s in sim.starts if s.first]
        position = {jid: i for i, jid in enumerate(first)}
        lines: dict[tuple[str, str | None, int], list[int]] = defaultdict(list)
        for jid, kind, group, priority in self.enqueued:
            lines[(kind, group, priority)].append(jid)
        for key, ids in lines.items():
            order = sorted(ids, key=lambda j: position[j])
            assert order == sorted(ids), f"first starts of {key} out of order: {order}"


@pytest.mark.timeout(900)  # a failure's shrinking replays many examples
def test_flow_control_holds_under_any_interleaving(database_url: str, redis_server: str, prefix: str) -> None:
    run_state_machine_as_test(
        lambda: FlowMachine(database_url, redis_server, prefix),
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=40,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
