"""Exact accounting under every interleaving hypothesis finds: a stateful property test of the
job lifecycle against the in-memory store.

Replicas (each a ``Machine`` with its own claims, on one shared table, one set of topics and one
clock) take records of the main topic in any order, any number of times (redeliveries), while
replicas are killed (everything in flight cancelled, their claims left to lapse), drained
(nothing new starts, running jobs finish) and replaced, leases expire, and retry events come
back. After every step:

- ``executions`` of each row equals the handler runs the handlers themselves counted;
- no job ever ran twice at once;
- a terminal row is never changed.

At the end every job is driven to its end and has the status and attempt its behaviour says.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from pydantic import BaseModel

from jobstream.agents.machine import Machine
from jobstream.agents.policy import RetryPolicy
from jobstream.agents.registry import JobContext, JobType, Registry
from jobstream.agents.states import Outcome
from jobstream.models.errors import FatalError, RetryableError
from jobstream.models.job import JobEvent, JobStatus
from jobstream.streams.kafka.record import Record
from jobstream.streams.memory import (
    ManualClock,
    MemoryLimiter,
    MemoryPublisher,
    MemoryRow,
    MemoryStore,
)
from jobstream.streams.metrics import Metrics
from jobstream.streams.settings import Settings
from jobstream.streams.topics import topic_names

LEASE_S = 30.0
MAX_ATTEMPTS = 3
SETTINGS = Settings(
    topic_prefix="jobs",
    worker_name="prop",
    retry_tiers_s=(10.0,),
    concurrency=3,
    batch_max_delay_ms=0,
    claim_lease_s=LEASE_S,
)
TOPICS = topic_names(SETTINGS.topic_prefix, SETTINGS.retry_tiers_s)


class Plan(BaseModel):
    fail_attempts: int = 0
    """Raise a retryable error until this attempt has passed."""
    fatal: bool = False
    slow: bool = False
    """Block until the test lets it go."""


@dataclass
class Handlers:
    """The job type's handler, counting its runs and catching a job running twice at once."""

    runs: Counter[str] = field(default_factory=Counter)
    running: set[str] = field(default_factory=set)
    overlaps: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, payload: Plan, ctx: JobContext[Any]) -> dict[str, int]:
        job_id = ctx.job_id
        self.runs[job_id] += 1
        if job_id in self.running:
            self.overlaps.append(job_id)
        self.running.add(job_id)
        try:
            if payload.slow:
                await self.gate.wait()
            if payload.fatal:
                raise FatalError("fatal by plan")
            if ctx.attempt <= payload.fail_attempts:
                raise RetryableError("retryable by plan")
            return {"attempt": ctx.attempt}
        finally:
            self.running.discard(job_id)


@dataclass
class Replica:
    machine: Machine
    store: MemoryStore
    acked: set[int] = field(default_factory=set)


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.rows: dict[str, MemoryRow] = {}
        self.publisher = MemoryPublisher()
        self.handlers = Handlers()
        self.registry = Registry()
        self.registry.register(
            JobType(
                name="plan",
                payload_model=Plan,
                handler=self.handlers,
                policy=RetryPolicy(max_attempts=MAX_ATTEMPTS, jitter=0.0),
            )
        )
        self.http = self.loop.run_until_complete(self._session())
        self.replicas: list[Replica] = []
        self.records: list[Record] = []  # the main topic
        self.plans: dict[str, Plan] = {}
        self.forwarded = 0
        self.terminal: dict[str, tuple[JobStatus, int]] = {}
        self.names = 0

    async def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def teardown(self) -> None:
        try:
            self.check_the_end()
        finally:
            self.close()

    def close(self) -> None:
        async def close() -> None:
            for r in self.replicas:
                await r.machine.close()
            await self.http.close()

        self.loop.run_until_complete(close())
        self.loop.close()

    # -- the world ---------------------------------------------------------------------------

    def _replica(self) -> Replica:
        self.names += 1
        store = MemoryStore(self.clock, worker=f"r{self.names}", lease_s=LEASE_S, rows=self.rows)
        machine = Machine(
            settings=SETTINGS,
            topics=TOPICS,
            registry=self.registry,
            store=store,
            publisher=self.publisher,
            limiter=MemoryLimiter(),
            metrics=Metrics(),
            http=self.http,
            clock=self.clock.now,
        )
        return Replica(machine, store)

    def settle(self) -> None:
        """Let every task run until nothing moves (a slow handler stays blocked)."""

        async def spin() -> None:
            for _ in range(200):
                await asyncio.sleep(0)

        self.loop.run_until_complete(spin())

    def publish(self, event: JobEvent) -> None:
        self.records.append(
            Record(
                topic=TOPICS.main,
                partition=0,
                offset=len(self.records),
                key=event.key(),
                value=event.to_bytes(),
                headers=[],
            )
        )

    # -- rules -------------------------------------------------------------------------------

    @initialize(n=st.integers(min_value=1, max_value=3))
    def start(self, n: int) -> None:
        async def make() -> None:
            self.replicas = [self._replica() for _ in range(n)]

        self.loop.run_until_complete(make())

    @rule(
        fail_attempts=st.integers(min_value=0, max_value=MAX_ATTEMPTS),
        fatal=st.booleans(),
        slow=st.booleans(),
    )
    def submit(self, fail_attempts: int, fatal: bool, slow: bool) -> None:
        plan = Plan(fail_attempts=fail_attempts, fatal=fatal, slow=slow)
        event = JobEvent(type="plan", payload=plan.model_dump())
        self.plans[event.id] = plan
        self.publish(event)

    @precondition(lambda self: bool(self.records))
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        """A replica takes a record: the first delivery or any redelivery."""
        replica = data.draw(st.sampled_from(self.replicas))
        offset = data.draw(st.integers(min_value=0, max_value=len(self.records) - 1))

        def done(outcome: Outcome) -> None:
            if outcome.acked:
                replica.acked.add(offset)

        self.loop.call_soon(replica.machine.submit, self.records[offset], done)
        self.settle()

    @rule()
    def let_slow_jobs_finish(self) -> None:
        self.handlers.gate.set()
        self.settle()
        self.handlers.gate = asyncio.Event()

    @rule()
    def retries_come_back(self) -> None:
        """The retry tier's forwarder: every retry event published so far, due now."""
        tiers = {t.topic for t in TOPICS.tiers}
        sent = [s for s in self.publisher.sent if s.topic in tiers]
        for s in sent[self.forwarded :]:
            due = JobEvent.model_validate_json(s.value or b"").model_copy(
                update={"not_before": None}
            )
            self.publish(due)
        self.forwarded = len(sent)

    @rule()
    def leases_lapse(self) -> None:
        """Time passes, more than a lease: live replicas renew their claims three times a
        lease (as the worker does), so only a dead one's lapse."""

        async def renew() -> None:
            for r in self.replicas:
                await r.store.renew()

        for _ in range(4):
            self.loop.run_until_complete(renew())
            self.clock.advance(LEASE_S / 3)
        self.settle()

    @precondition(lambda self: bool(self.replicas))
    @rule(data=st.data())
    def kill(self, data: st.DataObject) -> None:
        """SIGKILL: everything in flight is gone, uncommitted; a new replica takes its place."""
        index = data.draw(st.integers(min_value=0, max_value=len(self.replicas) - 1))
        dead = self.replicas[index]
        self.loop.run_until_complete(dead.machine.close())
        self.replicas[index] = self._replica()
        self.settle()

    @precondition(lambda self: bool(self.replicas))
    @rule(data=st.data())
    def drain(self, data: st.DataObject) -> None:
        """SIGTERM: nothing new starts; running jobs finish within the grace (here: are let
        go), then the replica stops and a new one takes its place."""
        index = data.draw(st.integers(min_value=0, max_value=len(self.replicas) - 1))
        leaving = self.replicas[index]
        self.loop.run_until_complete(leaving.machine.drain())
        self.let_slow_jobs_finish()
        self.loop.run_until_complete(leaving.machine.close())
        self.replicas[index] = self._replica()
        self.settle()

    @precondition(lambda self: bool(self.replicas))
    @rule(data=st.data())
    def rebalance(self, data: st.DataObject) -> None:
        """A rebalance takes the partition from a replica: its records not started are left
        (unacked) to the next owner; what runs there goes on."""
        replica = data.draw(st.sampled_from(self.replicas))
        replica.machine.revoke({(TOPICS.main, 0)})
        self.settle()

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def executions_count_every_run_exactly(self) -> None:
        for job_id, row in self.rows.items():
            assert row.executions == self.handlers.runs[job_id], (job_id, row)

    @invariant()
    def no_job_runs_twice_at_once(self) -> None:
        assert not self.handlers.overlaps

    @invariant()
    def a_terminal_row_never_changes(self) -> None:
        for job_id, row in self.rows.items():
            if row.status.terminal:
                seen = self.terminal.setdefault(job_id, (row.status, row.attempt))
                assert seen == (row.status, row.attempt), (job_id, seen, row)

    def check_the_end(self) -> None:
        """Drive every job to its end; each ends as its plan says, counted exactly."""
        self.handlers.gate.set()
        for _ in range(4 * MAX_ATTEMPTS):
            self.retries_come_back()
            self.leases_lapse()
            for offset, rec in enumerate(self.records):
                replica = self.replicas[0]
                if offset not in replica.acked:
                    done = functools.partial(_ack, replica.acked, offset)
                    self.loop.call_soon(replica.machine.submit, rec, done)
            self.settle()
        for job_id, plan in self.plans.items():
            row = self.rows[job_id]
            if plan.fatal:
                expected = (JobStatus.DEAD_LETTERED, 1)
            elif plan.fail_attempts >= MAX_ATTEMPTS:
                expected = (JobStatus.DEAD_LETTERED, MAX_ATTEMPTS)
            else:
                expected = (JobStatus.SUCCEEDED, plan.fail_attempts + 1)
            assert (row.status, row.attempt) == expected, (job_id, plan, row)
            assert row.executions == self.handlers.runs[job_id] >= row.attempt


def _ack(acked: set[int], offset: int, outcome: Outcome) -> None:
    if outcome.acked:
        acked.add(offset)


# a watchdog for the whole run of examples, not a speed assertion (about 20 s on 2 cores)
TestLifecycle = pytest.mark.timeout(300)(Lifecycle.TestCase)
TestLifecycle.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
