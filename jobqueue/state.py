"""What the drains of one process share between drains: the queues they know, the rotation over
them, and whether a push failed in this process (so the next drain reconciles first)."""

from __future__ import annotations

from collections.abc import Iterable


class DrainState:
    def __init__(self, queues: Iterable[str] = ()) -> None:
        # Grows as claims report queues this process had not seen (the Redis queue set) and as
        # reconcile finds queues with unfinished rows.
        self.queues: set[str] = set(queues) | {"default"}
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
