"""Test a team's handlers and policies in memory: no Kafka, no PostgreSQL, no waiting.

``JobTester`` runs a job through the same code a worker runs it with (decode, claim, handler
under its timeout and rate limit, retry events, dead letters, rows, outcomes), on the in-memory
stand-ins of :mod:`jobstream.streams.memory`; a retry's delay passes in virtual time::

    from jobstream.testing import JobTester

    async def test_a_bad_url_is_dead_lettered() -> None:
        async with JobTester(app) as tester:
            run = await tester.run(make_thumb, Thumb(url="nope"))
        assert run.status is JobStatus.DEAD_LETTERED
        assert run.attempts == 1
        assert run.dead_letter is not None and run.dead_letter.error_class == "ValueError"
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

import aiohttp
from pydantic import BaseModel

from jobstream.agents.app import Job, JobApp
from jobstream.agents.fitting import wire
from jobstream.agents.intake import TIER_HEADER
from jobstream.agents.machine import Machine, resolve
from jobstream.agents.states import Outcome
from jobstream.models.deadletter import DeadLetter
from jobstream.models.errors import SubmitError
from jobstream.models.job import JobEvent, JobOutcome, JobStatus
from jobstream.streams.kafka.record import Record
from jobstream.streams.memory import ManualClock, MemoryLimiter, MemoryPublisher, MemoryStore
from jobstream.streams.metrics import Metrics
from jobstream.streams.producer.client import AppTypes, EventSubmitter, make_event
from jobstream.streams.producer.timing import Seconds, Timing
from jobstream.streams.settings import Settings
from jobstream.streams.topics import topic_names

__all__ = ["JobRun", "JobTester", "RetryEvent"]


@dataclass(frozen=True)
class RetryEvent:
    """An attempt that failed and was scheduled again."""

    attempt: int
    """The attempt that failed (1 = the first execution)."""
    error_class: str
    message: str
    delay_s: float
    """How long the job waited (in virtual time) before its next attempt."""


@dataclass(frozen=True)
class JobRun:
    """Everything one job left behind once it ended."""

    job_id: str
    status: JobStatus
    """``succeeded`` or ``dead_lettered``."""
    result: Any
    """The stored result (JSON), ``None`` unless it succeeded."""
    error: str | None
    error_class: str | None
    attempts: int
    """Attempts made, counting the one it ended with."""
    executions: int
    """Handler runs, as the row counts them."""
    retries: list[RetryEvent]
    dead_letter: DeadLetter | None
    outcome: JobOutcome | None
    """The record a worker publishes on the outcome topic."""
    waited_s: float
    """Virtual seconds it waited: for its time (a delayed job) and for its retries."""
    submitted: list[JobEvent] = field(default_factory=list)
    """Follow-up jobs its handler submitted (``ctx.submit``), in order; run one with
    ``tester.deliver(event)``."""

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.SUCCEEDED


@dataclass
class JobTester:
    """Runs jobs of ``app`` in memory, one at a time, each to its end.

    :param app: the team's app; its lifespans run on ``async with`` (see ``resources``).
    :param settings: worker settings (default: ``Settings()``: the ``JOBSTREAM_*`` variables,
        so a policy file applies as in a worker; retry delays pass in virtual time).
    :param resources: what the handlers of ``app`` get as ``ctx.resources`` instead of what its
        lifespan would yield (a fake client, say); the lifespan then does not run.
    """

    app: JobApp[Any]
    settings: Settings = field(default_factory=lambda: Settings(worker_name="jobstream-testing"))
    resources: Any = None
    clock: ManualClock = field(default_factory=lambda: ManualClock(datetime.now(UTC)))
    store: MemoryStore = field(init=False)
    publisher: MemoryPublisher = field(init=False)
    limiter: MemoryLimiter = field(default_factory=MemoryLimiter)
    metrics: Metrics = field(default_factory=Metrics)
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    _machine: Machine | None = None
    _offsets: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.topics = topic_names(self.settings.topic_prefix, self.settings.retry_tiers_s)
        self.registry = self.app.registry(self.settings)
        self.store = MemoryStore(
            self.clock, worker=self.settings.worker_name, lease_s=self.settings.claim_lease_s
        )
        self.publisher = MemoryPublisher()

    async def __aenter__(self) -> Self:
        resources: dict[str, Any] = {}
        for name, lifespan in self.app.lifespans():
            if name == self.app.name and self.resources is not None:
                continue
            resources[name] = await self._stack.enter_async_context(lifespan(self.settings))
        if self.resources is not None:
            resources[self.app.name] = self.resources
        http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        self._stack.push_async_callback(http.close)
        self._machine = Machine(
            settings=self.settings,
            topics=self.topics,
            registry=self.registry,
            store=self.store,
            publisher=self.publisher,
            limiter=self.limiter,
            metrics=self.metrics,
            http=http,
            resources=resources,
            clock=self.clock.now,
            submitter=EventSubmitter(
                self.publisher,
                self.topics.main,
                AppTypes(self.app),
                self.settings.max_event_bytes,
            ),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._machine is not None:
            await self._machine.close()
        self._machine = None
        await self._stack.aclose()

    async def run(
        self,
        job: Job[Any] | str,
        payload: BaseModel | Mapping[str, Any] | None = None,
        *,
        job_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        delay: Seconds | None = None,
        run_at: datetime | None = None,
        ttl: Seconds | None = None,
        expires_at: datetime | None = None,
    ) -> JobRun:
        """Submit one job as a producer would (checked like ``JobClient.submit``; an invalid one
        raises :class:`~jobstream.models.errors.SubmitError`) and run it, with its retries, to
        its end.

        :param job: a job type declared with ``@app.job``, or a type's name.
        :param payload: the payload: the type's model (or a dict it accepts).
        :param job_id: the job's id (default: a new uuid).
        :param metadata: string pairs carried along with the job.
        :param delay: as for ``JobClient.submit`` (``run_at``, ``ttl``, ``expires_at`` too): a
            delayed job waits in virtual time, counted in ``waited_s``.
        """
        try:
            timing = Timing.of(
                delay=delay, run_at=run_at, ttl=ttl, expires_at=expires_at, now=self.clock.now()
            )
        except ValueError as exc:
            raise SubmitError(str(exc)) from None
        event = make_event(
            AppTypes(self.app),
            job,
            payload,
            job_id=job_id,
            metadata=metadata,
            max_event_bytes=self.settings.max_event_bytes,
            timing=timing,
        )
        return await self.deliver(event)

    async def deliver(
        self, event: JobEvent, headers: list[tuple[str, bytes]] | None = None
    ) -> JobRun:
        """Run an event as it is (unchecked, as a worker receives it) to its end."""
        if self._machine is None:
            raise RuntimeError("use the tester as `async with JobTester(app) as tester:`")
        retries: list[RetryEvent] = []
        waited = 0.0
        seen = first = len(self.publisher.sent)
        rec = self._record(event, headers or [])
        while True:
            await self.handle(rec)
            row = self.store.rows.get(event.id)
            if row is not None and row.status is JobStatus.SCHEDULED and row.run_at and row.event:
                # the dispatcher: once due, the kept event goes to the main topic
                wait = max(0.0, (row.run_at - self.clock.now()).total_seconds())
                self.clock.advance(wait)
                waited += wait
                due = JobEvent.model_validate(row.event).model_copy(update={"not_before": None})
                rec = self._record(due, [])
                continue
            retry = self._retry_of(event.id, seen)
            seen = len(self.publisher.sent)
            if retry is None:
                break
            failed = retry.history[-1]
            delay = _seconds(retry.not_before, failed.at)
            retries.append(RetryEvent(failed.attempt, failed.error_class, failed.message, delay))
            waited += delay
            self.clock.advance(delay)  # the machine's clock: the retry is due now
            # the retry tier's forwarder: due now, back on the main topic
            due = retry.model_copy(update={"not_before": None})
            rec = self._record(due, [(TIER_HEADER, b"virtual")])
        submitted = [
            JobEvent.model_validate_json(sent.value or b"")
            for sent in self.publisher.sent[first:]
            if sent.topic == self.topics.main
        ]
        return self._ended(event.id, retries, waited, submitted)

    async def handle(self, rec: Record) -> Outcome:
        """One record through the worker's machine, as its main-topic agent hands it over;
        returns how it ended."""
        assert self._machine is not None
        ended: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._machine.submit(rec, functools.partial(resolve, ended))
        return await ended

    def _record(self, event: JobEvent, headers: list[tuple[str, bytes]]) -> Record:
        return Record(
            topic=self.topics.main,
            partition=0,
            offset=next(self._offsets),
            key=event.key(),
            value=wire(event),
            headers=headers,
        )

    def _retry_of(self, job_id: str, since: int) -> JobEvent | None:
        tiers = {t.topic for t in self.topics.tiers}
        for sent in self.publisher.sent[since:]:
            if sent.topic in tiers:
                event = JobEvent.model_validate_json(sent.value or b"")
                if event.id == job_id:
                    return event
        return None

    def _ended(
        self, job_id: str, retries: list[RetryEvent], waited: float, submitted: list[JobEvent]
    ) -> JobRun:
        row = self.store.row(job_id)
        letters = [
            DeadLetter.model_validate_json(s.value or b"")
            for s in self.publisher.on(self.topics.dlq)
        ]
        outcomes = [
            JobOutcome.model_validate_json(s.value or b"")
            for s in self.publisher.on(self.topics.outcomes)
        ]
        return JobRun(
            job_id=job_id,
            status=row.status,
            result=row.result,
            error=row.error,
            error_class=row.error_class,
            attempts=row.attempt,
            executions=row.executions,
            retries=retries,
            dead_letter=next((d for d in reversed(letters) if d.job_id == job_id), None),
            outcome=next((o for o in reversed(outcomes) if o.job_id == job_id), None),
            waited_s=waited,
            submitted=submitted,
        )


def _seconds(later: datetime | None, earlier: datetime) -> float:
    return max(0.0, (later - earlier).total_seconds()) if later is not None else 0.0
