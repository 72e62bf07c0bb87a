"""The Redis adapter: the only module that builds Redis commands (an import-linter contract and a
test keep it so). Everything above it asks for operations by name: push, claim, acknowledge,
extend leases, take a turn on a clock-based marker, lock, pause, and the reads and writes of
reconcile and metrics.

Every operation is one request (a script or a pipeline) whatever the number of jobs, and every
variadic command carries all the members of a batch (DESIGN.md invariant 4). Replies are read
here too, so the two transports' differences (redis-py turns a won `SET NX` into True, Upstash
answers "OK") stay inside this file.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .clock import to_ms
from .keys import Keys, encode_member, lease_member, member_id
from .transports import RedisTransport, Script

CLAIM = Script.load("claim")
ACK = Script.load("ack")
RESTORE_LEASES = Script.load("restore_leases")
TURN = Script.load("turn")
UNLOCK = Script.load("unlock")
# Turn markers expire this long after their interval in real time: Redis only forgets markers
# nobody asks about any more; the due time itself is the stored value, in the engine's clock.
TURN_EXPIRY_SLACK_MS = 10 * 60 * 1000
# After a job is enqueued inside an application's transaction, claims run the dispatch sweep every
# SWEEP_EVERY_MS for SWEEP_WINDOW_MS, in case it commits without its push (reconcile.sweep).
SWEEP_EVERY_MS = 1000
SWEEP_WINDOW_MS = 120_000
# A due schedule a claim took stays out of other claims' sight this long: the drain fires it (or
# finds it fired) and sets its real next tick well within it; a drain that died meanwhile only
# delays the tick by this much (Postgres, not this lease, makes firing exactly-once).
SCHEDULE_LEASE_MS = 10_000
SCHEDULES_PER_CLAIM = 100
# How long an ended job's id stays in the done set (waiting.py): waiters poll far more often.
DONE_WINDOW_MS = 30_000
GATED_ON_SLOT = 9 * 10**15  # claim.lua's BLOCKED
PRUNE = Script(
    "prune_queues",
    """
-- Drop queues from the queue set whose Redis index is empty (no ready, delayed or processing
-- member), atomically with that check, so a job pushed meanwhile keeps its queue.
-- KEYS[1] the queue set; then per queue 12 keys: delayed, processing, ready 9..0.
-- ARGV the queue names, one per 12-key group. Returns the names removed. Commands: 12 per queue.
local out = {}
for i, q in ipairs(ARGV) do
  local base = 2 + 12 * (i - 1)
  local empty = redis.call("ZCARD", KEYS[base]) == 0 and redis.call("ZCARD", KEYS[base + 1]) == 0
  for k = base + 2, base + 11 do
    if empty and redis.call("LLEN", KEYS[k]) > 0 then empty = false end
  end
  if empty then
    redis.call("SREM", KEYS[1], q)
    table.insert(out, q)
  end
end
return out
""",
)
ARM_SWEEP = Script(
    "arm_sweep",
    """
-- Ask claims to run the dispatch sweep from ARGV[1] (due ms) until ARGV[2] (ms), keeping an
-- earlier due time and a later end already there. KEYS[1] the sweep marker. Commands: 2.
local due, untill = tonumber(ARGV[1]), tonumber(ARGV[2])
local old = redis.call("GET", KEYS[1])
if old then
  local colon = string.find(old, ":", 1, true)
  due = math.min(due, tonumber(string.sub(old, 1, colon - 1)))
  untill = math.max(untill, tonumber(string.sub(old, colon + 1)))
end
redis.call("SET", KEYS[1], due .. ":" .. untill, "PX", ARGV[3])
return 1
""",
)


@dataclass
class Claimed:
    """What one claim request took: members per queue, fresh pops and recovered leases."""

    flags: str = ""
    known_queues: list[str] = field(default_factory=list)
    members: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (queue, member)
    recovered: set[int] = field(default_factory=set)
    due_schedules: list[str] = field(default_factory=list)
    kick_at_ms: int | None = None  # publish one delayed kick for this due time
    # Queues whose work waits on a flow-control limit -> when that may change (GATED_ON_SLOT: when
    # a slot frees).
    gated: dict[str, int] = field(default_factory=dict)

    @property
    def sync_due(self) -> bool:
        return "Y" in self.flags

    @property
    def epoch_missing(self) -> bool:
        return "E" in self.flags

    @property
    def reconcile_due(self) -> bool:
        return "R" in self.flags

    @property
    def sweep_due(self) -> bool:
        return "S" in self.flags


def job_member(row: dict[str, Any]) -> str:
    """A job's member in Redis; `limiter` (the row's flow-control suffix, jobs.limiter) included."""
    return encode_member(int(row["priority"]), to_ms(row["created_at"]), int(row["id"]), row.get("limiter") or "")


@dataclass
class _QueueAck:
    remove: list[str] = field(default_factory=list)  # lease members
    retry: list[Any] = field(default_factory=list)  # due ms, member, ...
    release: list[str] = field(default_factory=list)
    hand_back: list[Any] = field(default_factory=list)  # deadline ms, lease member, ...
    park: list[Any] = field(default_factory=list)  # until ms, member, ...

    def __bool__(self) -> bool:
        return bool(self.remove or self.retry or self.release or self.hand_back or self.park)


@dataclass
class Ack:
    """The Redis writes that follow recorded outcomes (or a grant), per queue, sent as one
    request (ack.lua, which also keeps the flow-control counts exact)."""

    keys: Keys
    queues: dict[str, _QueueAck] = field(default_factory=lambda: defaultdict(_QueueAck))
    ended: list[int] = field(default_factory=list)  # jobs that reached a final status: into the done set

    def end(self, job_id: int) -> None:
        self.ended.append(job_id)

    def done(self, queue: str, member: str, token: str) -> None:
        self.queues[queue].remove.append(lease_member(member, token))

    def retry(self, queue: str, member: str, token: str, due_ms: int) -> None:
        self.done(queue, member, token)
        self.queues[queue].retry += [due_ms, member]

    def release(self, queue: str, member: str, token: str, priority: int) -> None:
        """Claimed but never started: back to the front of its ready list (`priority` is in the
        member already; kept for the callers' clarity)."""
        self.done(queue, member, token)
        self.queues[queue].release.append(member)

    def hand_back(self, queue: str, member: str, token: str, holder: str, deadline_ms: int) -> None:
        """A popped lease that Postgres says is still held: give the holder its entry back, at
        the deadline Postgres has, so recovery looks again exactly when the lease runs out."""
        self.done(queue, member, token)
        self.queues[queue].hand_back += [deadline_ms, lease_member(member, holder)]

    def park(self, queue: str, member: str, token: str, until_ms: int) -> None:
        """A handler raised RateLimited: the job waits in its group (its scope held until then)."""
        self.done(queue, member, token)
        self.queues[queue].park += [until_ms, member]

    def __bool__(self) -> bool:
        return any(self.queues.values()) or bool(self.ended)

    def merge(self, other: Ack) -> None:
        self.ended += other.ended
        for q, theirs in other.queues.items():
            mine = self.queues[q]
            mine.remove += theirs.remove
            mine.retry += theirs.retry
            mine.release += theirs.release
            mine.hand_back += theirs.hand_back
            mine.park += theirs.park

    def script_args(self, now_ms: int) -> tuple[list[str], list[Any]]:
        keys: list[str] = []
        args: list[Any] = [now_ms]
        for q, a in sorted(self.queues.items()):
            if not a:
                continue
            keys += self.keys.ack_keys(q)
            # Released jobs go back to the popping end, oldest last, so it runs first.
            release = sorted(a.release, key=_age_key, reverse=True)
            for section, width in ((a.remove, 1), (a.retry, 2), (release, 1), (a.hand_back, 2), (a.park, 2)):
                args += [len(section) // width, *section]
        if self.ended:
            # The trailing key and section (ack.lua): 2 commands per request, whatever the count.
            keys.append(self.keys.done)
            args += [now_ms - DONE_WINDOW_MS, len(self.ended), *self.ended]
        return keys, args


# One claim's progress reports for a heartbeat: (lease token, [(job id, report JSON)], TTL ms).
ProgressWrite = tuple[str, list[tuple[int, str]], int]


@dataclass(frozen=True)
class Lease:
    """A lease this drain holds, as the processing set records it."""

    queue: str
    member: str
    token: str
    deadline_ms: int


def _won(reply: Any) -> bool:
    # redis-py answers a won SET NX with True, Upstash with "OK"; a lost one is None for both.
    return reply is True or reply == "OK"


class Broker:
    def __init__(self, transport: RedisTransport, keys: Keys) -> None:
        self.redis = transport
        self.keys = keys

    # --- enqueue ------------------------------------------------------------------------------

    def _push_commands(self, rows: Iterable[dict[str, Any]]) -> list[list[Any]]:
        """Commands that index new (or restored) jobs: LPUSH per ready list in id order (so the
        oldest is popped first), ZADD per delayed set, and the queue into the queue set. Leases
        (processing rows, which only reconcile restores) go through `restore_leases`."""
        ready: dict[str, list[str]] = defaultdict(list)
        delayed: dict[str, list[Any]] = defaultdict(list)
        queues: set[str] = set()
        for row in sorted(rows, key=lambda r: int(r["id"])):
            q = row["queue"]
            queues.add(q)
            m = job_member(row)
            if row["status"] == "pending":
                ready[self.keys.ready(q, int(row["priority"]))].append(m)
            elif row["status"] == "scheduled":
                delayed[self.keys.delayed(q)] += [to_ms(row["run_at"]), m]
        cmds: list[list[Any]] = [["LPUSH", k, *ms] for k, ms in ready.items()]
        cmds += [["ZADD", k, *args] for k, args in delayed.items()]
        if queues:
            cmds.append(["SADD", self.keys.queues, *sorted(queues)])
        return cmds

    async def push(
        self,
        rows: list[dict[str, Any]],
        *,
        kick: tuple[int, int] | None = None,
        schedules: dict[str, int] | None = None,
        unschedule: Iterable[str] = (),
    ) -> bool:
        """Index rows. With `kick` = (now_ms, interval_ms), also take the kick turn in the same
        request; returns whether this push won it (at most one kick per interval, across all
        processes, whatever the number of enqueues). `schedules` (id -> next tick ms) and
        `unschedule` (ids) update the schedules' due index in the same request."""
        cmds = self._push_commands(rows)
        if schedules:
            cmds.append(["ZADD", self.keys.schedules, *[x for sid, ms in schedules.items() for x in (ms, sid)]])
        gone = sorted(unschedule)
        if gone:
            cmds.append(["ZREM", self.keys.schedules, *gone])
        if kick is not None:
            # EVAL, not EVALSHA: a NOSCRIPT inside a pipeline would fail the push itself.
            now_ms, interval_ms = kick
            cmds.append(["EVAL", TURN.source, 1, self.keys.kick, now_ms, interval_ms, _expiry(interval_ms)])
        if not cmds:
            return False
        res = await self.redis.pipeline(cmds)
        return kick is not None and _turn_taken(res[-1])[0]

    # --- the drain ----------------------------------------------------------------------------

    async def claim(
        self,
        queue_limits: list[tuple[str, int]],
        limit: int,
        now_ms: int,
        lease_deadline_ms: int,
        token: str,
        reconcile_interval_ms: int,
        *,
        code_schedules: str = "",
        kick_horizon_ms: int = 0,
        type_limits: str = "",
    ) -> Claimed:
        k = self.keys
        keys = [k.queues, k.paused, k.epoch, k.reconcile_due, k.sweep, k.schedules, k.schedules_synced, k.kick_at]
        args: list[Any] = [now_ms, limit, lease_deadline_ms, token, reconcile_interval_ms, SWEEP_EVERY_MS]
        args += [SCHEDULE_LEASE_MS, SCHEDULES_PER_CLAIM, code_schedules, kick_horizon_ms, type_limits]
        for q, n in queue_limits:
            keys += k.claim_keys(q)
            args += [q, max(0, n)]
        raw = await self.redis.script(CLAIM, keys, args)
        out = Claimed(flags=raw[0] or "", known_queues=list(raw[1] or []), due_schedules=list(raw[2] or []))
        out.kick_at_ms = int(raw[3]) if raw[3] not in (None, False, 0) else None
        rest = raw[4:]
        for i in range(0, len(rest), 4):
            queue, taken, recovered, gated = rest[i], rest[i + 1] or [], rest[i + 2] or [], rest[i + 3]
            if gated not in (None, False, 0):
                out.gated[queue] = int(float(gated))
            for m in taken:
                out.members[member_id(m)] = (queue, m)
            for m in recovered:
                jid = member_id(m)
                out.members[jid] = (queue, m)
                out.recovered.add(jid)
        return out

    async def ack(self, ack: Ack, now_ms: int) -> None:
        keys, args = ack.script_args(now_ms)
        if keys:
            await self.redis.script(ACK, keys, args)

    async def extend(self, leases: Iterable[Lease], progress: Iterable[ProgressWrite] = ()) -> None:
        """Move leases' deadlines later (never earlier: GT), and only where the entry is still
        there (XX): an entry another drain popped meanwhile is handed back by that drain (it finds
        the lease held in Postgres), and flow control's counts follow the entries exactly.
        `progress`: per claim, its jobs' reports and the hash's TTL, written in the same request
        (HSET + PEXPIRE per claim, whatever the number of jobs)."""
        by_key: dict[str, list[Any]] = defaultdict(list)
        for lease in leases:
            by_key[self.keys.processing(lease.queue)] += [lease.deadline_ms, lease_member(lease.member, lease.token)]
        cmds: list[list[Any]] = [["ZADD", k, "XX", "GT", *args] for k, args in by_key.items()]
        for token, reports, ttl_ms in progress:
            key = self.keys.progress(token)
            cmds += [["HSET", key, *[x for jid, value in reports for x in (jid, value)]], ["PEXPIRE", key, ttl_ms]]
        if cmds:
            await self.redis.pipeline(cmds)

    async def progress(self, jobs: list[tuple[int, str]]) -> dict[int, str | None]:
        """Running jobs' progress reports as written, for (job id, lease token) pairs: one HGET
        each, in one request."""
        if not jobs:
            return {}
        if len(jobs) == 1:
            ((jid, token),) = jobs
            return {jid: _text(await self.redis.command("HGET", self.keys.progress(token), jid))}
        got = await self.redis.pipeline([["HGET", self.keys.progress(token), jid] for jid, token in jobs])
        return {jid: _text(v) for (jid, _), v in zip(jobs, got, strict=False)}

    async def ended_at(self, job_ids: list[int]) -> dict[int, int]:
        """When each of these jobs lately ended (ms), for those in the done set (one ZMSCORE)."""
        if not job_ids:
            return {}
        got = await self.redis.command("ZMSCORE", self.keys.done, *job_ids)
        return {j: int(float(v)) for j, v in zip(job_ids, got or [], strict=False) if v is not None}

    async def arm_sweep(self, now_ms: int) -> None:
        """Jobs were enqueued inside an application's transaction: until the window ends, claims
        run the dispatch sweep now and then (see reconcile.sweep)."""
        until = now_ms + SWEEP_WINDOW_MS
        await self.redis.script(
            ARM_SWEEP, [self.keys.sweep], [now_ms + SWEEP_EVERY_MS, until, _expiry(SWEEP_WINDOW_MS)]
        )

    # --- clock-based turns and locks ----------------------------------------------------------

    async def take_turns(self, keys: list[str], now_ms: int, interval_ms: int) -> list[bool]:
        """For each marker, whether this caller takes its turn now (and moves it interval_ms on)."""
        if not keys:
            return []
        return _turn_taken(await self.redis.script(TURN, keys, [now_ms, interval_ms, _expiry(interval_ms)]))

    async def take_turn(self, key: str, now_ms: int, interval_ms: int) -> bool:
        return (await self.take_turns([key], now_ms, interval_ms))[0]

    async def reset_turn(self, key: str, now_ms: int) -> None:
        """Make a marker due again from now (a task that left work behind)."""
        await self.redis.command("SET", key, now_ms, "PX", TURN_EXPIRY_SLACK_MS)

    async def try_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        """A lock in real time (its holder may die): only `owner` releases it (`unlock`)."""
        return _won(await self.redis.command("SET", key, owner, "NX", "PX", ttl_ms))

    async def unlock(self, key: str, owner: str) -> None:
        await self.redis.script(UNLOCK, [key], [owner])

    # --- queues -------------------------------------------------------------------------------

    async def set_paused(self, queue: str, paused: bool) -> None:
        await self.redis.command("SADD" if paused else "SREM", self.keys.paused, queue)

    async def paused(self) -> set[str]:
        return set(await self.redis.command("SMEMBERS", self.keys.paused) or [])

    async def known_queues(self) -> set[str]:
        return set(await self.redis.command("SMEMBERS", self.keys.queues) or [])

    async def prune_queues(self, queues: Iterable[str]) -> set[str]:
        """Remove from the queue set those of `queues` whose index is empty; returns them."""
        names = sorted(queues)
        if not names:
            return set()
        keys = [self.keys.queues]
        for q in names:
            keys += [self.keys.delayed(q), self.keys.processing(q), *self.keys.ready_all(q)]
        return set(await self.redis.script(PRUNE, keys, names) or [])

    async def forget_delayed(self, queue: str, member: str) -> None:
        await self.redis.command("ZREM", self.keys.delayed(queue), member)

    async def cancelled(self, queue: str, member: str, job_id: int, now_ms: int, rows: list[dict[str, Any]]) -> None:
        """A job was cancelled: out of its delayed set, into the done set (its waiters answer), and
        its completion callback (`rows`) indexed, in one request."""
        cmds: list[list[Any]] = [["ZREM", self.keys.delayed(queue), member]]
        cmds += [
            ["ZADD", self.keys.done, now_ms, job_id],
            ["ZREMRANGEBYSCORE", self.keys.done, "-inf", now_ms - DONE_WINDOW_MS],
        ]
        cmds += self._push_commands(rows)
        await self.redis.pipeline(cmds)

    async def ended(self, job_ids: list[int], now_ms: int) -> None:
        """Jobs ended outside a drain's acknowledgement (cancelled down a dependency graph): into
        the done set, so that their waiters in other processes answer. One request."""
        if not job_ids:
            return
        members: list[Any] = []
        for jid in job_ids:
            members += [now_ms, jid]
        await self.redis.pipeline(
            [["ZADD", self.keys.done, *members], ["ZREMRANGEBYSCORE", self.keys.done, "-inf", now_ms - DONE_WINDOW_MS]]
        )

    async def ping(self) -> None:
        await self.redis.command("PING")

    async def forget_prefix(self) -> int:
        """Delete every key of this prefix (a test harness's teardown): SCAN, then DEL in batches."""
        cursor, deleted = "0", 0
        while True:
            cursor, keys = await self.redis.command("SCAN", cursor, "MATCH", f"{self.keys.prefix}:*", "COUNT", 1000)
            if keys:
                deleted += int(await self.redis.command("DEL", *keys) or 0)
            if str(cursor) == "0":
                return deleted

    # --- flow control -------------------------------------------------------------------------

    async def set_limits(self, limits: dict[str, dict[str, str | None]]) -> None:
        """Mirror queues' limits into their `limits` HASH (claim.lua); None removes a field. The
        fields claim.lua and ack.lua keep there themselves (p, hold) are left alone."""
        cmds: list[list[Any]] = []
        for q, fields in sorted(limits.items()):
            put = [x for f, v in fields.items() if v is not None for x in (f, v)]
            gone = [f for f, v in fields.items() if v is None]
            if put:
                cmds.append(["HSET", self.keys.limits(q), *put])
            if gone:
                cmds.append(["HDEL", self.keys.limits(q), *gone])
        if cmds:
            await self.redis.pipeline(cmds)

    async def set_rate_state(self, tats: dict[str, dict[str, float]]) -> None:
        """Rates' theoretical arrival times per queue and scope (reconcile, after a flush)."""
        cmds = [
            ["HSET", self.keys.tat(q), *[x for s, t in fields.items() for x in (s, t)]]
            for q, fields in sorted(tats.items())
            if fields
        ]
        if cmds:
            await self.redis.pipeline(cmds)

    async def flow_stats(self, queues: list[str], now_ms: int) -> dict[str, dict[str, Any]]:
        """Per queue: running jobs (live leases), parked jobs, the scopes with the most waiting,
        and time spent gated. Two requests (the second only where jobs are parked)."""
        cmds: list[list[Any]] = []
        for q in queues:
            cmds += [
                ["ZCOUNT", self.keys.processing(q), f"({now_ms}", "+inf"],
                ["ZCARD", self.keys.parked(q)],
                ["ZRANGE", self.keys.parked_keys(q), 0, 49],
                ["HMGET", self.keys.limits(q), "gs", "gt"],
            ]
        res = await self.redis.pipeline(cmds) if cmds else []
        out: dict[str, dict[str, Any]] = {}
        counts: list[list[Any]] = []
        owners: list[tuple[str, str]] = []
        for i, q in enumerate(queues):
            running, parked, keys, (since, total) = res[4 * i : 4 * i + 4]
            gated_since = int(float(since)) if since is not None else None
            out[q] = {
                "running": int(running or 0),
                "parked": int(parked or 0),
                "top_parked": [],
                # Time spent with work waiting on a limit: the periods that ended, plus the one
                # still going (claim.lua keeps both).
                "gated_ms": int(float(total or 0)) + (max(0, now_ms - gated_since) if gated_since else 0),
                "gated_since_ms": gated_since,
            }
            for scope in keys or []:
                counts.append(["ZLEXCOUNT", self.keys.parked(q), f"[{scope}|", f"[{scope}|\xff"])
                owners.append((q, scope))
        if counts:
            for (q, scope), n in zip(owners, await self.redis.pipeline(counts), strict=True):
                out[q]["top_parked"].append({"scope": scope, "parked": int(n or 0)})
            for q in out:
                out[q]["top_parked"] = sorted(out[q]["top_parked"], key=lambda x: -x["parked"])[:10]
        return out

    # --- schedules ----------------------------------------------------------------------------

    async def mark_schedules_synced(self, code_hash: str) -> None:
        await self.redis.command("SET", self.keys.schedules_synced, code_hash)

    async def reindex_schedules(self, due: dict[str, int], *, rebuilt: bool) -> None:
        """The schedules' due index from Postgres: replaced after a flush (`rebuilt`), else only
        added where missing (a score a claim has just leased must not be moved back)."""
        cmds: list[list[Any]] = [["DEL", self.keys.schedules]] if rebuilt else []
        if due:
            flat = [x for sid, ms in sorted(due.items()) for x in (ms, sid)]
            cmds.append(["ZADD", self.keys.schedules, *([] if rebuilt else ["NX"]), *flat])
        if cmds:
            await self.redis.pipeline(cmds)

    # --- reconcile ----------------------------------------------------------------------------

    async def restore_leases(self, rows: Iterable[dict[str, Any]]) -> int:
        """Index the leases of `processing` rows (reconcile), each counted in its flow-control
        scopes if it was not there already; one request. Returns how many were added."""
        by_queue: dict[str, list[Any]] = defaultdict(list)
        for row in rows:
            if row["status"] == "processing" and row.get("lease_expires_at") is not None:
                # The holder's own token: its acknowledgement then removes (and uncounts) this
                # very entry, and one still in the set is not counted twice.
                token = row.get("lease_token") or "r"
                by_queue[row["queue"]] += [to_ms(row["lease_expires_at"]), lease_member(job_member(row), token)]
        if not by_queue:
            return 0
        keys: list[str] = []
        args: list[Any] = []
        for q, pairs in sorted(by_queue.items()):
            keys += [self.keys.processing(q), self.keys.inflight(q)]
            args += [len(pairs) // 2, *pairs]
        return int(await self.redis.script(RESTORE_LEASES, keys, args) or 0)

    async def clear_index(self, queues: Iterable[str]) -> None:
        """Drop the ready, delayed and parked index of these queues (a full rebuild refills them
        from Postgres); leases in the processing sets, and the counts they hold, are kept."""
        k = self.keys
        cmds = [["DEL", *k.ready_all(q), k.delayed(q), k.parked(q), k.parked_keys(q)] for q in sorted(queues)]
        if cmds:
            await self.redis.pipeline(cmds)

    async def restore(self, queues: Iterable[str], paused: Iterable[str], *, rebuilt: bool) -> None:
        """Restore the queue set and the pause flags. After a full rebuild (`rebuilt`) the flags
        are replaced and the epoch marker set; otherwise flags are only added: a resume racing
        the read of Postgres must not be undone."""
        cmds: list[list[Any]] = [["DEL", self.keys.paused]] if rebuilt else []
        paused = sorted(paused)
        if paused:
            cmds.append(["SADD", self.keys.paused, *paused])
        queues = sorted(queues)
        if queues:
            cmds.append(["SADD", self.keys.queues, *queues])
        if rebuilt:
            cmds.append(["SET", self.keys.epoch, secrets.token_hex(8)])
        if cmds:
            await self.redis.pipeline(cmds)

    async def indexed_ids(self, queue: str) -> set[int]:
        """Every job id Redis holds for a queue (ready, delayed, processing, parked): the periodic
        reconcile's side of the diff. One pipeline; reads whole lists, so it is kept rare."""
        cmds: list[list[Any]] = [["LRANGE", k, 0, -1] for k in self.keys.ready_all(queue)]
        cmds += [["ZRANGE", self.keys.delayed(queue), 0, -1], ["ZRANGE", self.keys.processing(queue), 0, -1]]
        cmds.append(["ZRANGE", self.keys.parked(queue), 0, -1])
        res = await self.redis.pipeline(cmds)
        ids: set[int] = set()
        for members in res[:-1]:
            ids.update(member_id(m) for m in members or [])
        ids.update(member_id(m.rsplit("|", 1)[1]) for m in res[-1] or [])  # "scope|order|member"
        return ids

    # --- metrics ------------------------------------------------------------------------------

    async def ready_depths(self, queues: list[str]) -> dict[str, dict[str, int]]:
        """LLEN per priority, ZCARD delayed and processing, for every queue, in one pipeline."""
        cmds: list[list[Any]] = []
        for q in queues:
            cmds += [["LLEN", self.keys.ready(q, p)] for p in range(10)]
            cmds += [["ZCARD", self.keys.delayed(q)], ["ZCARD", self.keys.processing(q)]]
        res = await self.redis.pipeline(cmds) if cmds else []
        out: dict[str, dict[str, int]] = {}
        for i, q in enumerate(queues):
            chunk = res[i * 12 : (i + 1) * 12]
            d = {f"ready_{p}": int(chunk[p] or 0) for p in range(10)}
            d["delayed"] = int(chunk[10] or 0)
            d["processing"] = int(chunk[11] or 0)
            out[q] = d
        return out

    # --- auth throttling and replay protection (issue 8) ---
    # Failed credentials are counted in fixed windows of the engine's clock: the window's index is
    # part of the key, so a test moves its FakeClock to the next window instead of waiting for a
    # TTL, and the keys expire by themselves two windows later. Only failures cost a request; a
    # valid credential never reaches Redis for this.

    async def auth_failure(self, address: str, now_ms: int, window_ms: int) -> tuple[int, int]:
        """Count one failed credential from `address`: one request. Answers (failures from this
        address, failures from everyone) in the current window, this one included."""
        window = now_ms // window_ms
        base = f"{self.keys.prefix}:authfail:{window}"
        raw = await self.redis.script(AUTH_FAILURE, [f"{base}:addr:{address}", f"{base}:all"], [2 * window_ms])
        return int(raw[0]), int(raw[1])

    # A QStash token (`jti`) is "run:<owner>" while the drain it started runs (until `running_ms`,
    # in case that process dies) and "done" once that drain succeeded, until the token expires;
    # a drain that failed deletes its own "run" marker, so QStash's retry of the same message is
    # accepted, while a duplicate arriving during the run is not.

    async def token_begin(self, jti: str, owner: str, running_ms: int) -> str | None:
        """Mark the token in flight for `owner`; None when this call did, else the marker found
        ("run:..." or "done"). One request."""
        found = await self.redis.script(TOKEN_BEGIN, [self.keys.nonce_prefix + jti], [f"run:{owner}", running_ms])
        return str(found) if found else None

    async def token_done(self, jti: str, ttl_ms: int) -> None:
        await self.redis.command("SET", self.keys.nonce_prefix + jti, "done", "PX", ttl_ms)

    async def token_abandon(self, jti: str, owner: str) -> None:
        """Forget the in-flight marker, if it is still `owner`'s (not one a later retry set)."""
        await self.redis.script(TOKEN_ABANDON, [self.keys.nonce_prefix + jti], [f"run:{owner}"])


AUTH_FAILURE = Script(
    "auth_failure",
    """
-- Count a failed credential. KEYS[1] the address's counter for this window, KEYS[2] everyone's.
-- ARGV[1] how long the counters live, in ms (two windows). Returns {address count, total count}.
-- Commands: INCR x2 (+ PEXPIRE x2 on a window's first failure).
local a = redis.call("INCR", KEYS[1])
if a == 1 then redis.call("PEXPIRE", KEYS[1], ARGV[1]) end
local t = redis.call("INCR", KEYS[2])
if t == 1 then redis.call("PEXPIRE", KEYS[2], ARGV[1]) end
return {a, t}
""",
)
TOKEN_BEGIN = Script(
    "token_begin",
    """
-- Take a QStash token for a drain. KEYS[1] the token's marker; ARGV[1] "run:<owner>"; ARGV[2] ms
-- it lives. Returns the marker already there ("run:..." or "done"), or false when it set ours.
local found = redis.call("GET", KEYS[1])
if found then return found end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
return false
""",
)
TOKEN_ABANDON = Script(
    "token_abandon",
    """
-- Delete KEYS[1] if it still holds ARGV[1] (our in-flight marker). Returns 1 if deleted.
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0
""",
)


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _age_key(member: str) -> tuple[int, int]:
    """(enqueued ms, id) of a member: the order in which a ready list pops them."""
    _, ms, jid = member.split(":")[:3]
    return int(ms), int(jid)


def _expiry(interval_ms: int) -> int:
    return max(1, interval_ms) + TURN_EXPIRY_SLACK_MS


def _turn_taken(reply: Any) -> list[bool]:
    return [int(x or 0) == 1 for x in (reply or [])]
