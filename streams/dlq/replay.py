"""The dead-letter tool's logic: filter, read a bounded snapshot of the DLQ, replay it.

The tool never joins the workers' consumer group: it reads the dead-letter topic with a
group-less consumer (manual assignment, no commits), so inspecting or replaying cannot
trigger a rebalance or move the workers' offsets. What it reads is bounded by the end
offsets seen at start, so it terminates while new dead letters keep arriving.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from jobstream.models.deadletter import REPLAY_HEADER, DeadLetter, unb64
from jobstream.models.job import JobEvent
from jobstream.streams.dlq import audit as dlq_audit
from jobstream.streams.dlq.snapshot import (
    Snapshot,
    UnreachableError,
    first_line,
    read_snapshot,
    start_client,
)
from jobstream.streams.metrics import Metrics
from jobstream.streams.pg.control import reopen
from jobstream.streams.pg.migrations import migrate
from jobstream.streams.pg.pool import Connection

PUBLISH_TIMEOUT_S = 30.0
MAX_CONSECUTIVE_FAILURES = 3


# --- replay ------------------------------------------------------------------------------


class Action(StrEnum):
    REPLAY = "replay"
    SKIP_REPLAYED = "skip-already-replayed"
    SKIP_INVALID = "skip-invalid"
    SKIP_CANCELLED = "skip-cancelled"
    """Its job was cancelled since: replayed only with ``include_cancelled``."""


@dataclass(frozen=True)
class ReplayOptions:
    target_topic: str
    dry_run: bool = False
    limit: int | None = None
    rate: float = 100.0
    """Events per second; 0 means unpaced."""
    reset_attempts: bool = False
    force: bool = False
    include_invalid: bool = False
    include_cancelled: bool = False
    """Replay dead letters of jobs cancelled since, too: each such job is reopened (back to
    ``dead_lettered``, audited) in its replay's transaction, so that the replay runs it. The
    one way a cancelled job runs again, and only on purpose."""


@dataclass(frozen=True)
class OutgoingRecord:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes | None]]
    as_event: bool
    """False when the original bytes go out unchanged because they are not a JobEvent."""


def decode_event(dl: DeadLetter) -> JobEvent | None:
    """The original JobEvent, or None when the worker could not read it in the first place."""
    raw = dl.original_bytes()
    if raw is None or dl.reason.undecodable:
        return None
    try:
        return JobEvent.model_validate_json(raw)
    except ValidationError:
        return None


def build_record(
    dl: DeadLetter, *, reset_attempts: bool, include_invalid: bool
) -> OutgoingRecord | None:
    """What to republish for ``dl``; None when it must be skipped as invalid.

    ``--reset-attempts`` sets ``attempt`` back to 1 but keeps ``history``: the attempt
    counter is the retry budget, the history is the evidence of why the job failed before.
    ``not_before`` is always cleared: a replay is meant to run now, not wait out a retry tier.
    """
    raw = dl.original_bytes()
    if raw is None:
        return None
    event = decode_event(dl)
    if event is not None:
        update: dict[str, object] = {"not_before": None}
        if reset_attempts:
            update["attempt"] = 1
        value = event.model_copy(update=update).to_bytes()
    elif include_invalid:
        value = raw
    else:
        return None
    key = unb64(dl.original_key)
    if key is None and event is not None:
        key = event.key()
    headers = [(n, unb64(v)) for n, v in dl.original_headers if n != REPLAY_HEADER]
    headers.append((REPLAY_HEADER, dl.id.encode()))
    return OutgoingRecord(key=key, value=value, headers=headers, as_event=event is not None)


@dataclass(frozen=True)
class PlanItem:
    dead_letter: DeadLetter
    action: Action
    record: OutgoingRecord | None
    reopen: bool = False
    """Its job is cancelled: the replay reopens it first (``include_cancelled``)."""


def plan(
    matched: Sequence[DeadLetter],
    already: set[str],
    opts: ReplayOptions,
    cancelled: Set[str] = frozenset(),
) -> list[PlanItem]:
    """Decide each dead letter's fate; ``--limit`` counts only the ones to republish.
    ``cancelled`` names the jobs whose row is ``cancelled`` now."""
    items: list[PlanItem] = []
    to_replay = 0
    for dl in matched:
        if opts.limit is not None and to_replay >= opts.limit:
            break
        reopen = dl.job_id in cancelled
        if reopen and not opts.include_cancelled:
            items.append(PlanItem(dl, Action.SKIP_CANCELLED, None))
            continue
        if dl.id in already and not opts.force:
            items.append(PlanItem(dl, Action.SKIP_REPLAYED, None))
            continue
        rec = build_record(
            dl, reset_attempts=opts.reset_attempts, include_invalid=opts.include_invalid
        )
        if rec is None:
            items.append(PlanItem(dl, Action.SKIP_INVALID, None))
            continue
        items.append(PlanItem(dl, Action.REPLAY, rec, reopen=reopen))
        to_replay += 1
    return items


@dataclass
class ReplayCounts:
    total: int = 0
    """Dead letters planned for republishing; ``done`` of them have been handled so far."""
    done: int = 0
    replayed: int = 0
    skipped_replayed: int = 0
    skipped_invalid: int = 0
    skipped_cancelled: int = 0
    failed: int = 0


class _Pacer:
    """Spaces sends ``1/rate`` apart on a fixed schedule, so slow sends do not lower the rate.

    After a stall (a producer restart, say) it catches up by at most one second's worth of
    sends instead of bursting the whole backlog at the workers.
    """

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = time.monotonic()

    async def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        self._next = max(self._next, now - 1.0)
        if self._next > now:
            await asyncio.sleep(self._next - now)
        self._next += self._interval


async def replay(
    items: Sequence[PlanItem],
    opts: ReplayOptions,
    *,
    bootstrap: str,
    conn: Connection,
    on_progress: Callable[[ReplayCounts], None] | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    metrics: Metrics | None = None,
    by: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> ReplayCounts:
    """Republish the planned dead letters, one audited transaction each (see dlq_audit).

    ``by`` names who asked in the audit (default ``user@host`` of this process).
    """
    counts = ReplayCounts(total=sum(1 for i in items if i.action is Action.REPLAY))
    counts.skipped_replayed = sum(1 for i in items if i.action is Action.SKIP_REPLAYED)
    counts.skipped_invalid = sum(1 for i in items if i.action is Action.SKIP_INVALID)
    counts.skipped_cancelled = sum(1 for i in items if i.action is Action.SKIP_CANCELLED)
    if not counts.total:
        return counts
    options = options or {}
    producer = await _producer(bootstrap, options)
    by = by or dlq_audit.replayed_by()
    pacer = _Pacer(opts.rate)
    consecutive = 0
    try:
        for item in (i for i in items if i.action is Action.REPLAY):
            counts.done += 1
            if producer is None or consecutive >= MAX_CONSECUTIVE_FAILURES:
                counts.failed += 1  # not attempted: the run gave up
                continue
            await pacer.wait()
            outcome = await _replay_one(item, opts, producer, conn, by, log)
            if outcome is Action.REPLAY:
                counts.replayed += 1
                if metrics is not None:
                    metrics.dlq_replayed.inc()
            elif outcome is Action.SKIP_REPLAYED:
                counts.skipped_replayed += 1
            if outcome is None:
                counts.failed += 1
                consecutive += 1
                if consecutive == MAX_CONSECUTIVE_FAILURES:
                    log(f"giving up after {consecutive} consecutive failures")
                else:
                    producer = await _restart(producer, bootstrap, log, options)
            else:
                consecutive = 0
            if on_progress is not None:
                on_progress(counts)
    finally:
        if producer is not None:
            await producer.stop()
    return counts


@dataclass
class ReplayRun:
    """What one replay request saw and did; ``counts`` is None for a dry run."""

    snapshot: Snapshot
    items: list[PlanItem]
    counts: ReplayCounts | None = None
    refused: bool = False
    """True when ``approve`` turned the plan down: nothing was published."""


async def replay_matching(
    match: Callable[[DeadLetter], bool],
    opts: ReplayOptions,
    *,
    bootstrap: str,
    dlq_topic: str,
    conn: Connection,
    on_snapshot: Callable[[Snapshot], None] | None = None,
    on_progress: Callable[[ReplayCounts], None] | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    metrics: Metrics | None = None,
    by: str | None = None,
    approve: Callable[[Sequence[PlanItem]], bool] | None = None,
    options: Mapping[str, Any] | None = None,
) -> ReplayRun:
    """Snapshot, plan against the audit, and (unless a dry run) replay: the one code path of
    ``jobstream dlq replay`` and the console, so both get the same audit and idempotence.

    The schema is migrated before a real replay only: the tool may run before any worker
    created it, and a dry run must not write. ``approve`` sees the plan of a real replay
    before anything is published (the console checks it is the plan the operator confirmed).
    """
    snap = await read_snapshot(
        bootstrap, dlq_topic, match, also_require=(opts.target_topic,), options=options
    )
    if on_snapshot is not None:
        on_snapshot(snap)
    if not snap.matched:
        return ReplayRun(snap, [])
    if not opts.dry_run:
        await migrate(conn)
    already = await dlq_audit.replayed_ids(conn, (d.id for d in snap.matched))
    cancelled = await cancelled_jobs(conn, {d.job_id for d in snap.matched})
    items = plan(snap.matched, already, opts, cancelled)
    if opts.dry_run:
        return ReplayRun(snap, items)
    if approve is not None and not approve(items):
        return ReplayRun(snap, items, refused=True)
    counts = await replay(
        items,
        opts,
        bootstrap=bootstrap,
        conn=conn,
        on_progress=on_progress,
        log=log,
        metrics=metrics,
        by=by,
        options=options,
    )
    return ReplayRun(snap, items, counts)


async def cancelled_jobs(conn: Connection, job_ids: Set[str]) -> set[str]:
    """Which of ``job_ids`` are cancelled now (read-only: a dry run may ask)."""
    if not job_ids or not await conn.fetchval("SELECT to_regclass('jobs') IS NOT NULL"):
        return set()
    rows = await conn.fetch(
        "SELECT job_id FROM jobs WHERE job_id = ANY($1::text[]) AND status = 'cancelled'",
        list(job_ids),
    )
    return {r["job_id"] for r in rows}


async def _producer(bootstrap: str, options: Mapping[str, Any]) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="jobstream-dlq-tool",
        enable_idempotence=True,
        acks="all",
        request_timeout_ms=int(PUBLISH_TIMEOUT_S * 1000),
        max_request_size=4 * 1024 * 1024,
        **options,
    )
    await start_client(producer, bootstrap)
    return producer


async def _restart(
    producer: AIOKafkaProducer,
    bootstrap: str,
    log: Callable[[str], None],
    options: Mapping[str, Any],
) -> AIOKafkaProducer | None:
    """A fresh producer after a failed send.

    An idempotent producer whose send failed for good (a record too large, say) has a gap
    in its sequence numbers: every later send to that partition fails out of order. A new
    producer gets a new producer id and starts its sequences again.
    """
    await producer.stop()
    try:
        return await _producer(bootstrap, options)
    except UnreachableError as exc:
        log(f"giving up: {exc}")
        return None


async def _replay_one(
    item: PlanItem,
    opts: ReplayOptions,
    producer: AIOKafkaProducer,
    conn: Connection,
    by: str,
    log: Callable[[str], None],
) -> Action | None:
    """One dead letter: lock, publish, await the ack, audit, commit. None on failure.

    SKIP_REPLAYED when a concurrent run replayed it between planning and the lock.
    """
    dl, rec = item.dead_letter, item.record
    assert rec is not None
    published: dlq_audit.Published | None = None
    try:
        async with conn.transaction():
            prior = await dlq_audit.claim(conn, dl.id)
            if prior and not opts.force:
                return Action.SKIP_REPLAYED
            if item.reopen:  # asked for (include_cancelled): see ReplayOptions
                await reopen(conn, dl.job_id, topic=opts.target_topic, by=by)
            md = await asyncio.wait_for(
                producer.send_and_wait(
                    opts.target_topic, value=rec.value, key=rec.key, headers=rec.headers
                ),
                timeout=PUBLISH_TIMEOUT_S,
            )
            published = dlq_audit.Published(md.topic, md.partition, md.offset)
            await dlq_audit.record(
                conn,
                dead_letter_id=dl.id,
                job_id=dl.job_id,
                job_type=dl.job_type,
                published=published,
                forced=bool(prior),
                reset_attempts=opts.reset_attempts and rec.as_event,
                by=by,
            )
    except (
        KafkaError,
        TimeoutError,
        OSError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
    ) as exc:
        if published is None:
            log(f"failed {dl.id} (job {dl.job_id}): publish: {first_line(exc)}")
        else:
            log(
                f"failed {dl.id} (job {dl.job_id}): published to {published.partition}:"
                f"{published.offset} but the audit write failed ({first_line(exc)}); "
                "a later replay will publish it again"
            )
        return None
    return Action.REPLAY
