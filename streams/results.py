"""Job rows in PostgreSQL: batched idempotent upserts and batched terminal-state lookups.

Exactly one terminal row per job id: a terminal row (succeeded, dead_lettered) is never
overwritten, except a dead-lettered one by a run replayed from the dead-letter topic. Every
write still counts in ``executions``, so duplicate handler executions stay visible.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from models.job import JobStatus
from streams.batching import Batcher
from streams.metrics import Metrics

_UPSERT = """
WITH input AS (
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::int[], $5::jsonb[], $6::text[], $7::text[],
        $8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[], $13::int[]
    ) AS t(job_id, type, status, attempt, result, error, error_class, source, replay_of,
           worker, created_at, finished_at, executions)
)
INSERT INTO jobs AS j (job_id, type, status, attempt, result, error, error_class, source,
                       replay_of, worker, created_at, finished_at, executions)
SELECT * FROM input
ON CONFLICT (job_id) DO UPDATE SET
    status      = CASE WHEN {writable} THEN EXCLUDED.status      ELSE j.status      END,
    attempt     = CASE WHEN {writable} THEN EXCLUDED.attempt     ELSE j.attempt     END,
    result      = CASE WHEN {writable} THEN EXCLUDED.result      ELSE j.result      END,
    error       = CASE WHEN {writable} THEN EXCLUDED.error       ELSE j.error       END,
    error_class = CASE WHEN {writable} THEN EXCLUDED.error_class ELSE j.error_class END,
    source      = CASE WHEN {writable} THEN EXCLUDED.source      ELSE j.source      END,
    replay_of   = CASE WHEN {writable} THEN EXCLUDED.replay_of   ELSE j.replay_of   END,
    worker      = CASE WHEN {writable} THEN EXCLUDED.worker      ELSE j.worker      END,
    finished_at = CASE WHEN {writable} THEN EXCLUDED.finished_at ELSE j.finished_at END,
    type        = coalesce(j.type, EXCLUDED.type),
    created_at  = coalesce(j.created_at, EXCLUDED.created_at),
    executions  = j.executions + EXCLUDED.executions,
    updated_at  = now()
RETURNING job_id, status, attempt, result, error, error_class, worker, finished_at
""".format(
    writable="(j.status = 'retrying'"
    " OR (j.status = 'dead_lettered' AND EXCLUDED.replay_of IS NOT NULL"
    " AND EXCLUDED.status <> 'retrying'))"
)

_LOOKUP = """
SELECT job_id, status, attempt, result, error, error_class, worker, finished_at
FROM jobs WHERE job_id = ANY($1::text[])
"""


async def fetch_job(pool: asyncpg.Pool, job_id: str) -> dict[str, Any] | None:
    """One job's whole row, for status queries (the API, ``jobstream status``)."""
    row = await pool.fetchrow("SELECT * FROM jobs WHERE job_id = $1", job_id)
    return dict(row) if row is not None else None


@dataclass(frozen=True)
class JobRow:
    job_id: str
    type: str | None
    status: JobStatus
    attempt: int
    result: Any = None
    error: str | None = None
    error_class: str | None = None
    source: str | None = None
    replay_of: str | None = None
    worker: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class StoredState:
    """The row as stored after a write or found by a lookup."""

    job_id: str
    status: JobStatus
    attempt: int
    result: Any
    error: str | None
    error_class: str | None
    worker: str | None
    finished_at: datetime | None

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> StoredState:
        return cls(
            job_id=r["job_id"],
            status=JobStatus(r["status"]),
            attempt=r["attempt"],
            result=r["result"],
            error=r["error"],
            error_class=r["error_class"],
            worker=r["worker"],
            finished_at=r["finished_at"],
        )


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold U+0000; an error message quoting one must still be stored."""
    return value.replace("\x00", "\ufffd") if value else value


def _merge(rows: Sequence[JobRow]) -> tuple[list[JobRow], list[int], dict[str, int]]:
    """One row per job id per statement (Postgres refuses to update a row twice in one).

    Returns the rows to write, executions per row, and the index of each input's winner.
    A terminal row beats a retrying one; among equals the first wins.
    """
    chosen: dict[str, int] = {}
    out: list[JobRow] = []
    counts: list[int] = []
    for row in rows:
        at = chosen.get(row.job_id)
        if at is None:
            chosen[row.job_id] = len(out)
            out.append(row)
            counts.append(1)
            continue
        counts[at] += 1
        if not out[at].status.terminal and row.status.terminal:
            out[at] = row
    return out, counts, chosen


class ResultStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_size: int = 500,
        max_delay_s: float = 0.005,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._writes: Batcher[JobRow, StoredState | Exception] = Batcher(
            self._write_batch,
            max_size=max_size,
            max_delay_s=max_delay_s,
            on_flush=self._observe,
            name="result-writes",
        )
        self._lookups: Batcher[str, StoredState | None] = Batcher(
            self._lookup_batch, max_size=max_size, max_delay_s=max_delay_s, name="result-lookups"
        )

    def start(self) -> None:
        self._writes.start()
        self._lookups.start()

    async def close(self) -> None:
        await asyncio.gather(self._writes.close(), self._lookups.close())

    async def write(self, row: JobRow) -> StoredState:
        """Returns once the row is committed; the state returned is what the table now holds."""
        stored = await self._writes.submit(row)
        if isinstance(stored, Exception):
            raise stored
        return stored

    async def lookup(self, job_id: str) -> StoredState | None:
        return await self._lookups.submit(job_id)

    async def get(self, job_id: str) -> dict[str, Any] | None:
        return await fetch_job(self._pool, job_id)

    def _observe(self, size: int, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.batch_size.observe(size)
            self._metrics.batch_flush.observe(seconds)

    async def _write_batch(self, rows: Sequence[JobRow]) -> list[StoredState | Exception]:
        merged, counts, winner = _merge(rows)
        try:
            by_id = await self._upsert(merged, counts)
        except asyncpg.DataError:
            # One row PostgreSQL refuses must not fail the others sharing its batch: write
            # them one by one, so only the bad row's caller gets the error.
            by_id = {}
            for row, n in zip(merged, counts, strict=True):
                try:
                    by_id.update(await self._upsert([row], [n]))
                except asyncpg.DataError as exc:
                    by_id[row.job_id] = exc
        return [by_id[merged[winner[row.job_id]].job_id] for row in rows]

    async def _upsert(
        self, rows: Sequence[JobRow], counts: Sequence[int]
    ) -> dict[str, StoredState | Exception]:
        cols: list[list[Any]] = [[] for _ in range(13)]
        for row, n in zip(rows, counts, strict=True):
            values = (
                row.job_id, _text(row.type), row.status.value, row.attempt, row.result,
                _text(row.error), _text(row.error_class), _text(row.source),
                _text(row.replay_of), _text(row.worker), row.created_at, row.finished_at, n,
            )  # fmt: skip
            for col, value in zip(cols, values, strict=True):
                col.append(value)
        try:
            records = await self._pool.fetch(_UPSERT, *cols)
        except Exception:
            if self._metrics is not None:
                self._metrics.db_errors.labels(op="write").inc()
            raise
        return {r["job_id"]: StoredState.from_record(r) for r in records}

    async def _lookup_batch(self, job_ids: Sequence[str]) -> list[StoredState | None]:
        try:
            records = await self._pool.fetch(_LOOKUP, list(set(job_ids)))
        except Exception:
            if self._metrics is not None:
                self._metrics.db_errors.labels(op="lookup").inc()
            raise
        by_id = {r["job_id"]: StoredState.from_record(r) for r in records}
        return [by_id.get(job_id) for job_id in job_ids]
