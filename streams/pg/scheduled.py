"""Scheduled jobs in PostgreSQL: the rows the dispatcher publishes when due, and the operator's
view of them (list, re-time, run now).

A delayed job is a ``scheduled`` row holding its event (the outbox). The dispatcher takes the
due ones (marking them ``dispatched_at`` in the statement that reads them) and publishes them to
the main topic; the row stays ``scheduled`` until a worker's claim takes it. A publish lost in
between is published again after ``REDISPATCH_S``, and a new holder of the dispatcher's lease
publishes again what its predecessor took but may not have published: the claims absorb a copy,
so a job still runs once.
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

_TAKE = """
UPDATE jobs AS j SET dispatched_at = now()
FROM (
    SELECT job_id FROM jobs
    WHERE status = 'scheduled' AND topic = $2 AND {which} AND run_at <= now()
    ORDER BY {order}
    LIMIT $1
    FOR UPDATE SKIP LOCKED
) AS due
WHERE j.job_id = due.job_id
RETURNING j.job_id, j.run_at, now() AS now,
    (j.event || '{{"not_before": null}}'::jsonb)::text AS record,
    coalesce(j.event ->> 'partition_key', j.event ->> 'id', j.job_id) AS key
"""
_DUE = _TAKE.format(which="dispatched_at IS NULL", order="run_at")
"""Due rows never published, marked as published in the statement that reads them (the
dispatcher publishes them next). They leave ``jobs_scheduled_fresh_idx``, so a burst of rows
published and not yet claimed is not walked again every round; ``SKIP LOCKED``: a row a claim
or an operator holds is left for the next round."""

_UNCLAIMED = _TAKE.format(
    which="dispatched_at < now() - make_interval(secs => $3)", order="dispatched_at"
)
"""Rows published ``REDISPATCH_S`` ago and still not claimed (``jobs_scheduled_dispatched_idx``):
their record may have been lost."""

_RELEASE = """
UPDATE jobs SET dispatched_at = NULL
WHERE job_id = ANY($1::text[]) AND status = 'scheduled'
"""

_IN_DOUBT = """
UPDATE jobs SET dispatched_at = NULL
WHERE status = 'scheduled' AND topic = $1 AND run_at <= now()
  AND dispatched_at > now() - make_interval(secs => $2)
"""
"""Older ones are published again by the ``_UNCLAIMED`` path in any case."""

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
    record: bytes
    """The stored event as the record to publish: ``not_before`` cleared (it is due), made by
    PostgreSQL (no JSON round trip in the dispatcher's process). Not validated: what a worker
    cannot read it dead-letters, and one bad row must not hold back every other due job."""
    key: bytes
    """The key its producer used: the partition key, else the job id."""
    run_at: datetime
    late_s: float
    """How long after its time it is taken for publishing."""


async def due(pool: asyncpg.Pool, topic: str, limit: int) -> list[Due]:
    """Take the oldest due jobs of ``topic`` never published, then those published more than
    ``REDISPATCH_S`` ago and not claimed since: they are marked published (``dispatched_at``)
    as they are read. A publish that then fails gives them back (:func:`release`); a holder
    that dies before publishing leaves them to its successor (:func:`in_doubt`)."""
    rows = list(await pool.fetch(_DUE, limit, topic))
    if len(rows) < limit:
        rows += await pool.fetch(_UNCLAIMED, limit - len(rows), topic, REDISPATCH_S)
    return [
        Due(
            r["job_id"],
            r["record"].encode(),
            r["key"].encode(),
            r["run_at"],
            (r["now"] - r["run_at"]).total_seconds(),
        )
        for r in rows
    ]


async def release(pool: asyncpg.Pool, job_ids: Sequence[str]) -> None:
    """Jobs taken by :func:`due` whose publish failed: the next round takes them again."""
    if job_ids:
        await pool.execute(_RELEASE, list(job_ids))


async def in_doubt(pool: asyncpg.Pool, topic: str) -> int:
    """At a new holder's start: due jobs marked published but not claimed may never have been
    published (their holder died between the two), so they go again. A copy of one that was
    published is absorbed by the claims. Returns how many."""
    status = await pool.execute(_IN_DOUBT, topic, REDISPATCH_S)
    return int(status.split()[-1])


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
