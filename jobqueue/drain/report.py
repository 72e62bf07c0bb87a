"""What a drain reports, and the outcome of one job on its way to the recorder."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

GATED_ON_SLOT = 9 * 10**15  # claim.lua's BLOCKED: waiting for a slot, not for a time
# The eight fields of the /api/workers contract (DESIGN.md section 5), plus `gated_until`.
CONTRACT = ("claimed", "completed", "retried", "failed", "released", "recovered", "duration_ms", "more")


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
    claims: int = 0  # claim requests that took something
    dropped: int = 0  # popped ids Postgres did not grant (gone, finished, cancelled, duplicates)
    reconciled: int = 0
    fired: int = 0  # jobs made by schedules' ticks
    rate_limited: int = 0  # jobs whose handler said "slow down", back in their group
    heartbeats: int = 0
    # Work was left waiting on a flow-control limit when the drain last looked: until when it may
    # change (GATED_ON_SLOT: when a slot frees), and in which queues. None: not gated.
    gated_until_ms: int | None = None
    gated_queues: list[str] = field(default_factory=list)
    # Sizes of the groups the recorder wrote (one statement and one acknowledgement each).
    groups: Sample = field(default_factory=lambda: Sample())
    # Milliseconds from a job's grant to its outcome being recorded, for the benchmarks.
    latencies_ms: Sample = field(default_factory=lambda: Sample())
    # Jobs that reached `failed` in this drain (id, type, queue, error): for alerts, not the response.
    dead: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for internal in ("dead", "groups", "latencies_ms"):
            d.pop(internal)
        d["group_count"] = self.groups.seen
        return d

    def contract(self) -> dict[str, Any]:
        d = self.as_dict()
        out = {k: d[k] for k in CONTRACT}
        out["gated_until"] = self.gated_until()
        return out

    def gated_until(self) -> str | None:
        """When work held back by a limit may start (ISO-8601 UTC); "slot" when it waits for a
        running job to finish; None when nothing waits on a limit."""
        if self.gated_until_ms is None:
            return None
        if self.gated_until_ms >= GATED_ON_SLOT:
            return "slot"
        from datetime import UTC, datetime

        return datetime.fromtimestamp(self.gated_until_ms / 1000, UTC).isoformat().replace("+00:00", "Z")

    @property
    def gated(self) -> bool:
        """Work waits on a flow-control limit (rather than: there is nothing to do)."""
        return self.gated_until_ms is not None

    @property
    def idle(self) -> bool:
        """Nothing was claimed, recovered or rebuilt: a quiet tick."""
        return not (self.claimed or self.recovered or self.reconciled or self.dead or self.dropped or self.fired)


@dataclass
class Outcome:
    """A job's result as the `finish` statement writes it. `outcome` is completed | retried |
    failed | released (claimed but never started: the attempt is given back)."""

    row: dict[str, Any]
    outcome: str
    status: str
    token: str = ""
    result: str | None = None
    error: str | None = None
    run_at: datetime | None = None
    duration_ms: int = 0
    granted_at: float = 0.0  # loop time of the grant, for latencies
    progress: str | None = None  # the handler's last progress report (JSON), kept with the outcome


def dead_entry(row: dict[str, Any], error: str | None) -> dict[str, Any]:
    return {"id": row["id"], "type": row.get("type"), "queue": row.get("queue"), "error": (error or "")[:500]}


class Sample(list[float]):
    """At most `size` values, a uniform sample of all offered (reservoir sampling): a worker that
    drains for days keeps a bounded report."""

    def __init__(self, size: int = 10_000) -> None:
        super().__init__()
        self.size = size
        self.seen = 0

    def offer(self, value: float) -> None:
        import random

        self.seen += 1
        if len(self) < self.size:
            self.append(value)
        else:
            i = random.randrange(self.seen)
            if i < self.size:
                self[i] = value
