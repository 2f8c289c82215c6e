"""Retention of finished job rows: what may be deleted, and the sweeper that deletes it.

Why rows are pruned at all: every job leaves one row, so at a few hundred thousand jobs a day
the table grows without bound while only recent rows are read (status queries, re-emitted
outcomes, dedupe of redelivered events). A limit per terminal status, by age and by count,
bounds it; rows that are ``retrying`` are never touched, because they are how a redelivered
event learns that its retry is already durable, nor are ``scheduled`` rows (a delayed job's row
is the job itself until it is published). ``cancelled`` and ``expired`` rows, jobs that ended
without a result, follow the limits of succeeded rows.

A dead-lettered row is kept while its dead letter may still be in the dead-letter topic: the
row is how an operator finds the letter, and the replay tool's dedupe relies on both. The topic
itself says how far back it still holds letters: the timestamp of the first retained record of
each partition. A letter is produced (with the worker's clock) after its row's ``finished_at``
is taken, so a row finished before the earliest retained record of every partition, less
:data:`DEAD_LETTER_MARGIN_S` for clock skew and publish retries, has no letter left. When the
topic cannot be read, no dead-lettered row is pruned in that sweep.

One replica sweeps at a time: each batch is its own short transaction that first takes
``pg_try_advisory_xact_lock``; a replica that does not get it gives up that sweep. The lock is
transaction-level, so it is released by commit or rollback on whatever server connection ran
it, which is what a transaction-mode pooler (PgBouncer) requires. Batches delete at most
``batch_size`` rows chosen with ``FOR UPDATE SKIP LOCKED``: a row an upsert holds is left for the
next sweep, and no lock is held longer than one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from jobstream.models.job import JobStatus
from jobstream.streams.kafka.reader import partitions_of
from jobstream.streams.metrics import Metrics
from jobstream.streams.settings import Settings

log = logging.getLogger(__name__)

# the age scan and the count cutoff walk this index in finished_at order within one status

SWEEP_LOCK = 0x6A6F6272  # one advisory lock key: one sweeping replica at a time

DEAD_LETTER_MARGIN_S = 3600.0
"""Rows finished this close to the earliest retained dead letter are kept: worker clocks may
differ, and a dead letter is published after its row's ``finished_at`` (later still when Kafka
was unreachable and the publish was retried)."""

PRUNABLE = (JobStatus.SUCCEEDED, JobStatus.DEAD_LETTERED, JobStatus.CANCELLED, JobStatus.EXPIRED)
"""The terminal statuses. Never ``scheduled`` (a job waiting for its time: its row is its only
copy), ``running`` or ``retrying`` rows."""

_COUNT_CUTOFF = """
SELECT finished_at FROM jobs
WHERE status = $1 AND finished_at IS NOT NULL
ORDER BY finished_at DESC OFFSET $2 LIMIT 1
"""

_PREDICATE = "status = $1 AND finished_at < $2"

_COUNT = f"SELECT count(*) FROM jobs WHERE {_PREDICATE}"

_LOCK = "SELECT pg_try_advisory_xact_lock($1) AS got, clock_timestamp() AS at"

# = ANY(ARRAY(...)): the chosen ids are looked up by primary key. With ``IN (subquery)`` the
# planner may hash-join the subquery against a scan of the whole table, once per batch.
_DELETE = f"""
WITH gone AS (
    DELETE FROM jobs
    WHERE job_id = ANY(ARRAY(
        SELECT job_id FROM jobs WHERE {_PREDICATE} LIMIT $3 FOR UPDATE SKIP LOCKED
    )) AND {_PREDICATE}
    RETURNING 1
)
SELECT count(*) AS n, clock_timestamp() AS at FROM gone
"""

_STALE_KEY = """
    d.expires_at <= now()
    OR (d.mode = 'simple' AND NOT EXISTS (
        SELECT 1 FROM jobs j
        WHERE j.job_id = d.job_id AND j.status IN ('scheduled', 'running', 'retrying')))
    OR (d.mode = 'debounce' AND NOT EXISTS (
        SELECT 1 FROM jobs j WHERE j.job_id = d.job_id AND j.status = 'scheduled'))
"""
"""A dedupe key that decides nothing any more (see :func:`jobstream.streams.pg.dedupe.decide`):
past its TTL; ``simple`` whose job finished (or is gone); ``debounce`` whose job no longer
waits. A submit then makes a new job, with or without the row, so deleting it changes no
answer; a submit that holds the key's row lock is skipped and its key kept for the next sweep."""

_DELETE_KEYS = f"""
WITH stale AS (
    SELECT topic, key FROM dedupe_keys d WHERE {_STALE_KEY} LIMIT $1 FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM dedupe_keys k USING stale s WHERE k.topic = s.topic AND k.key = s.key
    RETURNING 1
)
SELECT count(*) AS n, clock_timestamp() AS at FROM gone
"""

_COUNT_KEYS = f"SELECT count(*) FROM dedupe_keys d WHERE {_STALE_KEY}"

_TABLE_SIZE = """
SELECT coalesce((SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = 'jobs'::regclass), 0)
           AS rows,
       pg_total_relation_size('jobs'::regclass) AS bytes
"""


@dataclass(frozen=True)
class StatusRule:
    """Rows of ``status`` are kept for ``max_age_s`` and at most ``max_rows`` (None: no limit)."""

    status: JobStatus
    max_age_s: float | None
    max_rows: int | None


@dataclass(frozen=True)
class RetentionPolicy:
    rules: tuple[StatusRule, ...]
    batch_size: int = 2000
    include_unexpired_dead_letters: bool = False

    @classmethod
    def from_settings(
        cls, settings: Settings, *, include_unexpired_dead_letters: bool | None = None
    ) -> RetentionPolicy:
        s = settings
        include = s.retention_include_unexpired_dead_letters
        if include_unexpired_dead_letters is not None:
            include = include_unexpired_dead_letters
        return cls(
            rules=(
                StatusRule(
                    JobStatus.SUCCEEDED, s.retention_succeeded_age_s, s.retention_succeeded_max_rows
                ),
                StatusRule(
                    JobStatus.DEAD_LETTERED,
                    s.retention_dead_lettered_age_s,
                    s.retention_dead_lettered_max_rows,
                ),
                # jobs that ended without a result are kept as long as succeeded ones
                StatusRule(
                    JobStatus.CANCELLED, s.retention_succeeded_age_s, s.retention_succeeded_max_rows
                ),
                StatusRule(
                    JobStatus.EXPIRED, s.retention_succeeded_age_s, s.retention_succeeded_max_rows
                ),
            ),
            batch_size=s.retention_batch_size,
            include_unexpired_dead_letters=include,
        )


@dataclass(frozen=True)
class Batch:
    """One delete transaction, with the database clock when it got the lock and when it ended."""

    started: datetime
    ended: datetime
    rows: int


@dataclass
class StatusReport:
    status: str
    cutoff: datetime | None
    """Rows of this status finished before this go (None: nothing is due)."""
    rows: int = 0
    """Deleted, or with ``dry_run`` the number that would be."""
    note: str = ""


@dataclass
class SweepReport:
    ran: bool
    """False when another replica held the sweep lock, so this one deleted nothing."""
    dry_run: bool
    statuses: list[StatusReport] = field(default_factory=list)
    batches: list[Batch] = field(default_factory=list)
    dead_letter_horizon: datetime | None = None
    seconds: float = 0.0
    dedupe_keys: int = 0
    """Dedupe keys that decided nothing any more, deleted (or with ``dry_run``: due)."""

    @property
    def total(self) -> int:
        return sum(s.rows for s in self.statuses)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ran": self.ran,
            "dry_run": self.dry_run,
            "total": self.total,
            "seconds": round(self.seconds, 3),
            "dead_letter_horizon": _iso(self.dead_letter_horizon),
            "dedupe_keys": self.dedupe_keys,
            "statuses": [
                {"status": s.status, "cutoff": _iso(s.cutoff), "rows": s.rows, "note": s.note}
                for s in self.statuses
            ],
        }


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


DeadLetterHorizon = Callable[[], Awaitable[datetime | None]]


async def dead_letter_horizon(
    bootstrap: str,
    topic: str,
    *,
    options: Mapping[str, Any] | None = None,
    margin_s: float = DEAD_LETTER_MARGIN_S,
    timeout_s: float = 15.0,
) -> datetime | None:
    """Dead-lettered rows finished at or after this may still have their letter in ``topic``.

    None when it cannot be known (topic missing, broker unreachable, records without
    timestamps): then no dead-lettered row may be pruned.
    """
    checked_at = datetime.now(UTC)
    try:
        async with asyncio.timeout(timeout_s):
            parts = (await partitions_of(bootstrap, [topic], options)).get(topic)
    except Exception as exc:  # noqa: BLE001 - timeouts, OSError and aiokafka's errors: all mean "unknown", the rows stay
        log.warning("retention: cannot read %s, keeping dead-lettered rows: %r", topic, exc)
        return None
    if not parts:
        log.warning("retention: topic %s not found, keeping dead-lettered rows", topic)
        return None
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **(options or {}),
    )
    try:
        async with asyncio.timeout(timeout_s):
            await consumer.start()
            earliest = await _earliest_timestamp(consumer, topic, parts)
    except Exception as exc:  # noqa: BLE001 - timeouts, OSError and aiokafka's errors: all mean "unknown", the rows stay
        log.warning("retention: cannot read %s, keeping dead-lettered rows: %r", topic, exc)
        return None
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    if earliest is _UNKNOWN:
        return None
    bound = checked_at if earliest is None else min(checked_at, earliest)
    return bound - timedelta(seconds=margin_s)


_UNKNOWN: Any = object()


async def _earliest_timestamp(consumer: AIOKafkaConsumer, topic: str, parts: list[int]) -> Any:
    """The smallest timestamp of the first retained record over the topic's partitions; None
    when the topic holds no record at all, ``_UNKNOWN`` when it cannot be told."""
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    begin = await consumer.beginning_offsets(tps)
    end = await consumer.end_offsets(tps)
    pending = {tp for tp in tps if begin[tp] < end[tp]}
    if not pending:
        return None
    consumer.assign(sorted(pending))
    for tp in pending:
        consumer.seek(tp, begin[tp])
    earliest: datetime | None = None
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=1000)
        for tp, records in batch.items():
            if tp not in pending or not records:
                continue
            pending.discard(tp)
            consumer.pause(tp)
            ts = records[0].timestamp
            if ts is None or ts < 0:
                return _UNKNOWN
            at = datetime.fromtimestamp(ts / 1000, UTC)
            earliest = at if earliest is None else min(earliest, at)
    return earliest


class Sweeper:
    """Applies a :class:`RetentionPolicy`; ``sweep`` is also what ``jobstream prune`` runs."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        policy: RetentionPolicy,
        *,
        dead_letters: DeadLetterHorizon | None = None,
        metrics: Metrics | None = None,
        interval_s: float = 60.0,
    ) -> None:
        self._pool = pool
        self._policy = policy
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    # -- one sweep -----------------------------------------------------------------------------

    async def sweep(self, *, dry_run: bool = False) -> SweepReport:
        started = time.monotonic()
        report = SweepReport(ran=True, dry_run=dry_run)
        now: datetime = await self._pool.fetchval("SELECT clock_timestamp()")
        horizon_known = True
        if self._needs_horizon():
            if self._dead_letters is None:
                horizon_known = False
            else:
                report.dead_letter_horizon = await self._dead_letters()
                horizon_known = report.dead_letter_horizon is not None
        for rule in self._policy.rules:
            if rule.status not in PRUNABLE:
                raise ValueError(f"rows of status {rule.status.value!r} are never pruned")
            cutoff = await self._cutoff(rule, now)
            status = StatusReport(rule.status.value, cutoff)
            report.statuses.append(status)
            if rule.status is JobStatus.DEAD_LETTERED and self._needs_horizon():
                if not horizon_known:
                    status.cutoff, status.note = None, "dead-letter topic unreadable: kept"
                elif cutoff is not None and report.dead_letter_horizon is not None:
                    if report.dead_letter_horizon < cutoff:
                        status.note = "letters still in the topic are kept"
                    status.cutoff = min(cutoff, report.dead_letter_horizon)
            if status.cutoff is None:
                continue
            if dry_run:
                status.rows = int(await self._pool.fetchval(_COUNT, status.status, status.cutoff))
                continue
            if not await self._delete(status, report):
                report.ran = False
                break
        if report.ran:
            await self._sweep_keys(report, dry_run)
        report.seconds = time.monotonic() - started
        return report

    async def _sweep_keys(self, report: SweepReport, dry_run: bool) -> None:
        """Dedupe keys that decide nothing any more, in batches under the sweep lock."""
        if dry_run:
            report.dedupe_keys = int(await self._pool.fetchval(_COUNT_KEYS))
            return

        def counted(_locked_at: datetime, row: asyncpg.Record) -> int:
            report.dedupe_keys += int(row["n"])
            return int(row["n"])

        if not await self._locked_batches(_DELETE_KEYS, on_batch=counted):
            report.ran = False

    def _needs_horizon(self) -> bool:
        return not self._policy.include_unexpired_dead_letters and any(
            r.status is JobStatus.DEAD_LETTERED for r in self._policy.rules
        )

    async def _cutoff(self, rule: StatusRule, now: datetime) -> datetime | None:
        """The later of the age cutoff and the count cutoff: either limit makes a row due."""
        cutoffs: list[datetime] = []
        if rule.max_age_s is not None:
            cutoffs.append(now - timedelta(seconds=rule.max_age_s))
        if rule.max_rows is not None:
            # rows older than the max_rows-th newest; ties with it stay, so at least max_rows do
            nth = await self._pool.fetchval(_COUNT_CUTOFF, rule.status.value, rule.max_rows - 1)
            if nth is not None:
                cutoffs.append(nth)
        return max(cutoffs) if cutoffs else None

    async def _delete(self, status: StatusReport, report: SweepReport) -> bool:
        """Batches until fewer than a batch are due; False if another replica holds the lock."""

        def counted(locked_at: datetime, row: asyncpg.Record) -> int:
            n = int(row["n"])
            report.batches.append(Batch(locked_at, row["at"], n))
            status.rows += n
            if self._metrics is not None and n:
                self._metrics.retention_pruned.labels(status=status.status).inc(n)
            return n

        return await self._locked_batches(_DELETE, status.status, status.cutoff, on_batch=counted)

    async def _locked_batches(
        self,
        statement: str,
        *args: object,
        on_batch: Callable[[datetime, asyncpg.Record], int],
    ) -> bool:
        """Runs a batched delete (its last parameter the batch size), each batch in a
        transaction of its own under the sweep lock, until one deletes fewer than a batch;
        False if another replica holds the lock. ``on_batch`` gets the lock's time and the
        statement's row and returns how many rows that batch deleted."""
        batch_size = self._policy.batch_size
        async with self._pool.acquire() as conn:
            while True:
                async with conn.transaction():
                    lock = await conn.fetchrow(_LOCK, SWEEP_LOCK)
                    assert lock is not None  # a SELECT without FROM: always one row
                    if not lock["got"]:
                        return False
                    row = await conn.fetchrow(statement, *args, batch_size)
                assert row is not None  # an aggregate over the deleted rows: always one row
                if on_batch(lock["at"], row) < batch_size:
                    return True

    async def observe_table(self) -> tuple[int, int]:
        """Rows (estimate) and bytes of the jobs table, exported as gauges."""
        row = await self._pool.fetchrow(_TABLE_SIZE)
        assert row is not None  # the jobs table exists once migrated
        rows, size = int(row["rows"]), int(row["bytes"])
        if self._metrics is not None:
            self._metrics.jobs_table_rows.set(rows)
            self._metrics.jobs_table_bytes.set(size)
        return rows, size

    # -- in the worker -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="retention-sweeper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        # replicas started together would all try at once; spread them over one interval
        await asyncio.sleep(random.uniform(0, self._interval_s))
        while True:
            await self._round()
            await asyncio.sleep(self._interval_s * random.uniform(0.8, 1.2))

    async def _round(self) -> None:
        result = "failed"
        try:
            report = await self.sweep()
            result = "done" if report.ran else "skipped"
            if report.total or report.dedupe_keys:
                log.info(
                    "retention: pruned %d rows in %.2fs (%s), %d stale dedupe keys",
                    report.total,
                    report.seconds,
                    ", ".join(f"{s.status} {s.rows}" for s in report.statuses),
                    report.dedupe_keys,
                )
            await self.observe_table()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            # the database is down or busy: the next round tries again, nothing is lost
            log.warning("retention sweep failed: %r", exc)
        except Exception:
            # a maintenance loop must not take the worker down; the next round tries again
            log.exception("retention sweep failed")
        finally:
            if self._metrics is not None:
                self._metrics.retention_sweeps.labels(result=result).inc()


def worker_sweeper(
    settings: Settings,
    pool: asyncpg.Pool,
    *,
    bootstrap: str,
    dlq_topic: str,
    kafka_options: Mapping[str, Any] | None = None,
    metrics: Metrics | None = None,
) -> Sweeper | None:
    """The sweeper a worker replica runs, started; None when retention is switched off."""
    if not settings.retention_enabled:
        return None

    async def horizon() -> datetime | None:
        return await dead_letter_horizon(bootstrap, dlq_topic, options=kafka_options)

    sweeper = Sweeper(
        pool,
        RetentionPolicy.from_settings(settings),
        dead_letters=horizon,
        metrics=metrics,
        interval_s=settings.retention_interval_s,
    )
    sweeper.start()
    return sweeper
