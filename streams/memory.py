"""In-memory stand-ins for PostgreSQL's job rows and Kafka's topics: what ``jobstream.testing``
runs a team's handlers on, and what jobstream's own unit tests run the pipeline on.

``MemoryStore`` keeps job rows with the claim and fencing rules of
:mod:`jobstream.streams.pg.results` (``_CLAIM``, ``_UPSERT``, ``_RENEW``; a contract test runs
both), its leases on a ``ManualClock`` that only moves when told; ``MemoryPublisher`` records every
record with per-topic limits; ``MemoryLimiter`` records what it was asked. Each can be told to
fail: a queue of errors per operation (``fail``), an outage (``down``) or a refusal by content
(``refuse``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from jobstream.models.job import JobStatus
from jobstream.models.rows import ClaimRequest, ClaimResult, JobRow, ScheduledRow, StoredState
from jobstream.streams.failures import RecordTooLargeError
from jobstream.streams.kafka.publisher import Headers, Publisher


class ManualClock:
    """The store's ``now()``: it only moves when the test says so."""

    def __init__(self, start: datetime | None = None) -> None:
        self.at = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


class Calls:
    """Counts calls per operation and lets a test wait for the n-th one (no polling)."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self._waiters: list[tuple[str, int, asyncio.Future[None]]] = []

    def tick(self, op: str) -> None:
        self.count[op] += 1
        for waiter in list(self._waiters):
            name, n, future = waiter
            if name == op and self.count[op] >= n and not future.done():
                future.set_result(None)
                self._waiters.remove(waiter)

    async def wait(self, op: str, n: int, timeout_s: float = 5.0) -> None:
        if self.count[op] >= n:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((op, n, future))
        await asyncio.wait_for(future, timeout_s)


class Faults:
    """Errors to raise: the next ones queued per operation, or every time while it is down."""

    def __init__(self) -> None:
        self.queued: dict[str, list[BaseException]] = {}
        self.down: dict[str, BaseException] = {}

    def fail(self, op: str, *errors: BaseException) -> None:
        self.queued.setdefault(op, []).extend(errors)

    def check(self, op: str) -> None:
        if op in self.down:
            raise self.down[op]
        queued = self.queued.get(op)
        if queued:
            raise queued.pop(0)


@dataclass
class MemoryRow:
    """A row of the ``jobs`` table, every column the claims and writes read or set."""

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
    executions: int = 0
    claim_token: str | None = None
    lease_until: datetime | None = None
    takeovers: int = 0
    run_at: datetime | None = None
    expires_at: datetime | None = None
    event: dict[str, Any] | None = None
    dispatched_at: datetime | None = None
    started_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    progress: float | None = None
    progress_detail: str | None = None
    topic: str | None = None

    def state(self) -> StoredState:
        return StoredState(
            job_id=self.job_id,
            status=self.status,
            attempt=self.attempt,
            result=self.result,
            error=self.error,
            error_class=self.error_class,
            worker=self.worker,
            finished_at=self.finished_at,
            claim_token=self.claim_token,
            lease_until=self.lease_until,
            source=self.source,
            run_at=self.run_at,
        )


def _text(value: str | None) -> str | None:
    return value.replace("\x00", "\ufffd") if value else value


class MemoryStore:
    """``ResultStore`` in memory: one claim or write at a time, same rules as the SQL.

    ``refuse(row)`` returns the error PostgreSQL would raise for that row's content (or None).
    """

    def __init__(
        self,
        clock: ManualClock | None = None,
        *,
        worker: str = "test-worker",
        lease_s: float = 30.0,
        journal: list[str] | None = None,
        rows: dict[str, MemoryRow] | None = None,
    ) -> None:
        """``rows``: the table, shared by stores that stand for replicas of one group."""
        self.clock = clock or ManualClock()
        self.worker = worker
        self.lease_s = lease_s
        self.rows: dict[str, MemoryRow] = rows if rows is not None else {}
        self.held: dict[str, str] = {}
        self.faults = Faults()
        self.refuse: Callable[[JobRow], BaseException | None] | None = None
        self.calls = Calls()
        self.journal = journal if journal is not None else []

    def fail(self, op: str, *errors: BaseException) -> None:
        """The next calls of ``op`` ("claim" or "write") raise these, in order."""
        self.faults.fail(op, *errors)

    def row(self, job_id: str) -> MemoryRow:
        return dataclasses.replace(self.rows[job_id])

    # -- the JobStore protocol ---------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> ClaimResult:
        self.calls.tick("claim")
        self.faults.check("claim")
        result = self._claim(request)
        self.journal.append(f"claim {request.job_id} {'won' if result.won else 'not won'}")
        if result.won:
            self.held[request.job_id] = request.token
        return result

    async def write(self, row: JobRow) -> StoredState:
        self.calls.tick("write")
        self.faults.check("write")
        refused = self.refuse(row) if self.refuse is not None else None
        if refused is not None:
            raise refused
        stored = self._upsert(row)
        self.journal.append(f"write {row.job_id} {row.status.value}")
        return stored

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[ClaimResult]:
        """One call (one fault check) for the batch, like the one statement it stands for."""
        self.calls.tick("claim")
        self.faults.check("claim")
        out: list[ClaimResult] = []
        for request in requests:
            result = self._claim(request)
            self.journal.append(f"claim {request.job_id} {'won' if result.won else 'not won'}")
            if result.won:
                self.held[request.job_id] = request.token
            out.append(result)
        return out

    async def park_many(self, rows: Sequence[ScheduledRow]) -> list[StoredState | None]:
        """``_PARK``: a scheduled row for each job id that has none."""
        self.calls.tick("park")
        self.faults.check("park")
        out: list[StoredState | None] = []
        for new in rows:
            found = self.rows.get(new.job_id)
            if found is not None:
                out.append(found.state())
                continue
            self.rows[new.job_id] = MemoryRow(
                job_id=new.job_id,
                type=_text(new.type),
                status=JobStatus.SCHEDULED,
                attempt=new.attempt,
                created_at=new.created_at,
                run_at=new.run_at,
                expires_at=new.expires_at,
                event=new.event,
                worker=self.worker,
                source=new.source,
                topic=new.topic,
            )
            self.journal.append(f"park {new.job_id}")
            out.append(None)
        return out

    async def cancel_requested(self, held: Mapping[str, str]) -> list[str]:
        self.calls.tick("cancel_requested")
        return [
            job_id
            for job_id, token in held.items()
            if (row := self.rows.get(job_id)) is not None
            and row.claim_token == token
            and row.status is JobStatus.RUNNING
            and row.cancel_requested_at is not None
        ]

    async def progress_many(self, updates: Sequence[tuple[str, str, float, str | None]]) -> None:
        self.calls.tick("progress")
        for job_id, token, fraction, detail in updates:
            row = self.rows.get(job_id)
            if row is not None and row.claim_token == token and row.status is JobStatus.RUNNING:
                row.progress, row.progress_detail = fraction, detail

    async def write_many(self, rows: Sequence[JobRow]) -> list[StoredState | Exception]:
        self.calls.tick("write")
        self.faults.check("write")
        out: list[StoredState | Exception] = []
        for row in rows:
            refused = self.refuse(row) if self.refuse is not None else None
            if isinstance(refused, Exception):
                out.append(refused)
                continue
            out.append(self._upsert(row))
            self.journal.append(f"write {row.job_id} {row.status.value}")
        return out

    def release(self, job_id: str, token: str) -> None:
        if self.held.get(job_id) == token:
            del self.held[job_id]

    async def renew(self) -> None:
        """``_RENEW``: extend every held lease still ours; the others are no longer held."""
        for job_id, token in list(self.held.items()):
            row = self.rows.get(job_id)
            if row is not None and row.claim_token == token and row.status is JobStatus.RUNNING:
                row.lease_until = self._lease()
            else:
                del self.held[job_id]

    # -- the statements ----------------------------------------------------------------------

    def _lease(self) -> datetime:
        return self.clock.now() + timedelta(seconds=self.lease_s)

    def _claim(self, req: ClaimRequest) -> ClaimResult:
        """``_CLAIM`` for one request."""
        row = self.rows.get(req.job_id)
        if row is None:
            self.rows[req.job_id] = MemoryRow(
                job_id=req.job_id,
                type=_text(req.type),
                status=JobStatus.RUNNING,
                attempt=req.attempt,
                worker=self.worker,
                claim_token=req.token,
                lease_until=self._lease(),
                created_at=req.created_at,
                executions=int(req.run),
                started_at=self.clock.now(),
                topic=req.topic,
            )
            return ClaimResult(won=True, takeovers=0, existing=None)
        before = row.state()
        now = self.clock.now()
        expired = row.lease_until is not None and row.lease_until < now
        due = row.run_at is not None and row.run_at <= now
        takeable = (
            (row.status is JobStatus.RETRYING and req.attempt > row.attempt)
            or (row.status is JobStatus.RUNNING and expired and req.attempt >= row.attempt)
            or (row.status is JobStatus.SCHEDULED and due and req.attempt >= row.attempt)
            or (row.status is JobStatus.DEAD_LETTERED and req.replay)
        )
        if not takeable:
            return ClaimResult(won=False, takeovers=0, existing=before)
        if row.status is JobStatus.RUNNING:
            row.takeovers += 1
        elif row.status is JobStatus.DEAD_LETTERED:
            row.takeovers = 0
        cancel = row.cancel_requested_at is not None
        if req.run and not cancel and (req.max_takeovers == 0 or row.takeovers < req.max_takeovers):
            row.executions += 1
        row.started_at, row.event = now, None
        row.progress = row.progress_detail = None
        row.status = JobStatus.RUNNING
        row.attempt = req.attempt
        row.worker = self.worker
        row.claim_token = req.token
        row.lease_until = self._lease()
        row.type = row.type if row.type is not None else _text(req.type)
        row.topic = row.topic if row.topic is not None else req.topic
        row.created_at = row.created_at if row.created_at is not None else req.created_at
        return ClaimResult(
            won=True, takeovers=row.takeovers, existing=before, cancel_requested=cancel
        )

    def _upsert(self, new: JobRow) -> StoredState:
        """``_UPSERT`` for one row: a write changes the state only under its claim."""
        fields = {
            "status": new.status,
            "attempt": new.attempt,
            "result": new.result,
            "error": _text(new.error),
            "error_class": _text(new.error_class),
            "source": _text(new.source),
            "replay_of": _text(new.replay_of),
            "worker": _text(new.worker),
            "finished_at": new.finished_at,
        }
        row = self.rows.get(new.job_id)
        if row is None:
            row = MemoryRow(
                job_id=new.job_id,
                type=_text(new.type),
                created_at=new.created_at,
                claim_token=new.claim_token,
                **fields,
            )
            self.rows[new.job_id] = row
            return row.state()
        writable = row.status is JobStatus.RUNNING and row.claim_token == new.claim_token
        if writable:
            for name, value in fields.items():
                setattr(row, name, value)
            row.lease_until = None
        row.type = row.type if row.type is not None else _text(new.type)
        row.created_at = row.created_at if row.created_at is not None else new.created_at
        return row.state()


@dataclass(frozen=True)
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    """When the send was durable (wall clock, as the retry forwarder's holds use)."""

    def json(self) -> Any:
        return json.loads(self.value or b"null")

    def header(self, name: str) -> str | None:
        return next((v.decode() for k, v in self.headers if k == name), None)


class MemoryPublisher:
    """Records every durable send; a record above its topic's limit is refused like the real
    publisher refuses it. ``refuse`` holds topics whose broker refuses every record as too
    large (a limit lowered after start)."""

    def __init__(
        self,
        limits: Mapping[str, int] | None = None,
        *,
        default_limit: int = Publisher.DEFAULT_LIMIT,
        journal: list[str] | None = None,
    ) -> None:
        self.limits = dict(limits or {})
        self.default_limit = default_limit
        self.sent: list[Sent] = []
        self.refuse: set[str] = set()
        self.faults = Faults()
        self.calls = Calls()
        self.journal = journal if journal is not None else []

    def fail(self, topic: str, *errors: BaseException) -> None:
        """The next sends to ``topic`` raise these, in order."""
        self.faults.fail(topic, *errors)

    def on(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]

    # -- the RecordPublisher protocol --------------------------------------------------------

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> object:
        self.calls.tick(topic)
        self.faults.check(topic)
        size = self.record_size(value, key, headers)
        if topic in self.refuse or size > self.limit(topic):
            raise RecordTooLargeError(f"the broker refused the record on {topic} as too large")
        self.sent.append(Sent(topic, key, value, tuple(headers or ())))
        self.journal.append(f"publish {topic}")
        return None

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[Any]:
        """Queued and durable at once: the future is already resolved (or failed)."""
        sent: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            sent.set_result(await self.send_and_wait(topic, value, key=key, headers=headers))
        except RecordTooLargeError:
            raise
        except Exception as exc:  # noqa: BLE001 - delivered through the future, like aiokafka
            sent.set_exception(exc)
        return sent

    def limit(self, topic: str) -> int:
        return self.limits.get(topic, self.default_limit)

    def record_size(self, value: bytes | None, key: bytes | None, headers: Headers | None) -> int:
        return Publisher.record_size(value, key, headers)


class MemoryLimiter:
    def __init__(self) -> None:
        self.acquired: list[str | None] = []
        self.paused: list[tuple[str, float]] = []
        self.charged: list[tuple[str, float]] = []

    async def acquire(self, key: str | None) -> None:
        self.acquired.append(key)

    async def pause(self, key: str, seconds: float) -> None:
        self.paused.append((key, seconds))

    async def charge_tokens(self, key: str, tokens: float) -> None:
        self.charged.append((key, tokens))
