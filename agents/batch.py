"""The main topic's batch path: records taken in batches, their handlers run side by side.

Why it exists: one record at a time through claim → handler → row write → outcome → ack costs
several round trips of waiting and a handful of futures per job, so with a bounded number of
records in flight the waiting, not the CPU, capped a replica (Little's law). Here decoded
records wait for one of the replica's handler slots; the jobs that got a slot are claimed
together in one statement (sent at once when no claim is under way, else with the next one),
and each won job's handler then runs in its own task, so a slow job never holds back the fast
ones of its batch. Finished jobs are collected again: their rows are written in one statement,
their outcomes sent without awaiting each and awaited together, and only then are their records
acknowledged, together.

A job is claimed only once it has a slot, so the claim is the start of its run: it counts the
run in ``executions`` in the same statement, a row says ``running`` only for a job that runs,
and a drain has no claims to give back (the records waiting for a slot are left unacked).

The guarantees are the per-record path's: a record is acknowledged (and so committed) only once
its row and outcome are durable, a job runs only under its claim, and a write is fenced by the
claim's token. Anything off the common path (undecodable input, a claim that is not won, a
handler failure, a row PostgreSQL refuses, an outcome Kafka refuses) goes to the per-record
routes of :class:`~jobstream.agents.pipeline.Pipeline`, which stay the one place those cases
are decided.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from jobstream.agents.pipeline import Attempt, Pipeline, Ran, RowRefusedError
from jobstream.agents.registry import JobType
from jobstream.models.deadletter import DeadLetterReason
from jobstream.models.errors import InvalidJobError
from jobstream.models.job import JobEvent, JobStatus
from jobstream.models.job import utcnow as now
from jobstream.models.rows import StoredState
from jobstream.streams.failures import RecordTooLargeError, describe
from jobstream.streams.kafka.record import Record

log = logging.getLogger(__name__)

T = TypeVar("T")
Done = Callable[[str], None]
"""Called once per record with its outcome label, when the record may be acknowledged."""


class Collector(Generic[T]):
    """Items gathered until ``max_size`` of them wait or ``max_delay_s`` after the first one,
    then handed to ``flush`` in a task of their own. With ``max_delay_s`` 0 the items are
    flushed at the next turn of the event loop when no flush is under way, else with the items
    that arrive until it ends.

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
        self._timer: asyncio.Handle | None = None
        self._flushing = 0

    def add(self, item: T) -> None:
        self._items.append(item)
        if len(self._items) >= self.max_size:
            self.flush_now()
        elif self._timer is not None:
            return
        elif self.max_delay_s <= 0:
            if not self._flushing:  # the items added in this turn of the loop go together
                self._timer = asyncio.get_running_loop().call_soon(self.flush_now)
        else:
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
            self._flushing += 1
            self._spawn(self._flush_batch(items))

    async def _flush_batch(self, items: list[T]) -> None:
        try:
            await self._flush(items)
        finally:
            self._flushing -= 1
            if self.max_delay_s <= 0 and not self._flushing and self._items:
                self.flush_now()


NOT_RUN = Ran(None, 0.0)


@dataclass(slots=True)
class _Job:
    att: Attempt
    job: JobEvent
    job_type: JobType
    payload: Any
    """Validated against the type's model (see ``Pipeline.payload``)."""
    done: Done
    ran: Ran = NOT_RUN
    """What its handler returned, once it has."""
    slot: bool = False
    """It holds one of the handler slots: from its claim until its handler returned."""
    started: bool = False
    """Its handler task owns it (until it hands the job to the finishing stage)."""
    ended: bool = False


ABANDONED = "abandoned"
"""The label of a record dropped at a drain before its job started: it must not be acked."""


class BatchPath:
    """Decoded jobs wait for a handler slot in a queue (no task, no future each); the jobs
    that got one are claimed in batches, so at most ``concurrency`` jobs are claimed and not
    yet done running. A drain leaves the jobs still waiting unclaimed and their records
    unacked: the next owner of their partitions runs them at once."""

    def __init__(self, pipeline: Pipeline, *, max_size: int, max_delay_s: float) -> None:
        self.pipeline = pipeline
        self.concurrency = pipeline.settings.concurrency
        self._free = self.concurrency
        self._ready: deque[_Job] = deque()
        self._draining = False
        self._tasks: set[asyncio.Task[None]] = set()
        # claims go out as soon as jobs have slots: a delay here would hold the slots idle
        self._claims: Collector[_Job] = Collector(
            lambda jobs: self._stage(jobs, self._start(jobs)),
            max_size=max_size,
            max_delay_s=0,
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
        """Decoded jobs waiting for a handler slot (not claimed yet)."""
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
        payload = p.payload(job, job_type)
        if job_type is None or isinstance(payload, InvalidJobError):
            self._general(rec, done)  # dead-lettered there
            return
        p.metrics.for_type(job_type.name).received.inc()
        p.metrics.in_flight.inc()
        self._ready.append(_Job(att, job, job_type, payload, done))
        self._pump()

    async def drain(self) -> int:
        """Start no more jobs: records of jobs waiting for a slot or for their claim batch end
        unacked (their next owner runs them). Claims under way and running jobs go on.
        Returns how many records were left."""
        self._draining = True
        left = self._claims.take_all() + list(self._ready)
        self._ready.clear()
        for j in left:
            self._end(j, ABANDONED)
        return len(left)

    async def close(self) -> None:
        """Stop: what is still running is cancelled, its records stay unacknowledged (the
        partition's next owner runs them; their claims lapse and are taken over)."""
        if not self._draining:
            await self.drain()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _pump(self) -> None:
        """Give free slots to waiting jobs; each is claimed with the next claim batch."""
        while self._free and self._ready and not self._draining:
            self._free -= 1
            j = self._ready.popleft()
            j.slot = True
            self._claims.add(j)

    def _release_slot(self, j: _Job) -> None:
        if j.slot:
            j.slot = False
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
        self._release_slot(j)
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
        requests = [p.claim_request(j.att, j.job_type, j.payload) for j in jobs]
        try:
            claims = await p.durably("claim", lambda: p.store.claim_many(requests))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - not transient: let each record find its own route
            log.warning("batch claim failed, claiming one by one: %s", describe(exc))
            for j in jobs:
                self._off_path(j)
            return
        for j, claim in zip(jobs, claims, strict=True):
            if claim.won:
                # the claim counted the run: it runs, even when a drain began meanwhile
                p.hold(j.att, claim, j.job_type.name)
                self._hand_off(j, self._run(j))
            elif self._draining:
                self._end(j, ABANDONED)
            else:
                # done, running elsewhere, or a redelivery: the per-record path decides
                self._off_path(j)

    def _off_path(self, j: _Job) -> None:
        self._release_slot(j)
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
        try:
            with p.scope(j.att, j.job):
                ran = await p.attempt(j.att, j.job, j.job_type, j.payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug of the pipeline's own: the record still ends
            label = await p.internal_error(j.att, exc)
            p.release(j.att)
            self._end(j, label)
            return
        self._release_slot(j)
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
