"""Recurring schedules in PostgreSQL: the app's declared ones kept in step with the code, the
ones added at run time, and what the dispatcher reads and writes as it fires them.

A schedule's row holds its rule (cron + zone, or an interval), what missed ticks do, whether
it is paused, and its next and last tick. The dispatcher fires a due schedule and moves its
``next_at`` with a guard on the value it read, so a concurrent edit (a pause, a run-now) is
never overwritten.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from jobstream.models.errors import JobstreamError
from jobstream.models.job import JobEvent
from jobstream.models.schedules import ScheduleSpec, first_tick
from jobstream.streams.failures import describe
from jobstream.streams.pg import timed_audit
from jobstream.streams.pg.pool import Connection

log = logging.getLogger(__name__)

_COLUMNS = (
    "name, job_type, payload, cron, every_s, timezone, missed, catch_up_max, paused, source,"
    " next_at, last_at, last_job_id, fired, created_at, updated_at"
)

_SYNC_APP = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::float8[],
                         $6::text[], $7::text[], $8::int[], $9::timestamptz[])
        AS t(name, job_type, payload, cron, every_s, timezone, missed, catch_up_max, next_at)
), upserted AS (
    INSERT INTO schedules AS s (topic, name, job_type, payload, cron, every_s, timezone, missed,
                                catch_up_max, source, next_at)
    SELECT $10, name, job_type, payload, cron, every_s, timezone, missed, catch_up_max, 'app',
           next_at
    FROM input
    ON CONFLICT (topic, name) DO UPDATE SET
        job_type = EXCLUDED.job_type, payload = EXCLUDED.payload, missed = EXCLUDED.missed,
        catch_up_max = EXCLUDED.catch_up_max, source = 'app',
        cron = EXCLUDED.cron, every_s = EXCLUDED.every_s, timezone = EXCLUDED.timezone,
        -- a new rule starts from its next tick; the same rule keeps its place (and pause)
        next_at = CASE WHEN s.cron IS DISTINCT FROM EXCLUDED.cron
                         OR s.every_s IS DISTINCT FROM EXCLUDED.every_s
                         OR s.timezone IS DISTINCT FROM EXCLUDED.timezone
                       THEN EXCLUDED.next_at ELSE s.next_at END,
        updated_at = now()
    RETURNING name
)
DELETE FROM schedules WHERE topic = $10 AND source = 'app' AND name <> ALL($1::text[])
RETURNING name
"""

_DUE = f"""
SELECT {_COLUMNS}, now() AS now FROM schedules
WHERE topic = $2 AND NOT paused AND next_at <= now()
ORDER BY next_at
LIMIT $1
"""

_FIRED = """
UPDATE schedules SET next_at = $3, last_at = coalesce($4, last_at),
       last_job_id = coalesce($5, last_job_id), fired = fired + $6, updated_at = now()
WHERE topic = $7 AND name = $1 AND next_at = $2
"""

_BEHIND = """
SELECT count(*) FROM schedules
WHERE topic = $2 AND NOT paused AND next_at < now() - make_interval(secs => $1)
"""

_NEXT = "SELECT min(next_at) FROM schedules WHERE topic = $1 AND NOT paused"


@dataclass(frozen=True)
class StoredSchedule:
    spec: ScheduleSpec
    paused: bool
    source: str
    next_at: datetime
    last_at: datetime | None
    last_job_id: str | None
    fired: int

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> StoredSchedule:
        payload = r["payload"]
        spec = ScheduleSpec(
            name=r["name"],
            job_type=r["job_type"],
            payload=payload if isinstance(payload, dict) else json.loads(payload),
            cron=r["cron"],
            every_s=r["every_s"],
            timezone=r["timezone"],
            missed=r["missed"],
            catch_up_max=r["catch_up_max"],
        )
        return cls(
            spec, r["paused"], r["source"], r["next_at"], r["last_at"], r["last_job_id"], r["fired"]
        )

    def as_json(self) -> dict[str, Any]:
        return {
            **self.spec.model_dump(mode="json"),
            "rule": self.spec.rule,
            "paused": self.paused,
            "source": self.source,
            "next_at": self.next_at.isoformat(),
            "last_at": self.last_at.isoformat() if self.last_at else None,
            "last_job_id": self.last_job_id,
            "fired": self.fired,
        }


async def sync_app(
    pool: asyncpg.Pool, topic: str, specs: Sequence[ScheduleSpec], now: datetime
) -> list[str]:
    """The app's schedules as the code declares them (an edit of one of them keeps its pause;
    one removed from the code goes); returns the names removed."""
    rows = [
        (
            s.name, s.job_type, s.payload, s.cron, s.every_s, s.timezone, s.missed,
            s.catch_up_max, first_tick(s, now),
        )
        for s in specs
    ]  # fmt: skip
    cols = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(9)]
    return [r["name"] for r in await pool.fetch(_SYNC_APP, *cols, topic)]


async def due(
    pool: asyncpg.Pool, topic: str, limit: int = 100
) -> list[tuple[StoredSchedule, datetime]]:
    """Schedules of ``topic`` whose next tick has come, with the database's now."""
    found: list[tuple[StoredSchedule, datetime]] = []
    for r in await pool.fetch(_DUE, limit, topic):
        try:
            found.append((StoredSchedule.from_record(r), r["now"]))
        except ValueError as exc:  # a rule this version cannot read: the others still fire
            log.warning("schedule %s cannot be read, not fired: %s", r["name"], describe(exc))
    return found


async def fired(
    pool: asyncpg.Pool,
    topic: str,
    name: str,
    *,
    was: datetime,
    next_at: datetime,
    last_at: datetime | None,
    last_job_id: str | None,
    count: int,
) -> bool:
    """Move the schedule to ``next_at`` unless it was changed since it read ``was``."""
    status = await pool.execute(_FIRED, name, was, next_at, last_at, last_job_id, count, topic)
    return status.endswith(" 1")


async def behind(pool: asyncpg.Pool, topic: str, grace_s: float) -> int:
    """Schedules whose tick is more than ``grace_s`` late: the dispatcher is not firing them."""
    return int(await pool.fetchval(_BEHIND, grace_s, topic))


async def next_tick(pool: asyncpg.Pool, topic: str) -> datetime | None:
    value: datetime | None = await pool.fetchval(_NEXT, topic)
    return value


# -- what operators do (CLI, API, console) -------------------------------------------------------


async def listed(pool: asyncpg.Pool, topic: str) -> list[StoredSchedule]:
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM schedules WHERE topic = $1 ORDER BY name", topic
    )
    return [StoredSchedule.from_record(r) for r in rows]


async def get(pool: asyncpg.Pool, topic: str, name: str) -> StoredSchedule | None:
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM schedules WHERE topic = $1 AND name = $2", topic, name
    )
    return StoredSchedule.from_record(row) if row is not None else None


class ScheduleNotFoundError(JobstreamError):
    """Raised when an operator names a schedule that does not exist (in this prefix)."""


class ScheduleExistsError(JobstreamError):
    """Raised when a schedule is added under a name that is taken."""


class AppScheduleError(JobstreamError):
    """Raised when an operator removes a schedule the app's code declares: the next
    dispatcher would add it again (pause it, or remove it from the code)."""


async def add(
    pool: asyncpg.Pool, topic: str, spec: ScheduleSpec, now: datetime, *, by: str | None = None
) -> bool:
    """A schedule managed at run time; False when the name is taken. ``by``: audited."""
    async with pool.acquire() as conn, conn.transaction():
        status = await conn.execute(
            "INSERT INTO schedules (topic, name, job_type, payload, cron, every_s, timezone,"
            " missed, catch_up_max, source, next_at)"
            " VALUES ($10, $1, $2, $3, $4, $5, $6, $7, $8, 'runtime', $9)"
            " ON CONFLICT (topic, name) DO NOTHING",
            spec.name, spec.job_type, spec.payload, spec.cron, spec.every_s, spec.timezone,
            spec.missed, spec.catch_up_max, first_tick(spec, now), topic,
        )  # fmt: skip
        added = status.endswith(" 1")
        if added and by is not None:
            detail = {"rule": spec.rule, "type": spec.job_type, "missed": spec.missed}
            await _audit(conn, topic, "add", spec.name, by, detail)
    return added


async def set_paused(
    pool: asyncpg.Pool,
    topic: str,
    name: str,
    paused: bool,
    now: datetime,
    *,
    by: str | None = None,
) -> bool:
    """Pause, or resume from the next tick after now (the ticks of the pause are not run);
    False when there is no such schedule. Pausing a paused schedule changes nothing."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM schedules WHERE topic = $1 AND name = $2 FOR UPDATE",
            topic,
            name,
        )
        if row is None:
            return False
        stored = StoredSchedule.from_record(row)
        if stored.paused == paused:
            return True
        next_at = stored.next_at if paused else first_tick(stored.spec, now)
        await conn.execute(
            "UPDATE schedules SET paused = $2, next_at = $3, updated_at = now()"
            " WHERE topic = $4 AND name = $1",
            name,
            paused,
            next_at,
            topic,
        )
        if by is not None:
            detail = {"next_at": None if paused else next_at}
            await _audit(conn, topic, "pause" if paused else "resume", name, by, detail)
    return True


async def remove(
    pool: asyncpg.Pool, topic: str, name: str, *, by: str | None = None, app_too: bool = True
) -> bool:
    """Remove a schedule (its jobs already published stay); False when there is none. With
    ``app_too`` false, one the app's code declares is refused (:class:`AppScheduleError`)."""
    async with pool.acquire() as conn, conn.transaction():
        source = await conn.fetchval(
            "SELECT source FROM schedules WHERE topic = $1 AND name = $2 FOR UPDATE", topic, name
        )
        if source is None:
            return False
        if source == "app" and not app_too:
            raise AppScheduleError(
                f"schedule {name!r} is declared in the app's code: the next dispatcher adds it"
                " again. Pause it, or remove it from the code"
            )
        await conn.execute("DELETE FROM schedules WHERE topic = $1 AND name = $2", topic, name)
        if by is not None:
            await _audit(conn, topic, "remove", name, by, {"source": source})
    return True


_RUN_NOW = """
INSERT INTO jobs (job_id, type, status, attempt, created_at, run_at, event, executions, worker,
                  source, topic)
VALUES ($1, $2, 'scheduled', 1, $3, $3, $4, 0, $5, 'schedule', $6)
ON CONFLICT (job_id) DO NOTHING
"""


def run_now_job_id(name: str, at: datetime) -> str:
    """The job of a run-now: its own id, never one of the schedule's ticks."""
    return f"schedule:{name}:now:{at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"


async def run_now(pool: asyncpg.Pool, topic: str, name: str, *, by: str) -> str:
    """One job of the schedule now, its ticks unchanged; returns its id.

    The job is a scheduled row due now, the same outbox every delayed job goes through: the
    dispatcher publishes it within its poll interval, and the row and the audit are written in
    one transaction (a run-now that is audited happened, and the other way round). Works on a
    paused schedule too (an operator's explicit run)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS}, now() AS now FROM schedules WHERE topic = $1 AND name = $2"
            " FOR UPDATE",
            topic,
            name,
        )
        if row is None:
            raise ScheduleNotFoundError(f"no schedule {name!r}")
        spec = StoredSchedule.from_record(row).spec
        at: datetime = row["now"]
        job_id = run_now_job_id(name, at)
        event = JobEvent(
            id=job_id,
            type=spec.job_type,
            payload=spec.payload,
            created_at=at,
            metadata={"schedule": name, "schedule_run": "now"},
        )
        await conn.execute(
            _RUN_NOW, job_id, spec.job_type, at, event.model_dump(mode="json"), by[:200], topic
        )
        await conn.execute(
            "UPDATE schedules SET last_at = $2, last_job_id = $3, fired = fired + 1,"
            " updated_at = now() WHERE topic = $4 AND name = $1",
            name,
            at,
            job_id,
            topic,
        )
        await _audit(conn, topic, "run-now", name, by, {"job_id": job_id})
    return job_id


async def _audit(
    conn: Connection, topic: str, action: str, name: str, by: str, detail: dict[str, Any]
) -> None:
    await timed_audit.record(
        conn, topic=topic, action=action, kind="schedule", target=name, by=by, detail=detail
    )
