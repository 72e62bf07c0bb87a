"""Every Redis key name and the member encoding, in one place (see DESIGN.md section 3)."""

from __future__ import annotations

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


def encode_member(priority: int, enqueued_ms: int, job_id: int) -> str:
    """The score string `{999999-priority:06d}:{enqueued_ms}:{id}` pushed onto the ready lists."""
    return f"{999999 - priority:06d}:{enqueued_ms}:{job_id}"


def member_id(member: str) -> int:
    """The job id of a member; a lease member carries a `|token` suffix."""
    return int(member.split("|", 1)[0].rsplit(":", 1)[1])


def member_priority(member: str) -> int:
    return 999999 - int(member[:6])


def lease_member(member: str, token: str) -> str:
    """A processing-set member. The token keeps a duplicate pop of the same job from overwriting
    (or, on its ack, removing) the lease entry of the drain that really runs it."""
    return f"{member}|{token}"


def strip_lease(member: str) -> str:
    return member.split("|", 1)[0]
