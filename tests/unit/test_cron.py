"""The DST table: for each zone and transition, the UTC instants at which `0 2 * * *`, `30 1 * * *`,
`0 * * * *` and `*/30 * * * *` fire over the first five hours of the local day (cronsim, Debian
cron's rules). Read it as the contract of jobqueue/cron.py: a fixed-time job in the spring gap runs
right after it, one in the repeated hour runs once (its first occurrence); hourly and finer jobs run
on every real occurrence and not in the missing hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from jobqueue.cron import InvalidTiming, Timing

EXPRESSIONS = ["0 2 * * *", "30 1 * * *", "0 * * * *", "*/30 * * * *"]
# zone, local day, what happens that night, then per expression the UTC instants at which it
# fires from the local midnight on (written out, checked by hand against the zone's rules).
TABLE = [
    (
        "America/New_York",
        "2026-03-08",
        "spring forward: 02:00 EST -> 03:00 EDT",
        ["2026-03-08 07:00"],  # 0 2 * * *
        ["2026-03-08 06:30"],  # 30 1 * * *
        [
            "2026-03-08 05:00",
            "2026-03-08 06:00",
            "2026-03-08 07:00",
            "2026-03-08 08:00",
            "2026-03-08 09:00",
        ],  # 0 * * * *
        [
            "2026-03-08 05:00",
            "2026-03-08 05:30",
            "2026-03-08 06:00",
            "2026-03-08 06:30",
            "2026-03-08 07:00",
            "2026-03-08 07:30",
            "2026-03-08 08:00",
            "2026-03-08 08:30",
            "2026-03-08 09:00",
            "2026-03-08 09:30",
        ],  # */30 * * * *
    ),
    (
        "America/New_York",
        "2026-11-01",
        "fall back: 02:00 EDT -> 01:00 EST",
        ["2026-11-01 07:00"],  # 0 2 * * *
        ["2026-11-01 05:30"],  # 30 1 * * *
        [
            "2026-11-01 04:00",
            "2026-11-01 05:00",
            "2026-11-01 06:00",
            "2026-11-01 07:00",
            "2026-11-01 08:00",
        ],  # 0 * * * *
        [
            "2026-11-01 04:00",
            "2026-11-01 04:30",
            "2026-11-01 05:00",
            "2026-11-01 05:30",
            "2026-11-01 06:00",
            "2026-11-01 06:30",
            "2026-11-01 07:00",
            "2026-11-01 07:30",
            "2026-11-01 08:00",
            "2026-11-01 08:30",
        ],  # */30 * * * *
    ),
    (
        "Europe/Berlin",
        "2026-03-29",
        "spring forward: 02:00 CET -> 03:00 CEST",
        ["2026-03-29 01:00"],  # 0 2 * * *
        ["2026-03-29 00:30"],  # 30 1 * * *
        [
            "2026-03-28 23:00",
            "2026-03-29 00:00",
            "2026-03-29 01:00",
            "2026-03-29 02:00",
            "2026-03-29 03:00",
        ],  # 0 * * * *
        [
            "2026-03-28 23:00",
            "2026-03-28 23:30",
            "2026-03-29 00:00",
            "2026-03-29 00:30",
            "2026-03-29 01:00",
            "2026-03-29 01:30",
            "2026-03-29 02:00",
            "2026-03-29 02:30",
            "2026-03-29 03:00",
            "2026-03-29 03:30",
        ],  # */30 * * * *
    ),
    (
        "Europe/Berlin",
        "2026-10-25",
        "fall back: 03:00 CEST -> 02:00 CET",
        ["2026-10-25 00:00"],  # 0 2 * * *
        ["2026-10-24 23:30"],  # 30 1 * * *
        [
            "2026-10-24 22:00",
            "2026-10-24 23:00",
            "2026-10-25 00:00",
            "2026-10-25 01:00",
            "2026-10-25 02:00",
        ],  # 0 * * * *
        [
            "2026-10-24 22:00",
            "2026-10-24 22:30",
            "2026-10-24 23:00",
            "2026-10-24 23:30",
            "2026-10-25 00:00",
            "2026-10-25 00:30",
            "2026-10-25 01:00",
            "2026-10-25 01:30",
            "2026-10-25 02:00",
            "2026-10-25 02:30",
        ],  # */30 * * * *
    ),
    (
        "Australia/Lord_Howe",
        "2026-10-04",
        "spring forward by 30 minutes: 02:00 -> 02:30 (+10:30 -> +11)",
        ["2026-10-03 15:30"],  # 0 2 * * *
        ["2026-10-03 15:00"],  # 30 1 * * *
        [
            "2026-10-03 13:30",
            "2026-10-03 14:30",
            "2026-10-03 16:00",
            "2026-10-03 17:00",
            "2026-10-03 18:00",
        ],  # 0 * * * *
        [
            "2026-10-03 13:30",
            "2026-10-03 14:00",
            "2026-10-03 14:30",
            "2026-10-03 15:00",
            "2026-10-03 15:30",
            "2026-10-03 16:00",
            "2026-10-03 16:30",
            "2026-10-03 17:00",
            "2026-10-03 17:30",
            "2026-10-03 18:00",
        ],  # */30 * * * *
    ),
    (
        "Australia/Lord_Howe",
        "2026-04-05",
        "fall back by 30 minutes: 02:00 -> 01:30 (+11 -> +10:30)",
        ["2026-04-04 15:30"],  # 0 2 * * *
        ["2026-04-04 14:30"],  # 30 1 * * *
        [
            "2026-04-04 13:00",
            "2026-04-04 14:00",
            "2026-04-04 15:30",
            "2026-04-04 16:30",
            "2026-04-04 17:30",
        ],  # 0 * * * *
        [
            "2026-04-04 13:00",
            "2026-04-04 13:30",
            "2026-04-04 14:00",
            "2026-04-04 14:30",
            "2026-04-04 15:00",
            "2026-04-04 15:30",
            "2026-04-04 16:00",
            "2026-04-04 16:30",
            "2026-04-04 17:00",
            "2026-04-04 17:30",
        ],  # */30 * * * *
    ),
    (
        "America/Sao_Paulo",
        "2026-11-01",
        "no DST since 2019: the day the clocks used to go forward",
        ["2026-11-01 05:00"],  # 0 2 * * *
        ["2026-11-01 04:30"],  # 30 1 * * *
        [
            "2026-11-01 03:00",
            "2026-11-01 04:00",
            "2026-11-01 05:00",
            "2026-11-01 06:00",
            "2026-11-01 07:00",
        ],  # 0 * * * *
        [
            "2026-11-01 03:00",
            "2026-11-01 03:30",
            "2026-11-01 04:00",
            "2026-11-01 04:30",
            "2026-11-01 05:00",
            "2026-11-01 05:30",
            "2026-11-01 06:00",
            "2026-11-01 06:30",
            "2026-11-01 07:00",
            "2026-11-01 07:30",
        ],  # */30 * * * *
    ),
    (
        "America/Sao_Paulo",
        "2026-02-15",
        "no DST since 2019: the day the clocks used to go back",
        ["2026-02-15 05:00"],  # 0 2 * * *
        ["2026-02-15 04:30"],  # 30 1 * * *
        [
            "2026-02-15 03:00",
            "2026-02-15 04:00",
            "2026-02-15 05:00",
            "2026-02-15 06:00",
            "2026-02-15 07:00",
        ],  # 0 * * * *
        [
            "2026-02-15 03:00",
            "2026-02-15 03:30",
            "2026-02-15 04:00",
            "2026-02-15 04:30",
            "2026-02-15 05:00",
            "2026-02-15 05:30",
            "2026-02-15 06:00",
            "2026-02-15 06:30",
            "2026-02-15 07:00",
            "2026-02-15 07:30",
        ],  # */30 * * * *
    ),
]


@pytest.mark.parametrize(("zone", "day", "what", "at_2", "at_1_30", "hourly", "half_hourly"), TABLE)
def test_dst_table(
    zone: str, day: str, what: str, at_2: list[str], at_1_30: list[str], hourly: list[str], half_hourly: list[str]
) -> None:
    start = datetime.fromisoformat(day).replace(tzinfo=ZoneInfo(zone)).astimezone(UTC) - timedelta(minutes=1)
    end = start + timedelta(hours=5)
    for expr, expected in zip(EXPRESSIONS, (at_2, at_1_30, hourly, half_hourly), strict=True):
        got = [t.strftime("%Y-%m-%d %H:%M") for t in Timing(cron=expr, tz=zone).ticks(start, end, 50)]
        assert got == expected, (zone, day, expr)


def test_every_ms_is_aligned_to_the_epoch_and_ignores_dst() -> None:
    t = Timing(every_ms=15 * 60 * 1000)
    after = datetime(2026, 3, 8, 6, 59, 59, 999000, tzinfo=UTC)
    assert t.next_after(after) == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    assert t.next_after(datetime(2026, 3, 8, 7, 0, tzinfo=UTC)) == datetime(2026, 3, 8, 7, 15, tzinfo=UTC)


def test_latest_tick_and_count_after_downtime() -> None:
    t = Timing(cron="*/5 * * * *")
    start = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    latest, n = t.latest_until(start - timedelta(milliseconds=1), start + timedelta(hours=3))
    assert (latest, n) == (start + timedelta(hours=3), 37)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * *"}, "cron"),
        ({"cron": "0 3 * * *", "tz": "Mars/Olympus"}, "tz"),
        ({"cron": "0 3 * * *", "every_ms": 60_000}, "cron"),
        ({}, "cron"),
        ({"every_ms": 999}, "every_ms"),
    ],
)
def test_bad_timing_names_its_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidTiming) as e:
        Timing(**kwargs)  # type: ignore[arg-type]
    assert e.value.field == field
