"""The runtime's gate and drain, in memory: a Runtime that never started (no Kafka, no
PostgreSQL) runs its records through the lifecycle's machine on fakes."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from jobstream.agents.registry import JobContext
from jobstream.agents.retry import RetryForwarder
from jobstream.models.job import JobEvent, JobStatus
from jobstream.streams.settings import Settings
from jobstream.streams.worker.runtime import Runtime
from tests.fakes import World

UNREACHABLE_KAFKA = "127.0.0.1:9"
UNREACHABLE_PG = "postgresql://nobody@127.0.0.1:9/none"


class Blocking:
    """A handler that runs until the test lets it finish."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, payload: Any, ctx: JobContext[Any]) -> str:
        self.started.set()
        await self.release.wait()
        return "done"


@pytest.fixture
def world(http: aiohttp.ClientSession) -> World:
    return World(http=http)


@pytest.fixture
def runtime(world: World) -> Runtime:
    """Constructed, never started: the machine it would build is the world's, on fakes."""
    rt = Runtime(
        world.settings,
        bootstrap=UNREACHABLE_KAFKA,
        dsn=UNREACHABLE_PG,
        metrics=world.metrics,
    )
    rt.registry = world.registry
    rt.machine = world.machine
    return rt


async def take(runtime: Runtime, rec: Any) -> asyncio.Event:
    """What the main topic's agent does with a record; the event is set when it is acked."""
    acked = asyncio.Event()
    runtime.take(rec, acked.set, lambda: None, lambda: None)
    return acked


async def settle() -> None:
    """Let every ready task run until it blocks (no timer involved)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_runtime_is_built_without_touching_any_service() -> None:
    rt = Runtime(Settings(worker_name="w"), bootstrap=UNREACHABLE_KAFKA, dsn=UNREACHABLE_PG)
    assert not rt.ready.is_set()
    assert rt.in_flight == 0
    assert rt.degraded() == {}
    assert "echo" in rt.registry.names()


async def test_the_gate_waits_until_the_runtime_is_ready(runtime: Runtime) -> None:
    gate = asyncio.create_task(runtime.gate())
    await settle()
    assert not gate.done()
    runtime.ready.set()
    await asyncio.wait_for(gate, 5)


async def test_the_gate_of_a_ready_runtime_is_open(runtime: Runtime) -> None:
    runtime.ready.set()
    await asyncio.wait_for(runtime.gate(), 5)


async def test_while_draining_the_gate_never_returns_until_cancelled(runtime: Runtime) -> None:
    runtime.ready.set()
    assert await runtime.drain(1.0) is True  # nothing in flight
    gate = asyncio.create_task(runtime.gate())
    done, _ = await asyncio.wait([gate], timeout=0.1)
    assert not done  # the event stays unacked: the partition's next owner processes it
    gate.cancel()  # faust stops the agent
    with pytest.raises(asyncio.CancelledError):
        await gate


async def test_a_gate_waiting_for_ready_stays_shut_when_draining_began(runtime: Runtime) -> None:
    gate = asyncio.create_task(runtime.gate())
    await settle()
    runtime.draining.set()
    runtime.ready.set()
    await settle()
    assert not gate.done()
    gate.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gate


async def test_drain_returns_true_when_in_flight_jobs_finish_within_grace(
    world: World, runtime: Runtime
) -> None:
    handler = Blocking()
    world.job_type("ok", handler)
    rec = world.record(JobEvent(id="j1", type="ok"))
    runtime.ready.set()
    acked = await take(runtime, rec)
    await handler.started.wait()
    assert runtime.in_flight == 1
    assert runtime.in_flight_records == {(rec.topic, rec.partition): {rec.offset: None}}

    drain = asyncio.create_task(runtime.drain(30.0))
    await settle()
    assert runtime.draining.is_set()
    assert not drain.done()  # waits for the job in flight
    handler.release.set()

    assert await asyncio.wait_for(drain, 5) is True
    assert acked.is_set()
    assert world.store.row("j1").status is JobStatus.SUCCEEDED
    assert runtime.in_flight == 0
    assert runtime.in_flight_records == {(rec.topic, rec.partition): {}}


async def test_drain_returns_false_when_jobs_outlast_the_grace(
    world: World, runtime: Runtime
) -> None:
    handler = Blocking()
    world.job_type("ok", handler)
    runtime.ready.set()
    acked = await take(runtime, world.record(JobEvent(id="j1", type="ok")))
    await handler.started.wait()

    assert await runtime.drain(0.05) is False
    assert runtime.in_flight == 1
    # the job still ends (faust cancels it or it finishes); either way nothing is left behind
    handler.release.set()
    await asyncio.wait_for(acked.wait(), 5)
    assert world.store.row("j1").status is JobStatus.SUCCEEDED
    assert runtime.in_flight == 0


async def test_drain_with_nothing_in_flight_returns_true_at_once(runtime: Runtime) -> None:
    assert await asyncio.wait_for(runtime.drain(30.0), 5) is True


async def test_records_from_a_retry_tier_are_tracked_too(world: World, runtime: Runtime) -> None:
    tier = world.topics.tiers[0]
    rec = world.record(JobEvent(id="j1", type="ok", attempt=2), topic=tier.topic)
    runtime.forwarder = RetryForwarder(world.machine, world.publisher)
    assert await runtime.forward(rec, tier) == "republished"
    assert runtime.in_flight == 0
    assert len(world.publisher.on(world.topics.main)) == 1


class Partition:
    """One partition's pause/resume as faust's conductor hands them to the runtime."""

    def __init__(self) -> None:
        self.paused = False
        self.resumes = 0

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.resumes += 1


async def test_at_the_in_flight_limit_the_partition_pauses_and_resumes_at_half(
    http: aiohttp.ClientSession,
) -> None:
    settings = Settings(topic_prefix="jobs", worker_name="w", max_in_flight=4, concurrency=4)
    world = World(http=http, settings=settings)
    handler = Blocking()
    world.job_type("ok", handler)
    rt = Runtime(world.settings, bootstrap=UNREACHABLE_KAFKA, dsn=UNREACHABLE_PG)
    rt.registry, rt.machine = world.registry, world.machine
    rt.ready.set()
    part = Partition()
    acks = []
    for i in range(4):
        assert not part.paused
        acked = asyncio.Event()
        acks.append(acked)
        rt.take(world.record(JobEvent(id=f"j{i}", type="ok")), acked.set, part.pause, part.resume)
    assert part.paused
    assert rt.in_flight == 4
    handler.release.set()
    for acked in acks:
        await asyncio.wait_for(acked.wait(), 5)
    assert not part.paused
    assert part.resumes == 1


async def test_a_draining_runtime_takes_nothing_and_pauses_the_partition(
    world: World, runtime: Runtime
) -> None:
    runtime.ready.set()
    await runtime.drain(1.0)
    part = Partition()
    acked = asyncio.Event()
    runtime.take(world.record(JobEvent(id="j1", type="echo")), acked.set, part.pause, part.resume)
    await settle()
    assert part.paused
    assert not acked.is_set()
    assert runtime.in_flight == 0
    assert "j1" not in world.store.rows


async def test_records_taken_before_ready_wait_for_it_with_their_partition_paused(
    world: World, runtime: Runtime
) -> None:
    handler = Blocking()
    handler.release.set()
    world.job_type("ok", handler)
    part = Partition()
    acked = asyncio.Event()
    runtime.take(world.record(JobEvent(id="j1", type="ok")), acked.set, part.pause, part.resume)
    assert part.paused
    assert runtime.in_flight == 0
    runtime.open_intake()  # what start() ends with
    assert not part.paused
    await asyncio.wait_for(acked.wait(), 5)
    assert world.store.row("j1").status is JobStatus.SUCCEEDED
