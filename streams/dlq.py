"""The dead-letter tool's logic: filter, read a bounded snapshot of the DLQ, replay it.

The tool never joins the workers' consumer group: it reads the dead-letter topic with a
group-less consumer (manual assignment, no commits), so inspecting or replaying cannot
trigger a rebalance or move the workers' offsets. What it reads is bounded by the end
offsets seen at start, so it terminates while new dead letters keep arriving.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from pydantic import ValidationError

from models.deadletter import REPLAY_HEADER, DeadLetter, DeadLetterReason, unb64
from models.errors import JobstreamError, StackError
from models.job import JobEvent
from streams import dlq_audit
from streams.db import migrate
from streams.metrics import Metrics

CONNECT_TIMEOUT_S = 15.0
IDLE_TIMEOUT_S = 30.0
PUBLISH_TIMEOUT_S = 30.0
MAX_CONSECUTIVE_FAILURES = 3


class DlqError(JobstreamError):
    """Raised when the DLQ tool cannot do what was asked; the CLI maps it to an exit code."""


class FilterError(DlqError, ValueError):
    """Raised when a filter value is malformed (exit code 2)."""


class TopicMissingError(DlqError):
    """Raised when a topic the tool needs does not exist: usually a wrong prefix (exit 2)."""


class UnreachableError(StackError):
    """Raised when Kafka or PostgreSQL cannot be reached; names the address (exit 3)."""


# --- filters -----------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RELATIVE = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_RELATIVE_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_time(text: str, *, now: datetime) -> datetime:
    """An ISO-8601 time (naive means UTC) or an age before ``now`` like ``2h``, ``1d12h``."""
    t = text.strip().lower()
    if _RELATIVE.fullmatch(t):
        seconds = sum(float(n) * _UNITS[u] for n, u in _RELATIVE_PART.findall(t))
        return now - timedelta(seconds=seconds)
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise FilterError(
            f"{text!r} is neither an ISO-8601 time (2024-05-01T12:00:00Z) "
            "nor a relative age (45s, 30m, 2h, 7d, 1w, 1h30m)"
        ) from None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _split(values: Iterable[str] | None, flag: str) -> frozenset[str]:
    """Repeated flags and comma lists mean the same: ``--type a,b`` is ``--type a --type b``."""
    out: set[str] = set()
    for value in values or ():
        parts = [p.strip() for p in value.split(",")]
        if any(not p for p in parts):
            raise FilterError(f"{flag}: empty value in {value!r}")
        out.update(parts)
    return frozenset(out)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def decoded_key(dl: DeadLetter) -> str | None:
    raw = unb64(dl.original_key)
    return None if raw is None else raw.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class DeadLetterFilter:
    """All given criteria must hold; the values within one criterion are alternatives.

    Times compare with ``last_failure_at`` (when the job was dead-lettered): ``since`` is
    inclusive, ``until`` exclusive.
    """

    types: frozenset[str] = frozenset()
    reasons: frozenset[DeadLetterReason] = frozenset()
    error_classes: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    keys: frozenset[str] = frozenset()

    @classmethod
    def parse(
        cls,
        *,
        types: Iterable[str] | None = None,
        reasons: Iterable[str] | None = None,
        error_classes: Iterable[str] | None = None,
        since: str | None = None,
        until: str | None = None,
        keys: Iterable[str] | None = None,
        now: datetime | None = None,
    ) -> DeadLetterFilter:
        now = now or datetime.now(UTC)
        parsed_reasons: set[DeadLetterReason] = set()
        for r in _split(reasons, "--reason"):
            try:
                parsed_reasons.add(DeadLetterReason(r.lower()))
            except ValueError:
                valid = ", ".join(x.value for x in DeadLetterReason)
                raise FilterError(f"--reason: unknown reason {r!r} (one of: {valid})") from None
        lo = parse_time(since, now=now) if since is not None else None
        hi = parse_time(until, now=now) if until is not None else None
        if lo is not None and hi is not None and lo >= hi:
            raise FilterError(
                f"--since ({lo.isoformat()}) must be before --until ({hi.isoformat()})"
            )
        return cls(
            types=_split(types, "--type"),
            reasons=frozenset(parsed_reasons),
            error_classes=_split(error_classes, "--error-class"),
            since=lo,
            until=hi,
            keys=_split(keys, "--key"),
        )

    def matches(self, dl: DeadLetter) -> bool:
        if self.types and dl.job_type not in self.types:
            return False
        if self.reasons and dl.reason not in self.reasons:
            return False
        # an error class matches by its full dotted name or by its bare class name
        if self.error_classes and not (
            dl.error_class in self.error_classes
            or dl.error_class.rsplit(".", 1)[-1] in self.error_classes
        ):
            return False
        at = _aware(dl.last_failure_at)
        if self.since is not None and at < self.since:
            return False
        if self.until is not None and at >= self.until:
            return False
        return not self.keys or bool({dl.id, dl.job_id, decoded_key(dl)} & self.keys)


# --- the bounded snapshot ------------------------------------------------------------------


@dataclass(frozen=True)
class Unreadable:
    """A DLQ record that is not DeadLetter JSON: reported and skipped, never fatal."""

    partition: int
    offset: int
    error: str


@dataclass
class Snapshot:
    topic: str
    end_offsets: dict[int, int]
    matched: list[DeadLetter] = field(default_factory=list)
    scanned: int = 0
    unreadable: list[Unreadable] = field(default_factory=list)


def first_line(exc: BaseException) -> str:
    """``Class: first line of the message``: a diagnosis that fits a terminal line."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()
    if not text:
        return name
    return text[0] if text[0].startswith(name) else f"{name}: {text[0]}"


async def _start(client: AIOKafkaConsumer | AIOKafkaProducer, bootstrap: str) -> None:
    try:
        await asyncio.wait_for(client.start(), timeout=CONNECT_TIMEOUT_S)
    except (KafkaError, OSError, TimeoutError) as exc:
        await client.stop()
        raise UnreachableError(f"Kafka at {bootstrap} is unreachable ({first_line(exc)})") from exc


async def _partitions(
    bootstrap: str, topic: str, also_require: Sequence[str], options: Mapping[str, Any]
) -> list[int]:
    """The partitions of ``topic``, after checking that every needed topic exists.

    Existence comes from the all-topics listing first: asking a broker about one topic by
    name can auto-create it, and a typo in ``--prefix`` must not create topics.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(CONNECT_TIMEOUT_S * 1000), **options
    )
    try:
        await asyncio.wait_for(admin.start(), timeout=CONNECT_TIMEOUT_S)
        existing = set(await admin.list_topics())
        for name in (topic, *also_require):
            if name not in existing:
                raise TopicMissingError(
                    f"topic {name!r} does not exist on {bootstrap} "
                    "(check --prefix / JOBSTREAM_TOPIC_PREFIX)"
                )
        (described,) = await admin.describe_topics([topic])
    except (KafkaError, OSError, TimeoutError) as exc:
        raise UnreachableError(f"Kafka at {bootstrap} is unreachable ({first_line(exc)})") from exc
    finally:
        await admin.close()
    return sorted(p["partition"] for p in described["partitions"])


async def read_snapshot(
    bootstrap: str,
    topic: str,
    match: Callable[[DeadLetter], bool],
    *,
    also_require: Sequence[str] = (),
    on_bounds: Callable[[dict[int, int]], Awaitable[None]] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Snapshot:
    """Every dead letter in ``topic`` up to the end offsets seen at start that ``match`` accepts.

    ``read_committed`` so dead letters from aborted transactions are never shown or replayed.
    ``on_bounds`` runs once the bounds are fixed (tests use it to prove later records are not
    read). Matches come back oldest failure first, which is also the replay order.
    """
    options = options or {}  # aiokafka client arguments for TLS/SASL (kafka_security)
    parts = await _partitions(bootstrap, topic, also_require, options)
    tps = [TopicPartition(topic, p) for p in parts]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        client_id="jobstream-dlq-tool",
        request_timeout_ms=int(CONNECT_TIMEOUT_S * 1000),
        **options,
    )
    await _start(consumer, bootstrap)
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        snap = Snapshot(topic=topic, end_offsets={tp.partition: ends[tp] for tp in tps})
        if on_bounds is not None:
            await on_bounds(dict(snap.end_offsets))
        pending = {tp for tp in tps if ends[tp] > begins[tp]}
        if not pending:
            return snap
        consumer.pause(*(set(tps) - pending))
        await consumer.seek_to_beginning(*pending)
        await _drain(consumer, pending, ends, match, snap)
    except KafkaError as exc:
        raise UnreachableError(f"Kafka at {bootstrap} failed ({first_line(exc)})") from exc
    finally:
        await consumer.stop()
    snap.matched.sort(
        key=lambda d: (
            _aware(d.last_failure_at),
            d.source_topic,
            d.source_partition,
            d.source_offset,
        )
    )
    return snap


async def _drain(
    consumer: AIOKafkaConsumer,
    pending: set[TopicPartition],
    ends: dict[TopicPartition, int],
    match: Callable[[DeadLetter], bool],
    snap: Snapshot,
) -> None:
    """Consume until every partition's position reaches its recorded end offset.

    Done by position, not by the last record's offset: with transactions the last offsets
    are control markers that never come back as records.
    """
    positions: dict[TopicPartition, int] = {}
    last_progress = time.monotonic()
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=500)
        for tp, records in batch.items():
            for rec in records:
                if rec.offset >= ends[tp]:
                    continue
                snap.scanned += 1
                try:
                    if rec.value is None:
                        raise ValueError("empty value (tombstone)")
                    dl = DeadLetter.model_validate_json(rec.value)
                except ValidationError as exc:
                    err = exc.errors()[0]
                    where = ".".join(str(x) for x in err["loc"])
                    why = f"not a DeadLetter: {where + ': ' if where else ''}{err['msg']}"
                    snap.unreadable.append(Unreadable(tp.partition, rec.offset, why))
                    continue
                except ValueError as exc:
                    snap.unreadable.append(Unreadable(tp.partition, rec.offset, first_line(exc)))
                    continue
                if match(dl):
                    snap.matched.append(dl)
        for tp in list(pending):
            pos = await consumer.position(tp)
            if pos != positions.get(tp):
                positions[tp] = pos
                last_progress = time.monotonic()
            if pos >= ends[tp]:
                pending.discard(tp)
                consumer.pause(tp)
        if pending and time.monotonic() - last_progress > IDLE_TIMEOUT_S:
            raise UnreachableError(
                f"no progress reading {snap.topic} for {IDLE_TIMEOUT_S:.0f}s: broker unreachable?"
            )


# --- replay ------------------------------------------------------------------------------


class Action(StrEnum):
    REPLAY = "replay"
    SKIP_REPLAYED = "skip-already-replayed"
    SKIP_INVALID = "skip-invalid"


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


def plan(matched: Sequence[DeadLetter], already: set[str], opts: ReplayOptions) -> list[PlanItem]:
    """Decide each dead letter's fate; ``--limit`` counts only the ones to republish."""
    items: list[PlanItem] = []
    to_replay = 0
    for dl in matched:
        if opts.limit is not None and to_replay >= opts.limit:
            break
        if dl.id in already and not opts.force:
            items.append(PlanItem(dl, Action.SKIP_REPLAYED, None))
            continue
        rec = build_record(
            dl, reset_attempts=opts.reset_attempts, include_invalid=opts.include_invalid
        )
        if rec is None:
            items.append(PlanItem(dl, Action.SKIP_INVALID, None))
            continue
        items.append(PlanItem(dl, Action.REPLAY, rec))
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
    conn: asyncpg.Connection,
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
    conn: asyncpg.Connection,
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
    items = plan(snap.matched, already, opts)
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
    await _start(producer, bootstrap)
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
    conn: asyncpg.Connection,
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
