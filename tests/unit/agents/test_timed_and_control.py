"""Delayed jobs, expiry, cancellation and progress in the lifecycle's machine, on fakes."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from jobstream.agents.machine import CONTROL_INTERVAL_S
from jobstream.agents.registry import JobContext
from jobstream.models.errors import RetryableError
from jobstream.models.job import JobEvent, JobStatus
from jobstream.models.rows import ClaimRequest
from jobstream.streams.polling import wait_until
from jobstream.streams.settings import Settings
from tests.fakes import World


@pytest.fixture
def world(http: aiohttp.ClientSession) -> World:
    return World(http=http)


class Runs:
    def __init__(self) -> None:
        self.ids: list[str] = []

    async def __call__(self, payload: Any, ctx: JobContext[Any]) -> str:
        self.ids.append(ctx.job_id)
        return "done"


async def test_a_delayed_job_is_kept_as_a_scheduled_row_and_runs_once_when_due(
    world: World,
) -> None:
    runs = Runs()
    world.job_type("ok", runs)
    run_at = world.clock.now() + timedelta(minutes=10)
    delayed = JobEvent(id="d1", type="ok", payload={"x": 1}, not_before=run_at)
    rec = world.record(delayed)

    assert await world.handle(rec) == "scheduled"
    row = world.store.row("d1")
    assert (row.status, row.run_at, row.executions) == (JobStatus.SCHEDULED, run_at, 0)
    assert row.event is not None
    assert row.event["payload"] == {"x": 1}
    assert runs.ids == []
    assert await world.handle(rec) == "duplicate"  # a redelivered copy: still one row
    early = world.record(delayed.model_copy(update={"not_before": None}))
    assert await world.handle(early) == "duplicate"  # a dispatch that came before its time

    world.clock.advance(600)
    dispatched = JobEvent.model_validate(row.event).model_copy(update={"not_before": None})
    assert await world.handle(world.record(dispatched)) == "succeeded"
    assert await world.handle(world.record(dispatched)) == "reemitted"  # a second publish
    row = world.store.row("d1")
    assert (row.status, row.executions, row.event) == (JobStatus.SUCCEEDED, 1, None)
    assert runs.ids == ["d1"]


async def test_a_job_not_started_by_its_expiry_never_runs(world: World) -> None:
    runs = Runs()
    world.job_type("ok", runs)
    stale = JobEvent(id="e1", type="ok", expires_at=world.clock.now() - timedelta(seconds=1))
    assert await world.handle(world.record(stale)) == "expired"
    row = world.store.row("e1")
    assert (row.status, row.executions) == (JobStatus.EXPIRED, 0)
    [outcome] = world.outcomes()
    assert outcome.status is JobStatus.EXPIRED
    assert runs.ids == []
    assert world.completed("ok", "expired") == 1


async def test_a_retry_past_the_expiry_ends_expired(world: World) -> None:
    async def flaky(payload: Any, ctx: JobContext[Any]) -> str:
        raise RetryableError("not now")

    world.job_type("ok", flaky, max_attempts=3)
    job = JobEvent(id="e2", type="ok", expires_at=world.clock.now() + timedelta(seconds=5))
    assert await world.handle(world.record(job)) == "retried"
    [sent] = world.publisher.on(world.topics.tiers[0].topic)
    retry = JobEvent.model_validate_json(sent.value or b"").model_copy(update={"not_before": None})
    world.clock.advance(10)  # the tier held it past the job's expiry
    assert await world.handle(world.record(retry)) == "expired"
    row = world.store.row("e2")
    assert (row.status, row.attempt, row.executions) == (JobStatus.EXPIRED, 2, 1)


async def test_a_claim_of_a_job_asked_to_cancel_ends_it_without_a_run(world: World) -> None:
    runs = Runs()
    world.job_type("ok", runs)
    rec = world.record(JobEvent(id="c1", type="ok"))
    # its first worker died while it ran, and then someone asked to cancel it
    await world.store.claim_many(
        [ClaimRequest(job_id="c1", type="ok", attempt=1, token="dead", run=True)]
    )
    world.store.rows["c1"].cancel_requested_at = world.clock.now()
    world.clock.advance(world.settings.claim_lease_s + 1)

    assert await world.handle(rec) == "cancelled"
    row = world.store.row("c1")
    assert (row.status, row.executions, row.error) == (
        JobStatus.CANCELLED,
        1,
        "cancelled on request",
    )
    assert runs.ids == []
    [outcome] = world.outcomes()
    assert outcome.status is JobStatus.CANCELLED


async def test_a_running_handler_asked_to_cancel_is_cancelled_cleans_up_and_frees_its_slot(
    http: aiohttp.ClientSession,
) -> None:
    world = World(http=http, settings=Settings(
        topic_prefix="jobs", worker_name="w", concurrency=1, batch_max_delay_ms=1
    ))  # fmt: skip
    cleaned: list[str] = []
    started = asyncio.Event()

    async def long(payload: Any, ctx: JobContext[Any]) -> str:
        if ctx.job_id == "later":
            return "ran"
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.append(ctx.job_id)  # a cancelled handler gets to clean up
        return "never"

    world.job_type("ok", long)
    running = asyncio.create_task(world.handle(world.record(JobEvent(id="long", type="ok"))))
    waiting = asyncio.create_task(world.handle(world.record(JobEvent(id="later", type="ok"))))
    await asyncio.wait_for(started.wait(), 5)
    world.store.rows["long"].cancel_requested_at = world.clock.now()
    asked = asyncio.get_running_loop().time()

    assert await asyncio.wait_for(running, 5) == "cancelled"
    assert asyncio.get_running_loop().time() - asked < 2 * CONTROL_INTERVAL_S + 0.5
    assert cleaned == ["long"]
    assert await asyncio.wait_for(waiting, 5) == "succeeded"  # the slot came free
    row = world.store.row("long")
    assert (row.status, row.executions) == (JobStatus.CANCELLED, 1)
    assert row.error == "cancelled on request while it ran"
    assert [o.status for o in world.outcomes()] == [JobStatus.CANCELLED, JobStatus.SUCCEEDED]


async def test_progress_is_coalesced_and_written_while_the_job_runs(world: World) -> None:
    release = asyncio.Event()

    async def reporting(payload: Any, ctx: JobContext[Any]) -> str:
        for i in range(1, 10_001):
            await ctx.progress(i / 10_000, f"item {i} of 10000")
        await release.wait()
        return "done"

    world.job_type("ok", reporting)
    task = asyncio.create_task(world.handle(world.record(JobEvent(id="p1", type="ok"))))

    async def written() -> bool:
        row = world.store.rows.get("p1")
        return row is not None and row.progress == 1.0

    await wait_until(written, within_s=5, interval_s=0.05)
    assert world.store.row("p1").progress_detail == "item 10000 of 10000"
    assert world.store.calls.count["progress"] <= 3  # 10,000 reports, a write or two
    release.set()
    assert await task == "succeeded"
    with pytest.raises(ValueError, match="between 0 and 1"):
        await JobContext(
            job=JobEvent(type="ok"), settings=world.settings, http=world.http
        ).progress(2)
