"""Scheduled jobs in PostgreSQL: the rows the dispatcher publishes when due, and the operator's
view of them (list, re-time, run now).

A delayed job is a ``scheduled`` row holding its event (the outbox). The dispatcher publishes
the due ones to the main topic and marks them ``dispatched_at``; the row stays ``scheduled``
until a worker's claim takes it. A publish lost in between is published again after
``REDISPATCH_S``: the claims absorb a copy, so a job still runs once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from jobstream.models.errors import JobstreamError
from jobstream.streams.pg import timed_audit

REDISPATCH_S = 120.0
"""A dispatched job not claimed by then is published again (its record may have been lost)."""

_DUE = """
SELECT job_id, event, run_at, now() AS now FROM jobs
WHERE status = 'scheduled' AND topic = $2 AND dispatched_at IS NULL AND run_at <= now()
ORDER BY run_at
LIMIT $1
"""
"""Due rows never published (``jobs_scheduled_fresh_idx``): rows published and not yet claimed
leave this index, so a burst of them is not walked again every round."""

_UNCLAIMED = """
SELECT job_id, event, run_at, now() AS now FROM jobs
WHERE status = 'scheduled' AND topic = $2 AND run_at <= now()
  AND dispatched_at < now() - make_interval(secs => $3)
ORDER BY dispatched_at
LIMIT $1
"""
"""Rows published ``REDISPATCH_S`` ago and still not claimed (``jobs_scheduled_dispatched_idx``):
their record may have been lost."""

_DISPATCHED = """
UPDATE jobs SET dispatched_at = now()
WHERE job_id = ANY($1::text[]) AND status = 'scheduled'
"""

_DUE_COUNT = """
SELECT count(*) AS due, min(run_at) AS oldest, now() AS now FROM jobs
WHERE status = 'scheduled' AND topic = $1 AND run_at <= now()
"""

_NEXT = "SELECT min(run_at) FROM jobs WHERE status = 'scheduled' AND topic = $1 AND run_at > now()"

_RETIME = """
UPDATE jobs SET run_at = $2, dispatched_at = NULL, updated_at = now()
WHERE job_id = $1 AND status = 'scheduled'
RETURNING run_at
"""

_LOCK_ROW = """
SELECT run_at, expires_at, type, now() AS now FROM jobs
WHERE job_id = $1 AND status = 'scheduled' AND topic = $2
FOR UPDATE
"""

_LIST = """
SELECT job_id, type, run_at, expires_at, dispatched_at, created_at, attempt, dedupe_key
FROM jobs
WHERE status = 'scheduled' AND topic = $5
  AND ($1::text IS NULL OR type = $1)
  AND ($2::timestamptz IS NULL OR run_at >= $2)
  AND ($3::timestamptz IS NULL OR run_at < $3)
ORDER BY run_at, job_id
LIMIT $4
"""


@dataclass(frozen=True)
class Due:
    job_id: str
    event: dict[str, Any]
    run_at: datetime
    late_s: float
    """How long after its time it is published."""


async def due(pool: asyncpg.Pool, topic: str, limit: int) -> list[Due]:
    """The oldest due jobs of ``topic`` never published, then those published more than
    ``REDISPATCH_S`` ago and not claimed since."""
    rows = list(await pool.fetch(_DUE, limit, topic))
    if len(rows) < limit:
        rows += await pool.fetch(_UNCLAIMED, limit - len(rows), topic, REDISPATCH_S)
    return [
        Due(r["job_id"], r["event"], r["run_at"], (r["now"] - r["run_at"]).total_seconds())
        for r in rows
    ]


async def dispatched(pool: asyncpg.Pool, job_ids: Sequence[str]) -> None:
    if job_ids:
        await pool.execute(_DISPATCHED, list(job_ids))


async def waiting(pool: asyncpg.Pool, topic: str) -> tuple[int, float]:
    """Due jobs of ``topic`` not yet claimed, and how late the oldest of them is (seconds)."""
    row = await pool.fetchrow(_DUE_COUNT, topic)
    assert row is not None
    oldest = (row["now"] - row["oldest"]).total_seconds() if row["oldest"] else 0.0
    return int(row["due"]), oldest


async def next_due(pool: asyncpg.Pool, topic: str) -> datetime | None:
    """When the next scheduled job of ``topic`` falls due."""
    value: datetime | None = await pool.fetchval(_NEXT, topic)
    return value


async def retime(pool: asyncpg.Pool, job_id: str, run_at: datetime) -> datetime | None:
    """Move a scheduled job to ``run_at`` (now: run it now); None when it is not scheduled."""
    value: datetime | None = await pool.fetchval(_RETIME, job_id, run_at)
    return value


async def listed(
    pool: asyncpg.Pool,
    topic: str,
    *,
    job_type: str | None = None,
    due_after: datetime | None = None,
    due_before: datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Scheduled jobs of ``topic`` in the order they fall due, filtered."""
    rows = await pool.fetch(_LIST, job_type, due_after, due_before, limit, topic)
    return [dict(r) for r in rows]


# -- what operators do (CLI, API, console), audited -------------------------------------------


class NotScheduledError(JobstreamError):
    """Raised when a job to re-time or run now has no scheduled row (an unknown id, another
    prefix's job, or one already dispatched and claimed)."""


class WouldExpireError(JobstreamError):
    """Raised when a scheduled job would be moved to or past its ``expires_at``."""


@dataclass(frozen=True)
class Retimed:
    job_id: str
    type: str | None
    was: datetime
    run_at: datetime


async def move(
    pool: asyncpg.Pool, topic: str, job_id: str, run_at: datetime | None, *, by: str
) -> Retimed:
    """Re-time a scheduled job of ``topic`` to ``run_at``, or to now (run it now) when None,
    and audit it in the same transaction. A copy already published comes back to a worker
    whose claim finds the row not due (re-timed later): it is dropped as a duplicate, and the
    dispatcher publishes the job again at its new time."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(_LOCK_ROW, job_id, topic)
        if row is None:
            raise NotScheduledError(
                f"job {job_id!r} is not scheduled (unknown, or already dispatched and claimed)"
            )
        target = row["now"] if run_at is None else run_at
        expires = row["expires_at"]
        if expires is not None and target >= expires:
            raise WouldExpireError(
                f"job {job_id!r} expires at {expires.isoformat()}: it cannot run at"
                f" {target.isoformat()}"
            )
        moved: datetime = await conn.fetchval(_RETIME, job_id, target)
        await timed_audit.record(
            conn,
            topic=topic,
            action="run-now" if run_at is None else "retime",
            kind="job",
            target=job_id,
            by=by,
            detail={"was": row["run_at"], "run_at": moved},
        )
    return Retimed(job_id, row["type"], row["run_at"], moved)
