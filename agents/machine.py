"""The job lifecycle: every record of the main topic through one machine, batch-first.

::

    submit ─ receive ─┬─ Decoded (runnable) ── waits for a handler slot ──┐
                      └─ Decoded (not runnable), Unrunnable ──────────────┤
                                                        claim batch (one statement)
            ┌── won, runnable: Claimed ── handler (its own task) ── settled ──┐
            ├── won, not runnable / stalled: DeadLettered ────────────────────┤
            ├── done / duplicate: Reemitted, Finished ────────────────────────┤
            └── held elsewhere: wait for the holder, then claim again         │
                                                 settle batch (records, rows, outcomes)
                                                                   ack ◄──────┘

A job is claimed once it has a slot, so its claim is the start of its run and counts it; at
most ``concurrency`` jobs are between their claim and the end of their handler. Claims go out
as soon as jobs have slots (the ones that arrive while a claim statement runs go with the next);
settled jobs are collected for ``batch_max_delay_ms`` and made durable together. A record is
acked only once everything its job produced is durable.

Each record has one owner at a time (a queue, a claim batch, a handler task, a wait, a settle
batch); its state's type says which. A bug in a stage ends the records that stage owned on the
dead-letter route (``internal_error``), here and nowhere else.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from jobstream.agents.claims import Blocked, after_claim, after_end_claim, new_token, request
from jobstream.agents.collect import Collector
from jobstream.agents.durable import DurableSteps
from jobstream.agents.execution import Executor
from jobstream.agents.intake import bare_source, classify, read, scheduled
from jobstream.agents.policy import compute_backoff
from jobstream.agents.ports import JobStore, Limiter, RecordPublisher
from jobstream.agents.records import Records
from jobstream.agents.registry import Registry, Submitter
from jobstream.agents.routes import after_run, dead_letter
from jobstream.agents.settle import Settler
from jobstream.agents.states import (
    Claimed,
    DeadLettered,
    Decoded,
    Failed,
    Finished,
    Outcome,
    Ran,
    Read,
    Reemitted,
    Retrying,
    Scheduled,
    Settled,
    Source,
    Stopped,
    Succeeded,
    Unrunnable,
)
from jobstream.models.deadletter import DeadLetterReason
from jobstream.models.job import JobEvent
from jobstream.models.job import utcnow as wall_clock
from jobstream.models.rows import ClaimResult
from jobstream.streams import observability
from jobstream.streams.failures import describe
from jobstream.streams.kafka.record import Record
from jobstream.streams.metrics import Metrics
from jobstream.streams.settings import Settings
from jobstream.streams.topics import TopicNames

log = logging.getLogger(__name__)

CONTROL_INTERVAL_S = 0.5
"""How often a replica writes the progress its running jobs reported and looks for cancel
requests of them: a cancel reaches a running handler within about this (plus a settle)."""
Done = Callable[[Outcome], None]
"""Called once per record with how it ended, when it may be acknowledged (``Outcome.acked``)."""
State = Read | Decoded | Unrunnable | Claimed | Settled
SETTLED = (Succeeded, Retrying, DeadLettered, Reemitted, Scheduled, Stopped, Finished)
_NOT_READ = JobEvent(id="-", type="-")
"""The job of a ticket whose record is being read (a placeholder, never run)."""


@dataclass(slots=True, eq=False)
class Ticket:
    """One record in the machine: its state and where it is acked."""

    rec: Record
    done: Done
    state: State | Outcome
    """An ``Outcome`` once it ended."""
    token: str = ""
    """Its claim's token, once a claim was asked for."""
    slot: bool = False
    """It holds one of the handler slots: from its claim until its handler returned."""
    waits: int = 0


class Machine:
    def __init__(
        self,
        *,
        settings: Settings,
        topics: TopicNames,
        registry: Registry,
        store: JobStore,
        publisher: RecordPublisher,
        limiter: Limiter,
        metrics: Metrics,
        http: aiohttp.ClientSession,
        steps: DurableSteps | None = None,
        resources: Mapping[str, Any] | None = None,
        clock: Callable[[], datetime] = wall_clock,
        submitter: Submitter | None = None,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.registry = registry
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.steps = steps or DurableSteps(
            metrics=metrics,
            attempt_timeout_s=settings.durable_step_timeout_s,
            deadline_s=settings.durable_step_deadline_s,
        )
        self.executor = Executor(
            settings=settings,
            limiter=limiter,
            metrics=metrics,
            http=http,
            steps=self.steps,
            resources=resources or {},
            clock=clock,
            submitter=submitter,
        )
        self.settler = Settler(
            settings=settings,
            records=Records(topics, publisher, worker=settings.worker_name),
            store=store,
            publisher=publisher,
            steps=self.steps,
            metrics=metrics,
            clock=clock,
        )
        self.concurrency = settings.concurrency
        self._free = self.concurrency
        self._ready: deque[Ticket] = deque()
        self._waiting: dict[Ticket, asyncio.Handle | None] = {}
        """Tickets waiting for another execution's claim (a timer, or a local holder)."""
        self._holders: dict[str, str] = {}
        """Job id -> the token of this process's claim on it."""
        self._holder_waits: dict[str, asyncio.Future[None]] = {}
        """Job id -> resolved when this process's claim on it ended: a local copy of the job
        waits on it instead of polling PostgreSQL (made only when a copy waits)."""
        self._live = 0
        """Records taken and not ended (the ``in_flight`` gauge reads it)."""
        metrics.in_flight.set_function(lambda: self._live)
        self._draining = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: dict[Ticket, asyncio.Task[None]] = {}
        """The handler task of each running job."""
        self._cancelling: set[Ticket] = set()
        """Running jobs whose handler is being cancelled on request."""
        self._progress_of: dict[str, tuple[str, float, str | None]] = {}
        """Claim token -> (job id, fraction, detail): progress reported since the last flush."""
        self._watcher: asyncio.Future[None] | None = None
        max_size = settings.batch_max_size
        # claims go out as soon as jobs have slots: a delay here would hold the slots idle
        self._claims: Collector[Ticket] = Collector(
            self._claim_stage, max_size=max_size, max_delay_s=0, spawn=self._spawn
        )
        self._settles: Collector[Ticket] = Collector(
            self._settle_stage,
            max_size=max_size,
            max_delay_s=settings.batch_max_delay_ms / 1000,
            spawn=self._spawn,
        )

    # -- what the runtime sees -----------------------------------------------------------------

    @property
    def running(self) -> int:
        """Jobs holding a handler slot: being claimed or running."""
        return self.concurrency - self._free

    @property
    def waiting(self) -> int:
        """Decoded jobs waiting for a handler slot (not claimed yet)."""
        return len(self._ready)

    def submit(self, rec: Record, done: Done) -> None:
        """Take a record of the main topic; ``done`` is called once, when it ended."""
        self._live += 1
        t = Ticket(rec, done, Read(bare_source(rec), _NOT_READ))
        try:
            got = read(rec, max_event_bytes=self.settings.max_event_bytes)
            t.state = got
            if isinstance(got, Read):
                t.state = classify(got, self.registry)
        except Exception as exc:  # noqa: BLE001 - a bug of the machine's own: the record still ends
            self._internal_error(t, exc)
            return
        self.metrics.for_type(t.state.src.type_label).received.inc()
        self._enter(t)

    async def end(self, state: Unrunnable, rec: Record) -> Outcome:
        """End a record another stage could not pass on (a retry tier's): its dead letter, and
        its row when its claim can be taken. Returns once that is durable."""
        ended: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._live += 1
        self._enter(Ticket(rec, functools.partial(resolve, ended), state))
        return await ended

    async def drain(self) -> int:
        """Start no more jobs: the records still waiting for a slot, a claim or another
        execution end unacked (their next owner runs them). Claims under way, running
        handlers and settling batches go on. Returns how many records were left."""
        self._draining = True
        left = [*self._claims.take_all(), *self._ready, *self._waiting]
        self._ready.clear()
        for handle in self._waiting.values():
            if handle is not None:
                handle.cancel()
        self._waiting.clear()
        for t in left:
            self._end(t, Outcome.ABANDONED)
        return len(left)

    def revoke(self, partitions: Collection[tuple[str, int]]) -> int:
        """The replica lost these partitions: their records not started yet (waiting for a
        slot or for another execution's claim) end unacked, for the new owner, which reads
        them again from the committed offset. Returns how many were left."""
        if not partitions:
            return 0
        gone = set(partitions)

        def lost(t: Ticket) -> bool:
            rec = t.rec
            return (rec.topic, rec.partition) in gone

        left = [t for t in self._ready if lost(t)]
        if left:
            self._ready = deque(t for t in self._ready if not lost(t))
        for t in [t for t in self._waiting if lost(t)]:
            handle = self._waiting.pop(t)
            if handle is not None:
                handle.cancel()
            left.append(t)
        for t in left:
            self._end(t, Outcome.ABANDONED)
        return len(left)

    async def close(self) -> None:
        """Stop: what still runs is cancelled and its records stay unacked (the partition's
        next owner runs them; their claims lapse and are taken over)."""
        if not self._draining:
            await self.drain()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- moving between owners ---------------------------------------------------------------

    def _enter(self, t: Ticket) -> None:
        state = t.state
        if isinstance(state, Decoded):
            not_before = state.job.not_before
            if not_before is not None and not_before > self.clock():
                self._settle(t, scheduled(state))  # a delayed job: a row until it is due
                return
            if state.runnable:
                self._ready.append(t)
                self._pump()
                return
        self._claims.add(t)  # ends without a run: no slot

    def _pump(self) -> None:
        """Give free slots to waiting jobs; each is claimed with the next claim batch (after
        its rate limit's token, when its type has one)."""
        while self._free and self._ready and not self._draining:
            t = self._ready.popleft()
            self._free -= 1
            t.slot = True
            state = t.state
            assert isinstance(state, Decoded)
            if state.job_type is not None and state.job_type.rate_limit_key is not None:
                self._spawn(self._guard("rate limit", [t], self._acquire(t, state)))
            else:
                self._claims.add(t)

    async def _acquire(self, t: Ticket, state: Decoded) -> None:
        assert state.job_type is not None
        await self.executor.acquire(state.job_type)
        if self._draining:
            self._end(t, Outcome.ABANDONED)
        else:
            self._claims.add(t)

    def _release_slot(self, t: Ticket) -> None:
        if t.slot:
            t.slot = False
            self._free += 1
            self._pump()

    def _settle(self, t: Ticket, state: Settled) -> None:
        t.state = state
        if isinstance(state, Finished):
            self._end(t, state.outcome)  # nothing to make durable
        else:
            self._settles.add(t)

    def _end(self, t: Ticket, outcome: Outcome) -> None:
        """The record's end: its slot and claim are let go, and it is acked unless abandoned."""
        if isinstance(t.state, Outcome):
            return
        src = t.state.src
        t.state = outcome
        self._release_slot(t)
        if t.token:
            self.store.release(src.job_id, t.token)
            self._let_go(src.job_id, t.token)
        self._live -= 1
        if outcome not in (Outcome.ABANDONED, Outcome.UNROUTABLE):
            self.metrics.for_type(src.type_label).completed(outcome).inc()
        t.done(outcome)

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, stage: str, tickets: Sequence[Ticket], work: Awaitable[None]) -> None:
        """Run a stage; a bug in it ends each record it still owned on the dead-letter route.
        It owned a record as long as the record's state is the one the stage started with."""
        started = [t.state for t in tickets]
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - routed per record below
            # the class only: the message may quote a payload (each record's line below is
            # written inside its job's scope, which scrubs it)
            log.error("%s stage failed: %s", stage, type(exc).__name__)
            for t, state in zip(tickets, started, strict=True):
                if t.state is state:
                    self._internal_error(t, exc)

    # -- claims --------------------------------------------------------------------------------

    def _claim_stage(self, batch: list[Ticket]) -> Awaitable[None]:
        return self._guard("claim", batch, self._claim(batch))

    async def _claim(self, batch: list[Ticket]) -> None:
        states: list[Decoded | Unrunnable] = []
        for t in batch:
            assert isinstance(t.state, Decoded | Unrunnable)
            t.token = new_token()
            states.append(t.state)
        now = self.clock()
        main = self.topics.main
        requests = [request(s, t.token, now, main) for s, t in zip(states, batch, strict=True)]
        store = self.store
        try:
            claims = await self.steps.run("claim", lambda: store.claim_many(requests))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if len(requests) == 1:
                raise
            log.warning("batch claim failed (%s), claiming one by one", type(exc).__name__)
            claims = []
            for r in requests:
                claims.extend(
                    await self.steps.run("claim", functools.partial(store.claim_many, [r]))
                )
        now = self.clock()
        for t, state, claim in zip(batch, states, claims, strict=True):
            self._after_claim(t, state, claim, now)

    def _after_claim(
        self, t: Ticket, state: Decoded | Unrunnable, claim: ClaimResult, now: datetime
    ) -> None:
        if isinstance(state, Unrunnable):
            self._settle(t, after_end_claim(state, t.token, claim, now))
            return
        nxt = after_claim(state, t.token, claim, now)
        if claim.won:
            self._hold(t, state, claim)
        if isinstance(nxt, Claimed):
            t.state = nxt
            task = asyncio.ensure_future(self._guard("handler", [t], self._run(t, nxt)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self._handlers[t] = task
            task.add_done_callback(lambda _: self._handlers.pop(t, None))
            self._watch()
            return
        if nxt is Blocked.AGAIN:
            self._claims.add(t)
        elif nxt is Blocked.HELD:
            self._wait_for_holder(t, state)
        else:
            self._release_slot(t)
            self._settle(t, nxt)

    def _hold(self, t: Ticket, state: Decoded, claim: ClaimResult) -> None:
        """The claim was won: this execution owns the job (a local copy waits for it)."""
        job_id = state.src.job_id
        held = self._holders.get(job_id)
        if held is not None:  # our own earlier claim lapsed and was taken over: let it go
            self._let_go(job_id, held)
        self._holders[job_id] = t.token
        if claim.takeover:
            self.metrics.claim_takeovers.labels(type=state.src.type_label).inc()
            log.warning("job %s: took over an expired claim (takeover %d)", job_id, claim.takeovers)

    def _let_go(self, job_id: str, token: str) -> None:
        if self._holders.get(job_id) == token:
            del self._holders[job_id]
            waits = self._holder_waits.pop(job_id, None)
            if waits is not None:
                waits.set_result(None)

    def _wait_for_holder(self, t: Ticket, state: Decoded) -> None:
        """Another execution holds the claim: no slot while waiting; claim again after it."""
        self._release_slot(t)
        t.state = state
        t.token = ""
        if self._draining:
            self._end(t, Outcome.ABANDONED)
            return
        t.waits += 1
        if t.waits == 1:
            self.metrics.claim_waits.labels(type=state.src.type_label).inc()
        job_id = state.src.job_id
        if job_id in self._holders:  # this process runs it: wait for that, no polling
            waits = self._holder_waits.get(job_id)
            if waits is None:
                waits = self._holder_waits[job_id] = asyncio.get_running_loop().create_future()
            self._waiting[t] = None
            waits.add_done_callback(lambda _: self._retry_claim(t))
            return
        # another replica holds it: look again, backing off to a fraction of the lease
        cap = max(0.2, min(2.0, self.settings.claim_lease_s / 4))
        delay = compute_backoff(t.waits, base_s=0.05, max_s=cap, jitter=0.2)
        self._waiting[t] = asyncio.get_running_loop().call_later(delay, self._retry_claim, t)

    def _retry_claim(self, t: Ticket) -> None:
        if self._waiting.pop(t, False) is False:
            return  # ended meanwhile (a drain)
        state = t.state
        assert isinstance(state, Decoded)
        if state.runnable:
            self._ready.appendleft(t)
            self._pump()
        else:
            self._claims.add(t)

    # -- the handler, one task per job -------------------------------------------------------

    async def _run(self, t: Ticket, claimed: Claimed) -> None:
        src = claimed.src
        started = time.perf_counter()
        try:
            ran = await self._execute(claimed)
        except asyncio.CancelledError:
            if t not in self._cancelling:
                raise  # a shutdown: the record stays unacked
            self._cancelling.discard(t)
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            elapsed = time.perf_counter() - started
            self._release_slot(t)
            self._settle(t, Stopped(src, t.token, Outcome.CANCELLED, ran=True, elapsed=elapsed))
            return
        finally:
            self._progress_of.pop(t.token, None)
        self._release_slot(t)
        self._settle(t, after_run(claimed, ran, self.topics))

    async def _execute(self, claimed: Claimed) -> Ran | Failed:
        with self._scope(claimed.src):
            return await self.executor.run(claimed, self._reporter(claimed))

    def _scope(self, src: Source) -> AbstractContextManager[None]:
        """What is reported while one job's record is handled carries its tags and is scrubbed
        of its payload."""
        rec = src.rec
        return observability.job_scope(
            job_id=src.job_id,
            job_type=src.job_type,
            attempt=src.attempt,
            tier=src.tier,
            worker=self.settings.worker_name,
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            payload=src.payload,
        )

    # -- control: cancel requests and progress, for the jobs running here --------------------

    def _reporter(self, claimed: Claimed) -> Callable[[float, str | None], None]:
        token = claimed.token

        def report(fraction: float, detail: str | None) -> None:
            self._progress_of[token] = (claimed.src.job_id, fraction, detail)

        return report

    def _watch(self) -> None:
        """The control loop runs while handlers do."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._control())
            self._tasks.add(self._watcher)
            self._watcher.add_done_callback(self._tasks.discard)

    async def _control(self) -> None:
        """Every ``CONTROL_INTERVAL_S`` while jobs run here: the progress they reported since
        (coalesced: the last value of each, in one statement), and which of them were asked
        to be cancelled (one query): those handlers are cancelled."""
        while self._handlers:
            await asyncio.sleep(CONTROL_INTERVAL_S)
            try:
                await self._control_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("cancel/progress check failed: %s", describe(exc))

    async def _control_once(self) -> None:
        reported, self._progress_of = self._progress_of, {}
        if reported:
            updates = [(job_id, token, f, d) for token, (job_id, f, d) in reported.items()]
            await self.store.progress_many(updates)
        running = {t.state.src.job_id: t for t in self._handlers if isinstance(t.state, Claimed)}
        held = {job_id: t.token for job_id, t in running.items()}
        for job_id in await self.store.cancel_requested(held):
            t = running[job_id]
            task = self._handlers.get(t)
            if task is not None and t not in self._cancelling:
                log.info("job %s: cancelled on request while it ran", job_id)
                self._cancelling.add(t)
                task.cancel()

    # -- settle --------------------------------------------------------------------------------

    def _settle_stage(self, batch: list[Ticket]) -> Awaitable[None]:
        return self._guard("settle", batch, self._settle_batch(batch))

    async def _settle_batch(self, batch: list[Ticket]) -> None:
        states: list[Settled] = []
        for t in batch:
            assert isinstance(t.state, SETTLED)
            states.append(t.state)
        outcomes = await self.settler.settle(states)
        for t, outcome in zip(batch, outcomes, strict=True):
            self._end(t, outcome)

    # -- the one place for a bug in the machinery ----------------------------------------------

    def _internal_error(self, t: Ticket, exc: Exception) -> None:
        """The record ends on the dead-letter route (``internal_error``), under the job's
        claim when it holds one; if even that fails, it is logged, counted and acked."""
        state = t.state
        if isinstance(state, Outcome):
            return
        src = state.src
        with self._scope(src):
            log.error(
                "internal error on %s (job %s): %s", src.rec.coordinates, src.job_id, describe(exc)
            )
            if _is_internal_error(state):  # the dead-letter route itself failed
                self.metrics.unroutable.inc()
                log.error(
                    "record %s could not be routed at all: %s", src.rec.coordinates, describe(exc)
                )
                self._end(t, Outcome.UNROUTABLE)
                return
        self._release_slot(t)
        if t.token and self._holders.get(src.job_id) == t.token:
            internal = dead_letter(
                src, exc, DeadLetterReason.INTERNAL_ERROR, self.clock(), token=t.token
            )
            self._settle(t, internal)
        else:
            t.token = ""
            t.state = Unrunnable(
                src, exc, DeadLetterReason.INTERNAL_ERROR, redelivered_reemits=False
            )
            self._claims.add(t)


def _is_internal_error(state: State) -> bool:
    if isinstance(state, Unrunnable | DeadLettered):
        return state.reason is DeadLetterReason.INTERNAL_ERROR
    return False


def resolve(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    """A ``Done`` that resolves ``future`` (unless its waiter was cancelled)."""
    if not future.done():
        future.set_result(outcome)
