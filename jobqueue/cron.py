"""When a schedule's ticks fall: the one place that knows about cron expressions and time zones,
behind `Timing.next_after` (so the cron library can be swapped: cronsim today).

- `cron` + `tz`: a 5-field cron expression read in an IANA time zone, evaluated by cronsim, which
  follows Debian cron's rules across DST changes: a job at a fixed local time that falls in the
  spring-forward gap runs right after the gap (a daily 02:30 runs at 03:00 that day), and one in
  the repeated hour of fall-back runs once (at the first 01:30); jobs that run every hour, or more
  often, run on every real hour (both 01:00s on fall-back night, none in the missing hour).
  tests/unit/test_cron.py writes the UTC instants out for New York, Berlin, Lord Howe (a 30-minute
  shift) and São Paulo (no DST since 2019).
- `every_ms`: a fixed interval aligned to the Unix epoch (ticks at every multiple of it), so that
  every process computes the same ticks; it ignores time zones and DST.

Every tick is a UTC instant with millisecond precision: that instant is the tick's identity
(`scheduled_for`, and the unique key per schedule and tick).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

MIN_EVERY_MS = 1000
MAX_EVERY_MS = 366 * 24 * 3600 * 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidTiming(ValueError):
    """The cron expression, time zone or interval cannot be used (the message says which)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Timing:
    cron: str | None = None
    tz: str = "UTC"
    every_ms: int | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every_ms is None):
            raise InvalidTiming("cron", "give either cron (with tz) or every_ms, not both and not neither")
        if self.every_ms is not None:
            if not MIN_EVERY_MS <= self.every_ms <= MAX_EVERY_MS:
                raise InvalidTiming("every_ms", f"every_ms must be from {MIN_EVERY_MS} to {MAX_EVERY_MS}")
            return
        assert self.cron is not None
        if len(self.cron.split()) != 5:
            raise InvalidTiming("cron", "cron must have 5 fields: minute hour day-of-month month day-of-week")
        try:
            zone = ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidTiming("tz", f"unknown time zone {self.tz!r} (an IANA name such as Europe/Berlin)") from None
        try:
            next(CronSim(self.cron, datetime(2000, 1, 1, tzinfo=zone)))
        except (CronSimError, StopIteration) as e:
            raise InvalidTiming("cron", f"invalid cron expression {self.cron!r}: {e or 'it never fires'}") from None

    def next_after(self, after: datetime) -> datetime:
        """The first tick strictly after `after` (an aware datetime), as a UTC instant."""
        if self.every_ms is not None:
            ms = (after - _EPOCH) // timedelta(milliseconds=1)
            return _EPOCH + timedelta(milliseconds=(ms // self.every_ms + 1) * self.every_ms)
        assert self.cron is not None
        local = after.astimezone(ZoneInfo(self.tz))
        try:
            tick = next(CronSim(self.cron, local))
        except StopIteration:  # cronsim gives up after 50 years
            return datetime.max.replace(tzinfo=UTC)
        return tick.astimezone(UTC)

    def ticks(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """The ticks in (after, until], at most `limit` of them, oldest first."""
        out: list[datetime] = []
        t = self.next_after(after)
        while t <= until and len(out) < limit:
            out.append(t)
            t = self.next_after(t)
        return out

    def latest_until(
        self, after: datetime, until: datetime, *, count_up_to: int = 10_000
    ) -> tuple[datetime | None, int]:
        """The last tick in (after, until], and how many ticks that window holds (counted up to
        `count_up_to`: a minutely schedule down for a year does not count half a million)."""
        if self.every_ms is not None:
            first = self.next_after(after)
            if first > until:
                return None, 0
            every = timedelta(milliseconds=self.every_ms)
            n = (until - first) // every + 1
            return first + (n - 1) * every, min(n, count_up_to)
        assert self.cron is not None
        zone = ZoneInfo(self.tz)
        # cronsim works in whole seconds; reversed from one second past `until`, its first tick is
        # the last one at or before `until`.
        before = (until + timedelta(seconds=1)).replace(microsecond=0).astimezone(zone)
        try:
            last = next(CronSim(self.cron, before, reverse=True)).astimezone(UTC)
        except StopIteration:
            return None, 0
        if last <= after or last > until:
            return None, 0
        return last, len(self.ticks(after, last, count_up_to))
