"""The main topic's batch path: records taken in batches, their handlers run side by side.

Why it exists: one record at a time through claim → handler → row write → outcome → ack costs
several round trips of waiting and a handful of futures per job, so with a bounded number of
records in flight the waiting, not the CPU, capped a replica (Little's law). Here the records
that arrive within a few milliseconds are decoded together and claimed in one statement; each
won job's handler then runs in its own task under the replica's concurrency limit, so a slow job
never holds back the fast ones of its batch. Finished jobs are collected again: their rows are
written in one statement, their outcomes sent without awaiting each and awaited together, and
only then are their records acknowledged, together.

The guarantees are the per-record path's: a record is acknowledged (and so committed) only once
its row and outcome are durable, a job runs only under its claim, and a write is fenced by the
claim's token. Anything off the common path (undecodable input, a claim that is not won, a
handler failure, a row PostgreSQL refuses, an outcome Kafka refuses) goes to the per-record
routes of :class:`~agents.pipeline.Pipeline`, which stay the one place those cases are decided.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from agents.pipeline import Attempt, Pipeline, Ran, RowRefusedError
from agents.registry import JobType
from models.deadletter import DeadLetterReason
from models.errors import InvalidJobError
from models.job import JobEvent, JobStatus
from models.job import utcnow as now
from models.rows import StoredState
from streams.failures import RecordTooLargeError, describe
from streams.kafka.record import Record

log = logging.getLogger(__name__)

T = TypeVar("T")
Done = Callable[[str], None]
"""Called once per record with its outcome label, when the record may be acknowledged."""


class Collector(Generic[T]):
    """Items gathered until ``max_size`` of them wait or ``max_delay_s`` after the first one,
    then handed to ``flush`` in a task of their own.

    Hand-written because what it saves is the point: the group-commit ``Batcher`` gives every
    item a future of its own to await; here one timer and one task serve a whole batch, and the
    items carry their own continuation.
    """

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[None]],
        *,
        max_size: int,
        max_delay_s: float,
        spawn: Callable[[Awaitable[None]], None],
    ) -> None:
        self._flush = flush
        self.max_size = max_size
        self.max_delay_s = max_delay_s
        self._spawn = spawn
        self._items: list[T] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, item: T) -> None:
        self._items.append(item)
        if len(self._items) >= self.max_size:
            self.flush_now()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_delay_s, self.flush_now)

    def take_all(self) -> list[T]:
        """The items waiting, taken out unflushed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._items = self._items, []
        return items

    def flush_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._items = self._items, []
        if items:
            self._spawn(self._flush(items))


NOT_RUN = Ran(None, 0.0)


@dataclass(slots=True)
class _Job:
    att: Attempt
    job: JobEvent
    job_type: JobType
    done: Done
    ran: Ran = NOT_RUN
    """What its handler returned, once it has."""
    started: bool = False
    """Its handler task owns it (until it hands the job to the finishing stage)."""
    ended: bool = False
    prior: StoredState | None = None
    """Its row as it was before this execution's claim (None: there was none), to give the
    claim back at a drain."""


ABANDONED = "abandoned"
"""The label of a record dropped at a drain before its job started: it must not be acked."""


class BatchPath:
    """Claimed jobs wait for a handler slot in a queue (no task, no future each), so claims are
    taken in batches as large as the arrivals allow while at most ``concurrency`` handlers run.
    A drain gives the claims of the jobs that have not started back (one statement), so the
    next owner of their partitions runs them at once instead of waiting their leases out."""

    def __init__(self, pipeline: Pipeline, *, max_size: int, max_delay_s: float) -> None:
        self.pipeline = pipeline
        self.concurrency = pipeline.settings.concurrency
        self._free = self.concurrency
        self._ready: deque[_Job] = deque()
        self._draining = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._claims: Collector[_Job] = Collector(
            lambda jobs: self._stage(jobs, self._start(jobs)),
            max_size=max_size,
            max_delay_s=max_delay_s,
            spawn=self._spawn,
        )
        self._finished: Collector[_Job] = Collector(
            lambda jobs: self._stage(jobs, self._finish(jobs)),
            max_size=max_size,
            max_delay_s=max_delay_s,
            spawn=self._spawn,
        )

    @property
    def running(self) -> int:
        """Jobs holding a handler slot: running, or routing their failure."""
        return self.concurrency - self._free

    @property
    def waiting(self) -> int:
        """Claimed jobs waiting for a handler slot."""
        return len(self._ready)

    def submit(self, rec: Record, done: Done) -> None:
        """Take a record of the main topic; ``done`` is called once it may be acknowledged."""
        p = self.pipeline
        att = Attempt(rec=rec, job_id=f"invalid:{rec.coordinates}")
        try:
            job = p.decode(att)
        except InvalidJobError:
            self._general(rec, done)  # dead-lettered there, under its readable id
            return
        job_type = p.registry.get(job.type)
        if job_type is None:
            self._general(rec, done)
            return
        p.metrics.for_type(job_type.name).received.inc()
        p.metrics.in_flight.inc()
        self._claims.add(_Job(att, job, job_type, done))

    async def drain(self) -> int:
        """Start no more jobs: records not yet claimed end unacked, claims of jobs not started
        are given back, and those records end unacked too (their next owner runs them).
        Running jobs go on. Returns how many records were left."""
        self._draining = True
        left = self._claims.take_all()
        ready, self._ready = list(self._ready), deque()
        await self._give_back(ready)
        for j in left + ready:
            self._end(j, ABANDONED)
        return len(left) + len(ready)

    async def close(self) -> None:
        """Stop: what is still running is cancelled, its records stay unacknowledged (the
        partition's next owner runs them; their claims lapse and are taken over)."""
        if not self._draining:
            await self.drain()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _give_back(self, jobs: Sequence[_Job]) -> None:
        if not jobs:
            return
        p = self.pipeline
        try:
            await p.store.unclaim_many(
                [(j.att.job_id, j.att.token, j.prior) for j in jobs if j.att.claimed]
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the leases lapse instead: a takeover, later
            log.warning("could not give back %d claims at the drain: %s", len(jobs), describe(exc))
        for j in jobs:
            p.release(j.att)

    def _pump(self) -> None:
        while self._free and self._ready:
            self._free -= 1
            self._spawn(self._run(self._ready.popleft()))

    def _release_slot(self) -> None:
        self._free += 1
        self._pump()

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _end(self, j: _Job, label: str) -> None:
        if j.ended:
            return
        j.ended = True
        self.pipeline.metrics.in_flight.dec()
        j.done(label)

    def _general(self, rec: Record, done: Done) -> None:
        """A record off the common path: the per-record pipeline takes it from the start."""

        async def run() -> None:
            done(await self.pipeline.handle(rec))

        self._spawn(run())

    # -- claim a batch -----------------------------------------------------------------------

    async def _start(self, jobs: list[_Job]) -> None:
        p = self.pipeline
        requests = [p.claim_request(j.att) for j in jobs]
        try:
            claims = await p.durably("claim", lambda: p.store.claim_many(requests))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - not transient: let each record find its own route
            log.warning("batch claim failed, claiming one by one: %s", describe(exc))
            for j in jobs:
                self._off_path(j)
            return
        won: list[_Job] = []
        for j, claim in zip(jobs, claims, strict=True):
            if claim.won:
                p.hold(j.att, claim, j.job_type.name)
                j.prior = claim.existing
                won.append(j)
            elif self._draining:
                self._end(j, ABANDONED)
            else:
                # done, running elsewhere, or a redelivery: the per-record path decides
                self._off_path(j)
        if self._draining:  # the drain began while this batch was being claimed
            await self._give_back(won)
            for j in won:
                self._end(j, ABANDONED)
            return
        self._ready.extend(won)
        self._pump()

    def _off_path(self, j: _Job) -> None:
        j.ended = True  # the per-record path ends it
        self.pipeline.metrics.in_flight.dec()  # handle() counts it while it runs
        self._general(j.att.rec, j.done)

    def _hand_off(self, j: _Job, route: Awaitable[None]) -> None:
        """A job of a batch stage goes its own way: the task owns it from now on."""
        j.started = True
        self._spawn(route)

    async def _stage(self, jobs: list[_Job], stage: Awaitable[None]) -> None:
        """A batch stage that fails by a bug of its own still ends each of its records: on
        the dead-letter route (``internal_error``), never left unacked to block a partition."""
        try:
            await stage
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - routed per record below
            log.error("batch stage failed: %s", describe(exc))
            for j in jobs:
                if not j.ended and not j.started:
                    self._spawn(self._internal_error(j, exc))

    async def _internal_error(self, j: _Job, exc: Exception) -> None:
        p = self.pipeline
        try:
            label = await p.internal_error(j.att, exc)
        finally:
            p.release(j.att)
        self._end(j, label)

    # -- the handler, one task per job -------------------------------------------------------

    async def _run(self, j: _Job) -> None:
        p = self.pipeline
        j.started = True
        try:
            with p.scope(j.att, j.job):
                ran = await p.attempt(j.att, j.job, j.job_type)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug of the pipeline's own: the record still ends
            label = await p.internal_error(j.att, exc)
            p.release(j.att)
            self._release_slot()
            self._end(j, label)
            return
        self._release_slot()
        if isinstance(ran, str):  # routed: retried or dead-lettered
            p.release(j.att)
            self._end(j, ran)
            return
        j.ran = ran
        j.started = False  # from here on the finishing stage owns it
        self._finished.add(j)

    # -- finish: rows, outcomes, acks of a batch ---------------------------------------------

    async def _finish(self, jobs: list[_Job]) -> None:
        p = self.pipeline
        at = now()  # one clock read for the batch: its jobs finished within max_delay_s
        rows = [p.success_row(j.att, j.ran.result, at) for j in jobs]
        try:
            stored = await p.durably("write", lambda: p.store.write_many(rows))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - not transient: each row takes its own route
            log.warning("batch write failed, writing one by one: %s", describe(exc))
            for j in jobs:
                self._hand_off(j, self._succeed_alone(j))
            return
        sending: list[tuple[_Job, StoredState, bool]] = []
        for j, row, state in zip(jobs, rows, stored, strict=True):
            if isinstance(state, Exception):
                self._hand_off(j, self._refused(j, state))
            elif state.status is JobStatus.RUNNING:
                label = p.claim_lost(j.att, j.job_type.name)
                p.release(j.att)
                self._end(j, label)
            else:
                sending.append((j, state, state.finished_at != row.finished_at))
        if not sending:
            return
        try:
            await p.durably("outcome", lambda: self._publish(sending))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - not transient: each outcome on its own route
            log.warning("batch outcome publish failed, one by one: %s", describe(exc))
            for j, state, reemitted in sending:
                self._hand_off(j, self._emit_alone(j, state, reemitted))
            return
        durable_at = now()
        for j, _state, reemitted in sending:
            label = p.count_success(j.job, j.job_type, reemitted, durable_at)
            p.release(j.att)
            self._end(j, label)

    async def _publish(self, sending: list[tuple[_Job, StoredState, bool]]) -> None:
        """Queue every outcome, then wait for them together. A retry (DurableSteps) sends
        them all again: an outcome is at-least-once, a consumer dedupes by job id."""
        p = self.pipeline
        pending: list[asyncio.Future[Any]] = []
        for j, state, reemitted in sending:
            key, value = p.outcome_record(j.att, state, reemitted, duration_ms=j.ran.elapsed * 1000)
            try:
                pending.append(await p.publisher.send(p.topics.outcomes, value, key=key))
            except RecordTooLargeError:
                p.outcome_refused(j.att)
        if pending:
            results = await asyncio.gather(*pending, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    async def _succeed_alone(self, j: _Job) -> None:
        p = self.pipeline
        label = await self._guarded(
            j, lambda: p.succeed(j.att, j.job, j.job_type, j.ran.result, j.ran.elapsed)
        )
        self._end(j, label)

    async def _refused(self, j: _Job, exc: Exception) -> None:
        p = self.pipeline
        refused = RowRefusedError(f"PostgreSQL refused the row: {describe(exc)}")
        label = await self._guarded(
            j, lambda: p.dead_letter(j.att, refused, DeadLetterReason.UNSTORABLE)
        )
        self._end(j, label)

    async def _emit_alone(self, j: _Job, state: StoredState, reemitted: bool) -> None:
        p = self.pipeline
        elapsed = j.ran.elapsed

        async def emit() -> str:
            await p.durably(
                "outcome",
                lambda: p.emit_outcome(j.att, state, reemitted, duration_ms=elapsed * 1000),
            )
            return p.count_success(j.job, j.job_type, reemitted, now())

        label = await self._guarded(j, emit)
        self._end(j, label)

    async def _guarded(self, j: _Job, step: Callable[[], Awaitable[str]]) -> str:
        """A per-record route for a job of this path; a bug in it still ends the record."""
        p = self.pipeline
        try:
            with p.scope(j.att, j.job):
                return await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the record still ends, on the dead-letter route
            return await p.internal_error(j.att, exc)
        finally:
            p.release(j.att)
