"""Progress reports: `await ctx.progress(percent, message=None, data=None)` in a handler.

A report costs nothing where it is made: it is checked and kept in memory (the latest value wins).
The drain's heartbeat (drain/leases.py), which already runs every `heartbeat_ms` (1 s by default),
writes the reports that changed since their last write, for all of its jobs in one request, riding
in the lease update's request when there is one: per claim, one `HSET {prefix}:progress:{lease
token} id1 report1 id2 report2 ...` and one `PEXPIRE` (2 commands whatever the number of its jobs
that reported), each job at most once per second (`MIN_INTERVAL_MS`, on the engine's clock,
whatever the heartbeat's interval). Never a Postgres statement: the last report goes into the
`finish` statement with the outcome (jobs.progress), and from then on the view reads it there.
While the job runs, `GET /api/jobs/{id}` reads the Redis copy under the lease token Postgres has
for it (one HGET). A claim's hash expires by itself a little after its leases could have, so
nothing is ever deleted; a report also carries its attempt, as a second guard against showing a
previous attempt's value as live.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from .clock import Clock, iso
from .errors import InvalidProgress

# A \u0000 escape that is not itself escaped (as validation.NUL_ESCAPE, one layer up from here).
NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
MIN_INTERVAL_MS = 1000  # at most one write per job per this
# A heartbeat a few ms early (its sleep and the wall clock disagree a little) still writes, so a
# 1 s heartbeat does not turn into one write every 2 s.
INTERVAL_SLACK_MS = 50
MAX_MESSAGE_CHARS = 500
MAX_DATA_BYTES = 4096  # `data` encoded as JSON


def snapshot(clock: Clock, percent: Any, message: Any = None, data: Any = None) -> dict[str, Any]:
    """A checked report, as the view shows it; InvalidProgress says what is wrong."""
    if isinstance(percent, bool) or not isinstance(percent, int | float):
        raise InvalidProgress(f"progress percent must be a number from 0 to 100, not {type(percent).__name__}")
    if not math.isfinite(percent) or not 0 <= percent <= 100:
        raise InvalidProgress(f"progress percent must be a number from 0 to 100, not {percent!r}")
    if message is not None:
        if not isinstance(message, str):
            raise InvalidProgress(f"progress message must be a string, not {type(message).__name__}")
        if len(message) > MAX_MESSAGE_CHARS:
            raise InvalidProgress(f"progress message has {len(message)} characters; the limit is {MAX_MESSAGE_CHARS}")
        if "\x00" in message:
            raise InvalidProgress("progress message contains a NUL character, which Postgres cannot store")
    if data is not None:
        try:
            raw = orjson.dumps(data)
        except (TypeError, orjson.JSONEncodeError) as e:
            raise InvalidProgress(f"progress data must be JSON-serialisable: {e}") from None
        if len(raw) > MAX_DATA_BYTES:
            raise InvalidProgress(f"progress data is {len(raw)} bytes as JSON; the limit is {MAX_DATA_BYTES}")
        if NUL_ESCAPE.search(raw):
            raise InvalidProgress("progress data contains a NUL character, which Postgres cannot store")
        data = orjson.loads(raw)  # what is stored, not a live object the handler may change later
    return {"percent": percent, "message": message, "data": data, "updated_at": iso(clock.now())}


@dataclass
class Reported:
    attempt: int
    token: str  # the claim's lease token: the Redis hash the report goes to
    expires_ms: int  # when the Redis copy may go: past the job's lease (engine clock)
    value: dict[str, Any] | None = None
    dirty: bool = False
    written_ms: int | None = None

    def encoded(self) -> str | None:
        return None if self.value is None else orjson.dumps(self.value).decode()


class ProgressBoard:
    """The reports of one drain's running jobs, until the heartbeat writes them."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.jobs: dict[int, Reported] = {}
        self.writes = 0  # values written to Redis, for the tests

    def start(self, job_id: int, attempt: int, token: str, lease_ms: int) -> None:
        """A job starts; its lease (and so its Redis copy) lasts at most `lease_ms` from now."""
        self.jobs[job_id] = Reported(attempt, token, self.clock.ms() + lease_ms)

    def report(self, job_id: int, value: dict[str, Any]) -> None:
        r = self.jobs.get(job_id)
        if r is not None:
            r.value, r.dirty = value, True

    def finish(self, job_id: int) -> str | None:
        """The job has ended: its last report (JSON, for the outcome), and no more writes."""
        r = self.jobs.pop(job_id, None)
        return None if r is None else r.encoded()

    def due(self) -> list[tuple[str, list[tuple[int, str]], int]]:
        """What the next beat writes, per claim: (lease token, [(job id, report with its
        attempt)], TTL ms), each changed report whose job was last written at least
        MIN_INTERVAL_MS ago; marked written."""
        now = self.clock.ms()
        claims: dict[str, tuple[list[tuple[int, str]], list[int]]] = {}
        for jid, r in self.jobs.items():
            if not r.dirty or (r.written_ms is not None and now - r.written_ms < MIN_INTERVAL_MS - INTERVAL_SLACK_MS):
                continue
            r.dirty, r.written_ms = False, now
            reports, expiries = claims.setdefault(r.token, ([], []))
            reports.append((jid, orjson.dumps({"attempt": r.attempt, **(r.value or {})}).decode()))
            expiries.append(r.expires_ms)
        self.writes += sum(len(reports) for reports, _ in claims.values())
        # The hash lives as long as the longest lease among the claim's jobs that wrote to it.
        return [(token, reports, max(1000, max(exp) - now)) for token, (reports, exp) in claims.items()]


def live(raw: str | None, attempt: int) -> dict[str, Any] | None:
    """A Redis copy as the view shows it, if it is the current attempt's."""
    if raw is None:
        return None
    value: dict[str, Any] = orjson.loads(raw)
    if value.pop("attempt", None) != attempt:
        return None
    return value
