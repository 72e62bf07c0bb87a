"""What the drains of one process share between drains: the queues they know, the rotation over
them, and whether a push failed in this process (so the next drain reconciles first)."""

from __future__ import annotations

from collections.abc import Iterable


class DrainState:
    def __init__(self, queues: Iterable[str] = (), type_limits: str = "") -> None:
        # The registry's queues (and "default") are always drained; the rest follows the Redis
        # queue set, which each claim returns: queues appear as they are enqueued to, and leave
        # when reconcile prunes them (no unfinished jobs, no pause flag, no settings).
        self.fixed: frozenset[str] = frozenset(queues) | {"default"}
        self.queues: set[str] = set(self.fixed)
        # The registry's types' limits as claim.lua reads them ("tag=spec;..."): reconcile rebuilds
        # their rates' state after a flush.
        self.type_limits = type_limits
        # Set when a push failed after its insert: the next drain in this process reconciles.
        self.needs_reconcile = False
        self._rotation = 0

    def queue_order(self) -> list[str]:
        """The queues for the next claim, starting one further along each time: the claim fills
        its batch from the first queues it visits, so a fixed order would let one busy queue
        starve every queue after it."""
        queues = sorted(self.queues)
        self._rotation = (self._rotation + 1) % max(1, len(queues))
        return queues[self._rotation :] + queues[: self._rotation]

    def known(self, queue_set: Iterable[str]) -> None:
        """The Redis queue set as a claim returned it."""
        self.queues = set(queue_set) | self.fixed
