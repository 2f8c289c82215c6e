"""Cancelling jobs: one transaction on the job's row, audited in the same transaction.

What a cancel does depends on the row (locked ``FOR UPDATE``, so a claim or a worker's write
of the same row waits for it, or it for them):

- no row (the job is queued in Kafka, or the id was never submitted): a ``cancelled`` row is
  made. A claim never takes a terminal row, so when the record arrives its worker only
  re-emits the outcome: it never runs. An id submitted later is refused the same way.
- ``scheduled`` or ``retrying``: the row becomes ``cancelled``; the dispatcher publishes only
  ``scheduled`` rows, and a retry event finds a terminal row.
- ``running``: ``cancel_requested_at`` is set; every replica looks for the marks of the jobs it
  runs twice a second (:mod:`jobstream.agents.machine`) and cancels the handler, and the job
  ends ``cancelled`` with its outcome record from the worker.
- terminal: nothing changes; the answer says it is finished, and how.

The outcome record of a job cancelled before it started is published by the canceller (see
:func:`outcome_of`), after the commit: the row is the truth, the record tells whoever waits.
Each job is its own short transaction: a cancel holds one row lock at a time, so it cannot
deadlock with the claims, renewals and writes of the workers, which lock many.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from jobstream.models.control import CancelAnswer, CancelResult
from jobstream.models.job import JobOutcome, JobStatus
from jobstream.streams.pg.pool import Connection

NOT_STARTED = "cancelled on request before it started"
WHILE_WAITING = "cancelled on request while it waited to retry"
CANCELLABLE = (JobStatus.SCHEDULED, JobStatus.RETRYING, JobStatus.RUNNING)
"""The statuses a cancel by filter looks at: the rest are finished."""
CONCURRENCY = 8
"""Cancels of many jobs run on this many connections at once."""

_ROW = """
SELECT job_id, type, status, attempt, error, finished_at FROM jobs WHERE job_id = $1 FOR UPDATE
"""

_TOMBSTONE = """
INSERT INTO jobs AS j (job_id, status, attempt, executions, created_at, finished_at,
                       cancel_requested_at, error, source, topic, updated_at)
VALUES ($1, 'cancelled', 1, 0, now(), now(), now(), $2, 'cancel', $3, now())
ON CONFLICT (job_id) DO NOTHING
RETURNING job_id, type, status, attempt, error, finished_at
"""

_STOP = """
UPDATE jobs SET status = 'cancelled', finished_at = now(),
                cancel_requested_at = coalesce(cancel_requested_at, now()), error = $2,
                error_class = NULL, event = NULL, claim_token = NULL, lease_until = NULL,
                updated_at = now()
WHERE job_id = $1
RETURNING job_id, type, status, attempt, error, finished_at
"""

_REQUEST = """
UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()), updated_at = now()
WHERE job_id = $1
"""

_AUDIT = """
INSERT INTO control_audit (topic, action, job_id, was, answer, by) VALUES ($1, $2, $3, $4, $5, $6)
"""


@dataclass(frozen=True)
class Cancel:
    """A cancel's result, and the outcome record its canceller publishes (None unless the job
    was cancelled before it started)."""

    result: CancelResult
    outcome: JobOutcome | None = None


async def cancel(conn: Connection, job_id: str, *, topic: str, by: str) -> Cancel:
    """Cancel one job (see the module docstring); ``topic`` is the main topic whose job it is,
    ``by`` who asked, for the audit (never a token)."""
    async with conn.transaction():
        for _ in range(3):
            row = await conn.fetchrow(_ROW, job_id)
            if row is None:
                made = await conn.fetchrow(_TOMBSTONE, job_id, NOT_STARTED, topic)
                if made is None:
                    continue  # a claim made the row meanwhile (it committed): look again
                done = Cancel(_result(job_id, CancelAnswer.CANCELLED, made, None), _outcome(made))
                break
            was = JobStatus(row["status"])
            if was is JobStatus.RUNNING:
                await conn.execute(_REQUEST, job_id)
                done = Cancel(CancelResult(job_id, CancelAnswer.REQUESTED, was, was))
            elif was.terminal:
                done = Cancel(CancelResult(job_id, CancelAnswer.FINISHED, was, was))
            else:
                why = WHILE_WAITING if was is JobStatus.RETRYING else NOT_STARTED
                stopped = await conn.fetchrow(_STOP, job_id, why)
                assert stopped is not None  # the row is locked: it is there
                done = Cancel(
                    _result(job_id, CancelAnswer.CANCELLED, stopped, was), _outcome(stopped)
                )
            break
        else:  # pragma: no cover - a row that appears and vanishes three times over
            raise RuntimeError(f"job {job_id}: its row kept changing while it was cancelled")
        r = done.result
        was_text = r.was.value if r.was is not None else None
        await conn.execute(_AUDIT, topic, "cancel", job_id, was_text, r.answer.value, by)
    return done


async def cancel_many(
    pool: asyncpg.Pool, job_ids: Sequence[str], *, topic: str, by: str
) -> list[Cancel]:
    """:func:`cancel` of each job, ``CONCURRENCY`` at a time; in the order given."""
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(job_id: str) -> Cancel:
        async with limit, pool.acquire() as conn:
            return await cancel(conn, job_id, topic=topic, by=by)

    return list(await asyncio.gather(*(one(j) for j in dict.fromkeys(job_ids))))


def _result(
    job_id: str, answer: CancelAnswer, row: asyncpg.Record, was: JobStatus | None
) -> CancelResult:
    return CancelResult(job_id, answer, JobStatus(row["status"]), was)


def _outcome(row: asyncpg.Record) -> JobOutcome:
    return JobOutcome(
        job_id=row["job_id"],
        type=row["type"],
        status=JobStatus.CANCELLED,
        attempt=row["attempt"],
        error=row["error"],
        finished_at=row["finished_at"],
    )


def outcome_of(cancel: Cancel) -> tuple[bytes, bytes] | None:
    """(key, value) of the outcome record to publish for ``cancel``, if any: keyed by job id,
    like every outcome."""
    if cancel.outcome is None:
        return None
    return cancel.outcome.job_id.encode(), cancel.outcome.to_bytes()


# -- cancel by filter ------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which unfinished jobs of a main topic a cancel by filter takes."""

    statuses: tuple[JobStatus, ...] = CANCELLABLE
    types: tuple[str, ...] = ()
    since: datetime | None = None
    """Created at or after (``created_at``)."""
    until: datetime | None = None
    """Created before."""
    dedupe_key: str | None = None
    limit: int = 1000


async def select(pool: asyncpg.Pool, topic: str, flt: Selection) -> list[dict[str, Any]]:
    """The unfinished jobs of ``topic`` that match, oldest first (a dry run shows these)."""
    statuses = [s.value for s in flt.statuses if s in CANCELLABLE]
    rows = await pool.fetch(
        """
        SELECT job_id, type, status, attempt, created_at, run_at, worker,
               cancel_requested_at IS NOT NULL AS cancel_requested
        FROM jobs
        WHERE status = ANY($1::text[]) AND topic = $2
          AND (cardinality($3::text[]) = 0 OR type = ANY($3::text[]))
          AND ($4::timestamptz IS NULL OR created_at >= $4)
          AND ($5::timestamptz IS NULL OR created_at < $5)
          AND ($6::text IS NULL OR dedupe_key = $6)
        ORDER BY created_at NULLS FIRST, job_id
        LIMIT $7
        """,
        statuses,
        topic,
        list(flt.types),
        flt.since,
        flt.until,
        flt.dedupe_key,
        flt.limit,
    )
    return [dict(r) for r in rows]


async def audit_of(pool: asyncpg.Pool, job_id: str) -> list[dict[str, Any]]:
    """Every control action on ``job_id``, oldest first (the console's job page)."""
    rows = await pool.fetch(
        "SELECT at, action, was, answer, by FROM control_audit WHERE job_id = $1 ORDER BY id",
        job_id,
    )
    return [dict(r) for r in rows]


async def reopen(conn: Connection, job_id: str, *, topic: str, by: str) -> bool:
    """A cancelled job goes back to ``dead_lettered`` so that a replay of its dead letter may
    run it (in the replay's transaction, audited): the one way a cancelled job runs again, and
    only when the replay asks for it. False when the job is not cancelled."""
    row = await conn.fetchrow(
        "UPDATE jobs SET status = 'dead_lettered', cancel_requested_at = NULL, updated_at = now()"
        " WHERE job_id = $1 AND status = 'cancelled' RETURNING job_id",
        job_id,
    )
    if row is None:
        return False
    await conn.execute(_AUDIT, topic, "reopen", job_id, "cancelled", "dead_lettered", by)
    return True
