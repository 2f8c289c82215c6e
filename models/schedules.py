"""Recurring schedules: when each tick is, which ticks fire, and each tick's job id.

Pure: the dispatcher (:mod:`jobstream.streams.worker.dispatcher`) keeps the schedules in
PostgreSQL and publishes the jobs. A cron expression is read in the schedule's IANA time zone
by cronsim, which follows Debian's cron across DST changes (a time that does not exist that day
fires right after the change; a time that happens twice fires once); an interval counts from
the Unix epoch in UTC, so its ticks are the same on every replica and across restarts.

Every tick's job id comes from the schedule's name and the tick's instant: a tick published
twice (a dispatcher that died between publishing and saving its progress) is one job.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Missed = Literal["skip", "once", "catch_up"]
MISFIRE_GRACE_S = 60.0
"""A tick this late still fires as the current one; older due ticks are missed ticks."""
MAX_DUE_TICKS = 10_000
"""Ticks looked at in one go: a schedule every second that waited a day catches up at most its
``catch_up_max`` anyway."""


class ScheduleSpec(BaseModel):
    """A recurring job: ``job_type`` with ``payload`` at every tick of ``cron`` (in
    ``timezone``) or every ``every_s`` seconds.

    ``missed`` says what happens to ticks missed while nothing ran (no replica, a long outage):
    ``skip`` them (only a tick due within a minute fires), run ``once`` for all of them, or
    ``catch_up`` the last ``catch_up_max`` of them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=150, pattern=r"^[A-Za-z0-9_.:\-]+$")
    job_type: str = Field(min_length=1, max_length=100)
    payload: dict[str, Any] = Field(default_factory=dict)
    cron: str | None = None
    every_s: float | None = Field(default=None, gt=0)
    timezone: str = "UTC"
    missed: Missed = "skip"
    catch_up_max: int = Field(default=1, ge=1, le=1000)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name: Europe/Berlin)") from None
        return value

    @model_validator(mode="after")
    def _one_rule(self) -> ScheduleSpec:
        if (self.cron is None) == (self.every_s is None):
            raise ValueError("a schedule has either a cron expression or an interval")
        if self.cron is not None:
            try:
                CronSim(self.cron, datetime.now(UTC))
            except CronSimError as exc:
                raise ValueError(f"cron expression {self.cron!r}: {exc}") from None
        return self

    @property
    def rule(self) -> str:
        """How it repeats, for people: the cron expression and zone, or the interval."""
        if self.cron is not None:
            return f"cron {self.cron} ({self.timezone})"
        assert self.every_s is not None
        return f"every {self.every_s:g}s"

    def ticks_after(self, after: datetime) -> Iterator[datetime]:
        """The ticks strictly after ``after``, in order, as UTC instants."""
        if self.every_s is not None:
            step = self.every_s
            k = math.floor(after.timestamp() / step) + 1
            while True:
                yield datetime.fromtimestamp(k * step, UTC)
                k += 1
        assert self.cron is not None
        local = after.astimezone(ZoneInfo(self.timezone))
        for tick in CronSim(self.cron, local):
            yield tick.astimezone(UTC)

    def next_after(self, after: datetime) -> datetime:
        return next(self.ticks_after(after))


def due(spec: ScheduleSpec, next_at: datetime, now: datetime) -> tuple[list[datetime], datetime]:
    """The ticks to fire now (by ``spec.missed``) of those due since ``next_at``, and the next
    tick after ``now``."""
    ticks: list[datetime] = []
    if next_at <= now:
        ticks.append(next_at)
        for tick in spec.ticks_after(next_at):
            if tick > now or len(ticks) >= MAX_DUE_TICKS:
                break
            ticks.append(tick)
    fire: list[datetime] = []
    if ticks:
        current = ticks[-1] if (now - ticks[-1]).total_seconds() <= MISFIRE_GRACE_S else None
        if spec.missed == "once":
            fire = ticks[-1:]  # one job stands for every tick due
        elif spec.missed == "catch_up":
            fire = ticks[-spec.catch_up_max :]
        elif current is not None:
            fire = [current]
    return fire, spec.next_after(now)


def tick_job_id(name: str, tick: datetime) -> str:
    """The job of one tick: the same on every replica and for every publish of it."""
    return f"schedule:{name}:{tick.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"


def first_tick(spec: ScheduleSpec, now: datetime) -> datetime:
    """The first tick of a new schedule: the next one after ``now``."""
    return spec.next_after(now - timedelta(microseconds=1))
