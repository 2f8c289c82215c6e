"""Recurring schedules: ticks in their time zone across DST changes, intervals, missed ticks."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from jobstream.models.schedules import ScheduleSpec, due, first_tick, tick_job_id

BERLIN = ZoneInfo("Europe/Berlin")


def spec(**fields: object) -> ScheduleSpec:
    base: dict[str, object] = {"name": "s", "job_type": "echo"}
    return ScheduleSpec.model_validate({**base, **fields})


def local(ticks: list[datetime]) -> list[str]:
    return [t.astimezone(BERLIN).strftime("%m-%d %H:%M%z") for t in ticks]


def ticks_from(s: ScheduleSpec, start: datetime, n: int) -> list[datetime]:
    out = []
    for tick in s.ticks_after(start):
        out.append(tick)
        if len(out) == n:
            return out
    return out


def test_a_daily_time_that_does_not_exist_on_the_spring_change_fires_once_right_after() -> None:
    # 2027-03-28: Berlin's clocks jump from 02:00 to 03:00; 02:30 does not exist that day
    s = spec(cron="30 2 * * *", timezone="Europe/Berlin")
    ticks = ticks_from(s, datetime(2027, 3, 27, 12, tzinfo=BERLIN), 3)
    assert local(ticks) == ["03-28 03:00+0200", "03-29 02:30+0200", "03-30 02:30+0200"]


def test_a_daily_time_that_happens_twice_on_the_autumn_change_fires_once() -> None:
    # 2027-10-31: 03:00 goes back to 02:00; 02:30 happens twice, the job runs once
    s = spec(cron="30 2 * * *", timezone="Europe/Berlin")
    ticks = ticks_from(s, datetime(2027, 10, 30, 12, tzinfo=BERLIN), 3)
    assert local(ticks) == ["10-31 02:30+0200", "11-01 02:30+0100", "11-02 02:30+0100"]
    # 24 h of wall clock apart, but 25 h of real time across the change: exact instants
    assert ticks[1] - ticks[0] == timedelta(hours=25)


def test_a_cron_in_utc_and_an_interval_are_untouched_by_a_dst_change() -> None:
    utc = spec(cron="0 * * * *")
    hourly = ticks_from(utc, datetime(2027, 3, 28, 0, 30, tzinfo=UTC), 4)
    assert [t.hour for t in hourly] == [1, 2, 3, 4]
    every = spec(every_s=90 * 60)
    ticks = ticks_from(every, datetime(2027, 3, 28, 0, 10, tzinfo=UTC), 3)
    assert all(b - a == timedelta(minutes=90) for a, b in itertools.pairwise(ticks))
    # counted from the epoch: the same ticks on every replica, whenever it starts
    assert all(int(t.timestamp()) % 5400 == 0 for t in ticks)


def test_every_tick_has_one_job_id() -> None:
    tick = datetime(2027, 1, 1, 3, 0, tzinfo=BERLIN)
    assert tick_job_id("nightly", tick) == tick_job_id("nightly", tick.astimezone(UTC))
    assert tick_job_id("nightly", tick) == "schedule:nightly:2027-01-01T02:00:00.000000Z"
    assert tick_job_id("nightly", tick) != tick_job_id("nightly", tick + timedelta(seconds=1))


@pytest.mark.parametrize(
    ("missed", "catch_up_max", "fired"),
    [
        ("skip", 1, []),  # the last tick is an hour late: nothing runs, the next tick will
        ("once", 1, ["11:00"]),  # one job stands for the three missed ticks
        ("catch_up", 2, ["10:00", "11:00"]),
        ("catch_up", 10, ["09:00", "10:00", "11:00"]),
    ],
)
def test_ticks_missed_while_nothing_ran_follow_the_schedules_policy(
    missed: str, catch_up_max: int, fired: list[str]
) -> None:
    s = spec(cron="0 * * * *", missed=missed, catch_up_max=catch_up_max)
    next_at = datetime(2027, 5, 1, 9, tzinfo=UTC)
    now = datetime(2027, 5, 1, 12, 0, 0, tzinfo=UTC) - timedelta(minutes=1)  # 11:59
    ticks, following = due(s, next_at, now)
    assert [t.strftime("%H:%M") for t in ticks] == fired
    assert following == datetime(2027, 5, 1, 12, tzinfo=UTC)


def test_a_tick_due_within_the_grace_fires_and_one_not_yet_due_does_not() -> None:
    s = spec(every_s=10)
    next_at = datetime(2027, 5, 1, 12, 0, 0, tzinfo=UTC)
    fired, following = due(s, next_at, next_at + timedelta(seconds=0.4))
    assert fired == [next_at]
    assert following == next_at + timedelta(seconds=10)
    assert due(s, following, next_at + timedelta(seconds=5)) == ([], following)


def test_a_new_schedule_starts_at_its_next_tick() -> None:
    s = spec(every_s=60)
    assert first_tick(s, datetime(2027, 5, 1, 12, 0, 30, tzinfo=UTC)) == datetime(
        2027, 5, 1, 12, 1, tzinfo=UTC
    )
    assert first_tick(s, datetime(2027, 5, 1, 12, 1, tzinfo=UTC)) == datetime(
        2027, 5, 1, 12, 1, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cron": "61 * * * *"}, "Bad minute"),
        ({"cron": "* * * * *", "every_s": 5}, "either a cron expression or an interval"),
        ({}, "either a cron expression or an interval"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"every_s": 0}, "greater than 0"),
    ],
)
def test_a_bad_schedule_says_what_is_wrong(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**fields)
