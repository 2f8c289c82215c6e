"""Deduplicated submits: a key in ``dedupe_keys`` (its primary key, with the main topic, is the
constraint) names the job that stands for it, and one transaction decides what a submit does.

The transaction takes the key (``INSERT ... ON CONFLICT DO NOTHING``; a key that is there is
then locked ``FOR UPDATE``, and so is its standing job's row), decides by the mode (see
:func:`decide`), and for a new job writes the job as a ``scheduled`` row holding its event:
the outbox. Two producers submitting one key at once serialize on the key's row, whichever
process or replica they run in, so exactly one of them makes the job.

After the commit the producer publishes a job that is due now itself; the row says so
(``dispatched_at`` is set in the same transaction), so the dispatcher leaves it alone unless
it is still unclaimed :data:`~jobstream.streams.pg.scheduled.REDISPATCH_S` later (the producer
died, or its publish was lost). A job with a delay is published by the dispatcher when due. A
copy published twice is absorbed by the claims: a job id runs at most once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

import asyncpg

from jobstream.models.control import Dedupe, DedupeMode
from jobstream.models.job import JobEvent, JobStatus
from jobstream.streams.pg.pool import Connection


class Decision(Enum):
    NEW = "new"
    """A new job: the key moves to it."""
    KEEP = "keep"
    """The standing job stands: the submit is answered with its id."""
    REPLACE = "replace"
    """Debounce: the standing job (still waiting) takes the new payload and time."""


def decide(mode: DedupeMode, *, expired: bool, standing: JobStatus | None) -> Decision:
    """What a submit in ``mode`` does when its key names a job whose row is ``standing`` (None:
    no row any more, e.g. pruned) and the key has ``expired`` or not. The submit's own mode
    decides, not the mode the key was taken with."""
    if expired or standing is None:
        return Decision.NEW
    if mode is DedupeMode.SIMPLE:
        return Decision.NEW if standing.terminal else Decision.KEEP
    if mode is DedupeMode.THROTTLE:
        return Decision.KEEP
    return Decision.REPLACE if standing is JobStatus.SCHEDULED else Decision.NEW


@dataclass(frozen=True)
class Taken:
    """What the transaction decided."""

    job_id: str
    deduplicated: bool
    publish: JobEvent | None = None
    """A new job due now: the producer publishes this event after the commit."""


def _expires(n: int) -> str:
    """A key's expiry from the ttl in parameter ``$n`` (null: never, by time)."""
    return (
        f"CASE WHEN ${n}::float8 IS NULL THEN 'infinity'::timestamptz"
        f" ELSE now() + make_interval(secs => ${n}::float8) END"
    )


_TAKE = f"""
INSERT INTO dedupe_keys (key, job_id, mode, created_at, expires_at, topic)
VALUES ($1, $2, $3, now(), {_expires(4)}, $5)
ON CONFLICT (topic, key) DO NOTHING
RETURNING job_id
"""

_KEY = """
SELECT job_id, expires_at <= now() AS expired FROM dedupe_keys
WHERE key = $1 AND topic = $2 FOR UPDATE
"""

_MOVE = f"""
UPDATE dedupe_keys SET job_id = $2, mode = $3, created_at = now(), expires_at = {_expires(4)}
WHERE key = $1 AND topic = $5
"""

_EXTEND = f"""
UPDATE dedupe_keys SET expires_at = {_expires(3)} WHERE key = $1 AND job_id = $2 AND topic = $4
"""

_STANDING = "SELECT status FROM jobs WHERE job_id = $1 FOR UPDATE"

_OUTBOX = """
INSERT INTO jobs AS j (job_id, type, status, attempt, created_at, run_at, expires_at, event,
                       executions, source, topic, dedupe_key, dispatched_at, updated_at)
VALUES ($1, $2, 'scheduled', $3, $4, greatest(coalesce($5, now()), now()), $6, $7, 0,
        'producer', $8, $9, CASE WHEN $5 IS NULL OR $5 <= now() THEN now() END, now())
ON CONFLICT (job_id) DO NOTHING
RETURNING dispatched_at IS NOT NULL AS publish
"""

_REPLACE = """
UPDATE jobs SET event = $2, run_at = greatest($3, now()), expires_at = $4, dispatched_at = NULL,
                updated_at = now()
WHERE job_id = $1 AND status = 'scheduled'
"""


def ttl_for(dedupe: Dedupe, event: JobEvent, now: datetime) -> float | None:
    """The key's life: as given; for debounce without one, the job's delay."""
    ttl = dedupe.ttl_s
    if ttl is None and dedupe.mode is DedupeMode.DEBOUNCE and event.not_before is not None:
        ttl = max((event.not_before - now).total_seconds(), 0.001)
    return ttl


async def submit(conn: Connection, event: JobEvent, dedupe: Dedupe, *, topic: str) -> Taken:
    """The deduplicated submit of ``event`` to the main topic ``topic`` (see the module
    docstring). Raises ``ValueError`` for a debounce without a delay."""
    mode = DedupeMode(dedupe.mode)
    if mode is DedupeMode.DEBOUNCE and event.not_before is None:
        raise ValueError("debounce needs a delay: the time each submit moves the job to")
    async with conn.transaction():
        now: datetime = await conn.fetchval("SELECT now()")
        ttl = ttl_for(dedupe, event, now)
        args = (dedupe.key, event.id, mode.value, ttl, topic)
        for _ in range(3):
            if await conn.fetchval(_TAKE, *args) is not None:
                return await _new(conn, event, dedupe.key, topic)
            key = await conn.fetchrow(_KEY, dedupe.key, topic)
            if key is not None:
                break
            # the key was deleted between the two statements (retention): take it again
        else:  # pragma: no cover - a key that appears and vanishes three times over
            raise RuntimeError(f"dedupe key {dedupe.key!r} kept changing")
        standing_id: str = key["job_id"]
        status = await conn.fetchval(_STANDING, standing_id)
        standing = JobStatus(status) if status is not None else None
        decision = decide(mode, expired=key["expired"], standing=standing)
        if decision is Decision.KEEP:
            return Taken(standing_id, deduplicated=True)
        if decision is Decision.REPLACE:
            replaced = event.model_copy(update={"id": standing_id})
            await conn.execute(
                _REPLACE, standing_id, _json(replaced), replaced.not_before, replaced.expires_at
            )
            await conn.execute(_EXTEND, dedupe.key, standing_id, ttl, topic)
            return Taken(standing_id, deduplicated=True)
        await conn.execute(_MOVE, *args)
        return await _new(conn, event, dedupe.key, topic)


async def _new(conn: Connection, event: JobEvent, key: str, topic: str) -> Taken:
    """The outbox row of a new job; an id that has a row already is that job (a job id runs at
    most once), and the key names it."""
    publish = await conn.fetchval(
        _OUTBOX,
        event.id,
        event.type,
        event.attempt,
        event.created_at,
        event.not_before,
        event.expires_at,
        _json(event),
        topic,
        key,
    )
    if publish is None:
        return Taken(event.id, deduplicated=True)
    return Taken(event.id, deduplicated=False, publish=event if publish else None)


def _json(event: JobEvent) -> dict[str, Any]:
    data: dict[str, Any] = event.model_dump(mode="json")
    return data


async def mark_undispatched(pool: asyncpg.Pool, job_id: str) -> None:
    """The producer's publish failed: the dispatcher publishes it in its next round instead of
    waiting out ``REDISPATCH_S``."""
    await pool.execute(
        "UPDATE jobs SET dispatched_at = NULL WHERE job_id = $1 AND status = 'scheduled'", job_id
    )


async def key_of(pool: asyncpg.Pool, job_id: str) -> dict[str, Any] | None:
    """The dedupe key that names ``job_id`` now, with its mode and expiry (the console)."""
    row = await pool.fetchrow(
        "SELECT key, mode, created_at, expires_at, expires_at <= now() AS expired"
        " FROM dedupe_keys WHERE job_id = $1 ORDER BY created_at DESC LIMIT 1",
        job_id,
    )
    return dict(row) if row is not None else None
