"""Job rows in PostgreSQL: batched execution claims, lease renewal and fenced upserts.

Exactly one terminal row per job id, and no job run by two executions at once: a job runs only
after its execution claimed the row (``running``, its ``claim_token``, a ``lease_until`` renewed
while it runs), and only the claim's holder may then write the row. A terminal row (succeeded,
dead_lettered) is never claimed again, except a dead-lettered one by a replay.

``executions`` counts handler runs: a won claim that starts one adds it in the same statement,
before the handler is called, so a run whose process dies before its row is written is still
counted, and a write never counts (a late write of a run that lost its claim was counted by
that run's claim already).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg

from jobstream.models.job import JobStatus
from jobstream.models.rows import ClaimRequest, ClaimResult, JobRow, ScheduledRow, StoredState
from jobstream.streams.failures import describe
from jobstream.streams.metrics import Metrics
from jobstream.streams.pg.batching import Batcher

log = logging.getLogger(__name__)
T = TypeVar("T")

_UPSERT = """
WITH input AS (
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::int[], $5::jsonb[], $6::text[], $7::text[],
        $8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[], $13::int[],
        $14::text[]
    ) AS t(job_id, type, status, attempt, result, error, error_class, source, replay_of,
           worker, created_at, finished_at, executions, claim_token)
)
INSERT INTO jobs AS j (job_id, type, status, attempt, result, error, error_class, source,
                       replay_of, worker, created_at, finished_at, executions, claim_token)
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
    lease_until = CASE WHEN {writable} THEN NULL                 ELSE j.lease_until END,
    type        = coalesce(j.type, EXCLUDED.type),
    created_at  = coalesce(j.created_at, EXCLUDED.created_at),
    updated_at  = now()
RETURNING {returned}
""".format(
    # Fencing: only the execution that holds the claim writes the job's state. A late write
    # of an execution whose lease expired and was taken over changes nothing.
    writable="(j.status = 'running' AND j.claim_token = EXCLUDED.claim_token)",
    returned="job_id, status, attempt, result, error, error_class, worker, finished_at,"
    " claim_token, lease_until, source, run_at",
)

_CLAIM = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::timestamptz[],
                         $6::bool[], $9::bool[], $10::int[], $11::text[])
        AS t(job_id, type, attempt, token, created_at, replay, run, max_takeovers, topic)
), claimed AS (
    INSERT INTO jobs AS j (job_id, type, status, attempt, worker, claim_token, lease_until,
                           created_at, executions, takeovers, started_at, topic)
    SELECT job_id, type, 'running', attempt, $7, token, now() + make_interval(secs => $8),
           created_at, run::int, 0, now(), topic
    FROM input
    ON CONFLICT (job_id) DO UPDATE SET
        status      = 'running',
        attempt     = EXCLUDED.attempt,
        worker      = EXCLUDED.worker,
        claim_token = EXCLUDED.claim_token,
        lease_until = EXCLUDED.lease_until,
        takeovers   = {takeovers},
        executions  = j.executions + (
            SELECT (i.run AND j.cancel_requested_at IS NULL
                    AND (i.max_takeovers = 0 OR {takeovers} < i.max_takeovers))::int
            FROM input i WHERE i.job_id = j.job_id
        ),
        started_at  = now(),
        event       = NULL,
        progress    = NULL,
        progress_detail = NULL,
        progress_at = NULL,
        type        = coalesce(j.type, EXCLUDED.type),
        topic       = coalesce(j.topic, EXCLUDED.topic),
        created_at  = coalesce(j.created_at, EXCLUDED.created_at),
        updated_at  = now()
    WHERE (j.status = 'retrying' AND EXCLUDED.attempt > j.attempt)
       OR (j.status = 'running' AND j.lease_until < now() AND EXCLUDED.attempt >= j.attempt)
       OR (j.status = 'scheduled' AND j.run_at <= now() AND EXCLUDED.attempt >= j.attempt)
       OR (j.status = 'dead_lettered'
           AND EXISTS (SELECT 1 FROM input i WHERE i.job_id = j.job_id AND i.replay))
    RETURNING j.job_id, j.takeovers, j.cancel_requested_at IS NOT NULL AS cancel_requested
)
SELECT i.job_id, c.job_id IS NOT NULL AS won, c.takeovers, c.cancel_requested,
       o.status, o.attempt, o.result, o.error, o.error_class, o.worker, o.finished_at,
       o.claim_token, o.lease_until, o.source, o.run_at
FROM input i
LEFT JOIN claimed c ON c.job_id = i.job_id
LEFT JOIN jobs o ON o.job_id = i.job_id
""".format(
    # the row's takeovers once claimed: one more when an expired claim is taken over, none
    # after a replay of a dead letter
    takeovers="CASE WHEN j.status = 'running' THEN j.takeovers + 1"
    " WHEN j.status = 'dead_lettered' THEN 0 ELSE j.takeovers END",
)
"""One round trip claims a batch: a new job gets a ``running`` row; an existing one is taken
when its next attempt arrives (``retrying``), when its lease expired (the worker died: a
takeover), when it is due (``scheduled``), or when a replay of a dead letter arrives. A claim
that starts a handler run counts it in ``executions`` (see ``ClaimRequest.run``), unless the job
was asked to be cancelled (``cancel_requested``: it ends cancelled without a run). The outer
select reads the statement's snapshot, i.e. the row as it was before: for a claim not won,
that is the state to act on."""

_STATES = """
SELECT job_id, status, attempt, result, error, error_class, worker, finished_at, claim_token,
       lease_until, source, run_at
FROM jobs WHERE job_id = ANY($1::text[])
"""

_CANCEL_REQUESTED = """
SELECT j.job_id FROM jobs AS j
JOIN unnest($1::text[], $2::text[]) AS t(job_id, token)
  ON j.job_id = t.job_id AND j.claim_token = t.token
WHERE j.status = 'running' AND j.cancel_requested_at IS NOT NULL
"""

_PROGRESS = """
UPDATE jobs AS j SET progress = t.fraction, progress_detail = t.detail, progress_at = now()
FROM unnest($1::text[], $2::text[], $3::real[], $4::text[]) AS t(job_id, token, fraction, detail)
WHERE j.job_id = t.job_id AND j.claim_token = t.token AND j.status = 'running'
"""

_PARK = """
INSERT INTO jobs AS j (job_id, type, status, attempt, created_at, run_at, expires_at, event,
                       executions, worker, source, topic)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::timestamptz[],
                     $6::timestamptz[], $7::timestamptz[], $8::jsonb[], $9::int[], $10::text[],
                     $11::text[], $12::text[])
ON CONFLICT (job_id) DO NOTHING
RETURNING job_id
"""
"""Delayed jobs as ``scheduled`` rows, the dispatcher's outbox; a job id that has a row keeps
it (a redelivered copy, or a job submitted twice)."""

_RENEW = """
WITH held AS (
    SELECT j.job_id FROM jobs AS j
    JOIN unnest($1::text[], $2::text[]) AS t(job_id, token)
      ON j.job_id = t.job_id AND j.claim_token = t.token
    WHERE j.status = 'running'
    ORDER BY j.job_id
    FOR UPDATE OF j
)
UPDATE jobs AS j SET lease_until = now() + make_interval(secs => $3), updated_at = now()
FROM held WHERE j.job_id = held.job_id
RETURNING j.job_id
"""
"""Rows are locked in job id order, as every batch statement here takes them (its input
sorted by job id): two replicas' batches that share rows wait for each other instead of
deadlocking."""


async def fetch_job(pool: asyncpg.Pool, job_id: str) -> dict[str, Any] | None:
    """One job's whole row, for status queries (the API, ``jobstream status``)."""
    row = await pool.fetchrow("SELECT * FROM jobs WHERE job_id = $1", job_id)
    return dict(row) if row is not None else None


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold U+0000; an error message quoting one must still be stored."""
    return value.replace("\x00", "\ufffd") if value else value


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows of values as one list per column: the arrays the statements ``unnest``."""
    return [list(col) for col in zip(*rows, strict=True)] or [[] for _ in range(width)]


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for at in range(0, len(items), size):
        yield items[at : at + size]


def _merge(rows: Sequence[JobRow]) -> tuple[list[JobRow], dict[str, int]]:
    """One row per job id per statement (Postgres refuses to update a row twice in one).

    Returns the rows to write and the index of each input's winner. A terminal row beats a
    retrying one; among equals the first wins.
    """
    chosen: dict[str, int] = {}
    out: list[JobRow] = []
    for row in rows:
        at = chosen.get(row.job_id)
        if at is None:
            chosen[row.job_id] = len(out)
            out.append(row)
        elif not out[at].status.terminal and row.status.terminal:
            out[at] = row
    return out, chosen


class ResultStore:
    """Batched claims and writes, and the lease renewal of the claims this process holds."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_size: int = 500,
        max_delay_s: float = 0.005,
        metrics: Metrics | None = None,
        worker: str = "",
        lease_s: float = 30.0,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self.worker = worker
        self.lease_s = lease_s
        self._writes: Batcher[JobRow, StoredState | Exception] = Batcher(
            self._write_batch,
            max_size=max_size,
            max_delay_s=max_delay_s,
            on_flush=self._observe,
            name="result-writes",
        )
        self._claims: Batcher[ClaimRequest, ClaimResult] = Batcher(
            self._claim_batch, max_size=max_size, max_delay_s=max_delay_s, name="claims"
        )
        self.held: dict[str, str] = {}
        """job id -> claim token of every claim this process holds now (renewed together)."""
        self._renewer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._writes.start()
        self._claims.start()
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_loop(), name="claim-renewer")

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        await asyncio.gather(self._writes.close(), self._claims.close())

    async def write(self, row: JobRow) -> StoredState:
        """Returns once the row is committed; the state returned is what the table now holds."""
        stored = await self._writes.submit(row)
        if isinstance(stored, Exception):
            raise stored
        return stored

    async def claim(self, request: ClaimRequest) -> ClaimResult:
        """Take the job for this execution, or learn who has it (see ``_CLAIM``)."""
        result = await self._claims.submit(request)
        if result.won:
            self.held[request.job_id] = request.token
        return result

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[ClaimResult]:
        """The batch path's claims: one statement per ``max_size`` requests, no future each."""
        out: list[ClaimResult] = []
        for chunk in _chunks(requests, self._claims.max_size):
            results = await self._claim_batch(chunk)
            for req, result in zip(chunk, results, strict=True):
                if result.won:
                    self.held[req.job_id] = req.token
            out.extend(results)
        return out

    async def park_many(self, rows: Sequence[ScheduledRow]) -> list[StoredState | None]:
        """See ``_PARK``: None where the row was made, else the row that was there."""
        if not rows:
            return []
        ordered = sorted(rows, key=_job_id)  # the lock order (see _RENEW)
        try:
            made = {
                r["job_id"]
                for r in await self._pool.fetch(
                    _PARK,
                    [r.job_id for r in ordered],
                    [_text(r.type) for r in ordered],
                    ["scheduled"] * len(ordered),
                    [r.attempt for r in ordered],
                    [r.created_at for r in ordered],
                    [r.run_at for r in ordered],
                    [r.expires_at for r in ordered],
                    [r.event for r in ordered],
                    [0] * len(ordered),
                    [self.worker] * len(ordered),
                    [r.source for r in ordered],
                    [r.topic for r in ordered],
                )
            }
            kept = [r.job_id for r in rows if r.job_id not in made]
            found = (
                {
                    r["job_id"]: StoredState.from_record(r)
                    for r in await self._pool.fetch(_STATES, kept)
                }
                if kept
                else {}
            )
        except Exception:
            if self._metrics is not None:
                self._metrics.db_errors.labels(op="park").inc()
            raise
        return [None if r.job_id in made else found.get(r.job_id) for r in rows]

    async def cancel_requested(self, held: Mapping[str, str]) -> list[str]:
        """Of the running jobs this process holds (job id -> token), those asked to be
        cancelled."""
        if not held:
            return []
        records = await self._pool.fetch(_CANCEL_REQUESTED, list(held), list(held.values()))
        return [r["job_id"] for r in records]

    async def progress_many(self, updates: Sequence[tuple[str, str, float, str | None]]) -> None:
        """(job id, token, fraction, detail) of running jobs, in one statement; a job no longer
        held under that token is left alone."""
        if not updates:
            return
        cols = _columns([(j, t, f, _text(d)) for j, t, f, d in updates], 4)
        await self._pool.execute(_PROGRESS, *cols)

    async def write_many(self, rows: Sequence[JobRow]) -> list[StoredState | Exception]:
        """The batch path's writes: one statement per ``max_size`` rows, no future each."""
        out: list[StoredState | Exception] = []
        for chunk in _chunks(rows, self._writes.max_size):
            started = time.perf_counter()
            out.extend(await self._write_batch(chunk))
            self._observe(len(chunk), time.perf_counter() - started)
        return out

    def release(self, job_id: str, token: str) -> None:
        """Stop renewing: the claim's job has its state written (or was abandoned)."""
        if self.held.get(job_id) == token:
            del self.held[job_id]

    async def get(self, job_id: str) -> dict[str, Any] | None:
        return await fetch_job(self._pool, job_id)

    def _observe(self, size: int, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.batch_size.observe(size)
            self._metrics.batch_flush.observe(seconds)

    async def _write_batch(self, rows: Sequence[JobRow]) -> list[StoredState | Exception]:
        merged, winner = _merge(rows)
        try:
            by_id = await self._upsert(merged)
        except asyncpg.DataError:
            # One row PostgreSQL refuses must not fail the others sharing its batch: write
            # them one by one, so only the bad row's caller gets the error.
            by_id = {}
            for row in merged:
                try:
                    by_id.update(await self._upsert([row]))
                except asyncpg.DataError as exc:
                    by_id[row.job_id] = exc
        return [by_id[merged[winner[row.job_id]].job_id] for row in rows]

    async def _upsert(self, rows: Sequence[JobRow]) -> dict[str, StoredState | Exception]:
        cols = _columns(
            [
                (
                    row.job_id, _text(row.type), row.status.value, row.attempt, row.result,
                    _text(row.error), _text(row.error_class), _text(row.source),
                    _text(row.replay_of), _text(row.worker), row.created_at, row.finished_at,
                    0, row.claim_token,
                )
                for row in sorted(rows, key=_job_id)  # the lock order (see _RENEW)
            ],
            14,
        )  # fmt: skip
        try:
            records = await self._pool.fetch(_UPSERT, *cols)
        except Exception:
            if self._metrics is not None:
                self._metrics.db_errors.labels(op="write").inc()
            raise
        return {r["job_id"]: StoredState.from_record(r) for r in records}

    async def _claim_batch(self, requests: Sequence[ClaimRequest]) -> list[ClaimResult]:
        # A job id twice in one batch (copies of one event in flight at once): PostgreSQL
        # refuses to update a row twice in one statement, and only one copy may run anyway.
        first: dict[str, ClaimRequest] = {}
        for req in requests:
            first.setdefault(req.job_id, req)
        unique = sorted(first.values(), key=_job_id)  # the lock order (see _RENEW)
        try:
            records = await self._pool.fetch(
                _CLAIM,
                [r.job_id for r in unique],
                [_text(r.type) for r in unique],
                [r.attempt for r in unique],
                [r.token for r in unique],
                [r.created_at for r in unique],
                [r.replay for r in unique],
                self.worker,
                self.lease_s,
                [r.run for r in unique],
                [r.max_takeovers for r in unique],
                [r.topic for r in unique],
            )
        except Exception:
            if self._metrics is not None:
                self._metrics.db_errors.labels(op="claim").inc()
            raise
        by_id: dict[str, ClaimResult] = {}
        for r in records:
            existing = StoredState.from_record(r) if r["status"] is not None else None
            by_id[r["job_id"]] = ClaimResult(
                won=r["won"],
                takeovers=r["takeovers"] or 0,
                existing=existing,
                cancel_requested=bool(r["cancel_requested"]),
            )
        out: list[ClaimResult] = []
        for req in requests:
            winner = first[req.job_id]
            result = by_id[req.job_id]
            if winner is req:
                out.append(result)
            else:
                # the copy in the same batch sees the first one's claim as held by another
                held = StoredState(
                    job_id=req.job_id, status=JobStatus.RUNNING, attempt=winner.attempt,
                    result=None, error=None, error_class=None, worker=self.worker,
                    finished_at=None, claim_token=winner.token if result.won else None,
                )  # fmt: skip
                out.append(ClaimResult(won=False, existing=held))
        return out

    async def _renew_loop(self) -> None:
        """Renew every held claim in one statement, three times per lease."""
        interval = max(self.lease_s / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            await self.renew()

    async def renew(self) -> None:
        held = dict(self.held)
        if not held:
            return
        try:
            records = await self._pool.fetch(
                _RENEW, list(held.keys()), list(held.values()), self.lease_s
            )
        except Exception as exc:  # noqa: BLE001 - the next tick retries; meanwhile the lease may lapse
            if self._metrics is not None:
                self._metrics.db_errors.labels(op="renew").inc()
            log.warning("claim renewal failed: %s", describe(exc))
            return
        renewed = {r["job_id"] for r in records}
        for job_id, token in held.items():
            if job_id not in renewed and self.held.get(job_id) == token:
                # taken over by another execution: no longer ours to renew (counted once)
                del self.held[job_id]
                if self._metrics is not None:
                    self._metrics.claims_lost.inc()


def _job_id(item: JobRow | ClaimRequest | ScheduledRow) -> str:
    return item.job_id
