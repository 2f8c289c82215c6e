"""The unit tests' world: the lifecycle's ``Machine`` on the in-memory stand-ins of
:mod:`jobstream.streams.memory` (re-exported here under the names the tests use)."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field

import aiohttp
from pydantic import BaseModel, ConfigDict

from jobstream.agents.durable import DurableSteps
from jobstream.agents.machine import Machine, resolve
from jobstream.agents.policy import RetryPolicy
from jobstream.agents.registry import Handler, JobType, Registry
from jobstream.agents.states import Outcome
from jobstream.models.deadletter import DeadLetter
from jobstream.models.job import JobEvent, JobOutcome
from jobstream.streams.kafka.publisher import Headers
from jobstream.streams.kafka.record import Record
from jobstream.streams.memory import ManualClock as FakeClock
from jobstream.streams.memory import MemoryLimiter as FakeLimiter
from jobstream.streams.memory import MemoryPublisher as FakePublisher
from jobstream.streams.memory import MemoryRow as FakeRow
from jobstream.streams.memory import MemoryStore as FakeStore
from jobstream.streams.memory import Sent
from jobstream.streams.metrics import Metrics
from jobstream.streams.settings import Settings
from jobstream.streams.topics import TopicNames, topic_names

__all__ = ["FakeClock", "FakeLimiter", "FakePublisher", "FakeRow", "FakeStore", "Sent", "World"]


class AnyPayload(BaseModel):
    model_config = ConfigDict(extra="allow")


@dataclass
class World:
    """The machine on fakes, and what it wrote, published and asked for."""

    http: aiohttp.ClientSession
    settings: Settings = field(
        default_factory=lambda: Settings(
            topic_prefix="jobs",
            worker_name="test-worker",
            retry_tiers_s=(10.0, 60.0),
            batch_max_delay_ms=1,
        )
    )
    registry: Registry = field(default_factory=Registry)
    clock: FakeClock = field(default_factory=FakeClock)
    journal: list[str] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    limiter: FakeLimiter = field(default_factory=FakeLimiter)
    steps: DurableSteps | None = None
    store: FakeStore = field(init=False)
    publisher: FakePublisher = field(init=False)
    machine: Machine = field(init=False)
    _offset: int = 0

    def __post_init__(self) -> None:
        self.store = FakeStore(
            self.clock,
            worker=self.settings.worker_name,
            lease_s=self.settings.claim_lease_s,
            journal=self.journal,
        )
        self.publisher = FakePublisher(journal=self.journal)
        self.machine = self._machine()

    def _machine(self) -> Machine:
        return Machine(
            settings=self.settings,
            topics=self.topics,
            registry=self.registry,
            store=self.store,
            publisher=self.publisher,
            limiter=self.limiter,
            metrics=self.metrics,
            http=self.http,
            steps=self.steps,
            clock=self.clock.now,
        )

    async def handle(self, rec: Record) -> Outcome:
        """One record through the machine, as the main topic's agent hands it over; returns
        once it ended, with how."""
        ended: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.machine.submit(rec, functools.partial(resolve, ended))
        return await ended

    def new_replica(self) -> Machine:
        """Another replica on the same rows, topics and clock (one whose process died is
        replaced by one)."""
        self.machine = self._machine()
        return self.machine

    @property
    def topics(self) -> TopicNames:
        return topic_names(self.settings.topic_prefix, self.settings.retry_tiers_s)

    def job_type(
        self,
        name: str,
        handler: Handler,
        *,
        payload: type[BaseModel] = AnyPayload,
        max_attempts: int = 3,
        fatal_errors: frozenset[str] = frozenset(),
        retry_unexpected: bool = True,
        rate_limit_key: str | None = None,
        timeout_s: float | None = None,
    ) -> JobType:
        policy = RetryPolicy(
            max_attempts=max_attempts,
            fatal_errors=fatal_errors,
            retry_unexpected=retry_unexpected,
            jitter=0.0,
        )
        return self.registry.register(
            JobType(
                name=name,
                payload_model=payload,
                handler=handler,
                policy=policy,
                rate_limit_key=rate_limit_key,
                timeout_s=timeout_s,
            )
        )

    def record(
        self,
        value: JobEvent | bytes | None,
        *,
        topic: str | None = None,
        offset: int | None = None,
        headers: Headers = (),
        partition: int = 0,
    ) -> Record:
        """A consumed record of ``value``; each gets the next offset unless one is given."""
        if offset is None:
            offset = self._offset
            self._offset += 1
        raw = value.to_bytes() if isinstance(value, JobEvent) else value
        key = value.key() if isinstance(value, JobEvent) else None
        return Record(
            topic=topic or self.topics.main,
            partition=partition,
            offset=offset,
            key=key,
            value=raw,
            headers=list(headers),
        )

    # -- what came out -----------------------------------------------------------------------

    def outcomes(self) -> list[JobOutcome]:
        return [JobOutcome.model_validate_json(s.value or b"") for s in self.outcome_records()]

    def outcome_records(self) -> list[Sent]:
        return self.publisher.on(self.topics.outcomes)

    def letters(self) -> list[DeadLetter]:
        return [
            DeadLetter.model_validate_json(s.value or b"")
            for s in self.publisher.on(self.topics.dlq)
        ]

    def completed(self, type_label: str, outcome: str) -> float:
        value: float = self.metrics.jobs_completed.labels(
            type=type_label, outcome=outcome
        )._value.get()
        return value
