"""``executions`` counts every handler run, whatever kills the process that ran it.

The chaos test's "fewer executions than attempts": a replica fails a job's attempt k, publishes
the retry event for attempt k+1 and is SIGKILLed before it writes the row. Attempt k's record is
redelivered, attempt k+1's event arrives too; once the dead replica's lease lapses, whichever
claims first runs. When k+1 wins, attempt k never runs again, so a count kept by row writes
never sees the run that died.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from jobstream.agents.registry import JobContext
from jobstream.models.errors import FatalError, RetryableError
from jobstream.models.job import JobEvent, JobStatus
from jobstream.streams.kafka.record import Record
from tests.fakes import World


async def die_after(world: World, rec: Record, topic: str) -> None:
    """The replica handling ``rec`` dies (SIGKILL) once it published to ``topic`` and before
    its row write; a new replica takes its place once the dead one's lease lapsed."""
    original = world.store.write_many

    async def never(*args: Any, **kwargs: Any) -> Any:
        await asyncio.Future()

    world.store.write_many = never  # type: ignore[method-assign]
    killed = asyncio.create_task(world.handle(rec))
    await world.publisher.calls.wait(topic, 1)
    await world.machine.close()  # everything it had in flight is gone
    killed.cancel()
    world.store.write_many = original  # type: ignore[method-assign]
    world.store.held.clear()  # nothing renews its claims any more
    world.new_replica()
    world.clock.advance(world.settings.claim_lease_s + 1)


async def test_a_run_killed_after_its_retry_event_is_still_counted(
    http: aiohttp.ClientSession,
) -> None:
    world = World(http=http)
    runs: list[int] = []

    async def fails_first(payload: Any, ctx: JobContext[Any]) -> str:
        runs.append(ctx.job.attempt)
        if ctx.job.attempt == 1:
            raise RetryableError("first attempt fails")
        return "ok"

    world.job_type("flaky", fails_first)
    first = JobEvent(id="j1", type="flaky", payload={})
    rec = world.record(first)

    # the replica dies between the retry publish and the row write
    retry_topic = world.topics.tiers[0].topic
    await die_after(world, rec, retry_topic)
    [retry] = world.publisher.on(retry_topic)
    second = JobEvent.model_validate_json(retry.value or b"")
    assert await world.handle(world.record(second)) == "succeeded"
    assert await world.handle(rec) == "reemitted"  # the redelivered attempt 1

    row = world.store.row("j1")
    assert (row.status, row.attempt) == (JobStatus.SUCCEEDED, 2)
    assert runs == [1, 2]
    assert row.executions == len(runs)


async def test_a_fatal_run_killed_after_its_dead_letter_runs_again_and_both_are_counted(
    http: aiohttp.ClientSession,
) -> None:
    world = World(http=http)
    runs = 0

    async def fatal(payload: Any, ctx: JobContext[Any]) -> str:
        nonlocal runs
        runs += 1
        raise FatalError("never passes")

    world.job_type("doomed", fatal)
    rec = world.record(JobEvent(id="j1", type="doomed", payload={}))

    await die_after(world, rec, world.topics.dlq)
    assert await world.handle(rec) == "dead_lettered"  # the redelivery takes over

    row = world.store.row("j1")
    assert (row.status, row.executions, runs) == (JobStatus.DEAD_LETTERED, 2, 2)
    # both letters are of the same record, so they carry one letter id
    assert len({letter.id for letter in world.letters()}) == 1
