"""Time, injected. Lease, backoff and recovery code asks a Clock; tests move a FakeClock instead of sleeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta


class Clock:
    """Wall-clock time in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def ms(self) -> int:
        """Milliseconds since the epoch: the unit of every score in Redis."""
        return int(time.time() * 1000)


class FakeClock(Clock):
    """A clock that only moves when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC).replace(microsecond=0)

    def now(self) -> datetime:
        return self._now

    def ms(self) -> int:
        return to_ms(self._now)

    def advance(self, ms: int = 0, *, seconds: float = 0) -> None:
        self._now += timedelta(milliseconds=ms, seconds=seconds)


def to_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def iso(dt: datetime) -> str:
    """ISO-8601 in UTC with a Z, as the API renders times (for times written into JSON by SQL)."""
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")
