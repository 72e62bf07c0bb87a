"""Every Redis key name and the member encoding, in one place (see DESIGN.md section 3)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

PRIORITIES = range(10)  # 0..9, higher runs first
MAX_PRIORITY = 9


@dataclass(frozen=True)
class Keys:
    prefix: str = "jq"

    def ready(self, queue: str, priority: int) -> str:
        return f"{self.prefix}:{queue}:ready:{priority}"

    def ready_all(self, queue: str) -> list[str]:
        """Highest priority first: LMPOP takes from the first non-empty list."""
        return [self.ready(queue, p) for p in range(MAX_PRIORITY, -1, -1)]

    def delayed(self, queue: str) -> str:
        return f"{self.prefix}:{queue}:delayed"

    def processing(self, queue: str) -> str:
        return f"{self.prefix}:{queue}:processing"

    # Flow control (claim.lua and ack.lua say what each holds).
    def limits(self, queue: str) -> str:
        return f"{self.prefix}:{queue}:limits"

    def inflight(self, queue: str) -> str:
        return f"{self.prefix}:{queue}:inflight"

    def tat(self, queue: str) -> str:
        return f"{self.prefix}:{queue}:tat"

    def parked(self, queue: str) -> str:
        return f"{self.prefix}:{queue}:parked"

    def parked_keys(self, queue: str) -> str:
        return f"{self.prefix}:{queue}:parked_keys"

    def claim_keys(self, queue: str) -> list[str]:
        """A queue's 17 keys in claim.lua's order."""
        return [
            self.delayed(queue),
            self.processing(queue),
            self.limits(queue),
            self.inflight(queue),
            self.tat(queue),
            self.parked(queue),
            self.parked_keys(queue),
            *self.ready_all(queue),
        ]

    def ack_keys(self, queue: str) -> list[str]:
        """A queue's 17 keys in ack.lua's order."""
        return [
            self.processing(queue),
            self.delayed(queue),
            self.inflight(queue),
            self.parked(queue),
            self.parked_keys(queue),
            self.limits(queue),
            self.tat(queue),
            *self.ready_all(queue),
        ]

    def progress(self, lease_token: str) -> str:
        """HASH per claim (its lease token): job id -> the running job's last progress report,
        expiring shortly after the claiming drain's leases could have (progress.py)."""
        return f"{self.prefix}:progress:{lease_token}"

    @property
    def done(self) -> str:
        """ZSET of job ids that ended lately, scored by the ms they ended: the change signal that
        waiting callers (GET /api/jobs/{id}?wait_s=) in any process poll (waiting.py)."""
        return f"{self.prefix}:done"

    @property
    def queues(self) -> str:
        """SET of every queue name that has ever been enqueued to (the drain discovers queues here)."""
        return f"{self.prefix}:queues"

    @property
    def paused(self) -> str:
        """SET of paused queue names (mirrors the `queues` table; restored by reconcile)."""
        return f"{self.prefix}:paused"

    @property
    def epoch(self) -> str:
        """Set by a full reconcile. Its absence means Redis lost its data (or never had it)."""
        return f"{self.prefix}:epoch"

    @property
    def reconcile_due(self) -> str:
        """When the next periodic reconcile is due, in ms of the engine's clock."""
        return f"{self.prefix}:reconcile:next"

    @property
    def sweep(self) -> str:
        """ "due_ms:until_ms": jobs were enqueued inside application transactions; until `until`,
        claims run the dispatch sweep every so often in case one committed without its push."""
        return f"{self.prefix}:sweep"

    @property
    def schedules(self) -> str:
        """ZSET: schedule id -> its next tick in ms (Postgres' next_run_at; a claim that takes a
        due one moves it a short lease ahead so parallel drains do not all look it up)."""
        return f"{self.prefix}:schedules"

    @property
    def schedules_synced(self) -> str:
        """The hash of the schedules declared in code that were last synced to Postgres."""
        return f"{self.prefix}:schedules:synced"

    @property
    def kick_at(self) -> str:
        """The due time (ms) a delayed kick was last published for (one publish per due time)."""
        return f"{self.prefix}:kick:at"

    @property
    def reconcile_lock(self) -> str:
        return f"{self.prefix}:reconcile:lock"

    @property
    def kick(self) -> str:
        """Debounces drain kicks after enqueue."""
        return f"{self.prefix}:kick"

    def alert(self, kind: str, queue: str) -> str:
        return f"{self.prefix}:alert:{kind}:{queue}"

    @property
    def housekeeping(self) -> str:
        return f"{self.prefix}:housekeeping:next"

    @property
    def nonce_prefix(self) -> str:
        return f"{self.prefix}:nonce:"


def encode_member(priority: int, enqueued_ms: int, job_id: int, limiter: str = "") -> str:
    """The score string `{999999-priority:06d}:{enqueued_ms}:{id}` pushed onto the ready lists,
    followed by `:{type tag}:{group hash}` (`limiter`) for a job that flow control counts: one with
    a group, or of a type that has limits (claim.lua)."""
    member = f"{999999 - priority:06d}:{enqueued_ms}:{job_id}"
    return f"{member}:{limiter}" if limiter else member


def member_id(member: str) -> int:
    """The job id of a member; a lease member carries a `|token` suffix."""
    return int(member.split("|", 1)[0].split(":", 3)[2])


def limiter_suffix(type_tag: str, group: str | None) -> str:
    """`{type tag}:{group hash}` (either may be empty), or "" for a job nothing counts."""
    if not type_tag and group is None:
        return ""
    gh = hashlib.sha256(group.encode()).hexdigest()[:12] if group is not None else ""
    return f"{type_tag}:{gh}"


def type_tag(name: str) -> str:
    """A job type's short name in members and limiter scopes."""
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def has_scopes(member: str) -> bool:
    """Whether flow control counts this member (it carries a limiter suffix)."""
    return member.count(":") > 2


def member_priority(member: str) -> int:
    return 999999 - int(member[:6])


def lease_member(member: str, token: str) -> str:
    """A processing-set member. The token keeps a duplicate pop of the same job from overwriting
    (or, on its ack, removing) the lease entry of the drain that really runs it."""
    return f"{member}|{token}"


def strip_lease(member: str) -> str:
    return member.split("|", 1)[0]
