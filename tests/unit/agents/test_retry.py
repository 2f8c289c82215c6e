"""The retry forwarder, in memory: it holds each event until due, then puts it back on the main
topic; what it cannot pass on ends as a dead letter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from jobstream.agents.intake import TIER_HEADER
from jobstream.agents.registry import JobContext
from jobstream.agents.retry import RetryForwarder
from jobstream.models.deadletter import DeadLetterReason
from jobstream.models.errors import RetryableError
from jobstream.models.job import JobEvent, JobStatus
from jobstream.streams.kafka.record import Record
from tests.fakes import World


@pytest.fixture
def world(http: aiohttp.ClientSession) -> World:
    return World(http=http)


async def fails_once(payload: Any, ctx: JobContext[Any]) -> str:
    if ctx.job.attempt == 1:
        raise RetryableError("503")
    return "ok"


async def retried(world: World) -> Record:
    """A job's first attempt fails: its retry event on the first tier, made due now (the
    tier's delay is not what these tests are about)."""
    world.job_type("ok", fails_once)
    first = JobEvent(id="j1", type="ok", payload={"x": 1})
    assert await world.handle(world.record(first)) == "retried"
    [sent] = world.publisher.on(world.topics.tiers[0].topic)
    due = JobEvent.model_validate_json(sent.value or b"").model_copy(update={"not_before": None})
    return world.record(due.to_bytes(), topic=sent.topic, headers=sent.headers)


def on_tier(world: World, event: JobEvent) -> Record:
    tier = world.topics.tiers[0].topic
    return world.record(event, topic=tier, headers=[(TIER_HEADER, tier.encode())])


async def test_an_event_is_held_until_due_then_republished_to_the_main_topic(
    world: World,
) -> None:
    due = datetime.now(UTC) + timedelta(seconds=0.1)
    event = JobEvent(id="j1", type="ok", attempt=2, not_before=due)
    rec = on_tier(world, event)

    assert (
        await RetryForwarder(world.machine, world.publisher).handle(rec, world.topics.tiers[0])
        == "republished"
    )

    [sent] = world.publisher.on(world.topics.main)
    assert sent.at >= due
    again = JobEvent.model_validate_json(sent.value or b"")
    assert again.not_before is None
    assert again.model_copy(update={"not_before": due}) == event
    assert (sent.key, sent.headers) == (rec.key, tuple(rec.headers))
    assert world.metrics.retry_republished.labels(tier="10s")._value.get() == 1
    assert world.store.rows == {}  # the forwarder writes no row


async def test_an_event_already_due_is_republished_at_once(world: World) -> None:
    past = datetime.now(UTC) - timedelta(seconds=60)
    rec = on_tier(world, JobEvent(id="j1", type="ok", attempt=2, not_before=past))
    started = datetime.now(UTC)
    assert (
        await RetryForwarder(world.machine, world.publisher).handle(rec, world.topics.tiers[0])
        == "republished"
    )
    [sent] = world.publisher.on(world.topics.main)
    assert sent.at - started < timedelta(seconds=1)


async def test_the_republished_attempt_runs_on_the_main_topic(world: World) -> None:
    rec = await retried(world)
    assert (
        await RetryForwarder(world.machine, world.publisher).handle(rec, world.topics.tiers[0])
        == "republished"
    )
    [sent] = world.publisher.on(world.topics.main)

    assert await world.handle(world.record(sent.value)) == "succeeded"
    row = world.store.row("j1")
    assert (row.status, row.attempt, row.result) == (JobStatus.SUCCEEDED, 2, "ok")


async def test_invalid_input_on_a_retry_topic_is_dead_lettered(world: World) -> None:
    tier = world.topics.tiers[0]
    rec = world.record(b"{not json", topic=tier.topic, offset=5)

    assert await RetryForwarder(world.machine, world.publisher).handle(rec, tier) == "dead_lettered"
    assert world.publisher.on(world.topics.main) == []
    [letter] = world.letters()
    assert letter.reason is DeadLetterReason.INVALID_JSON
    assert (letter.source_topic, letter.source_offset) == (tier.topic, 5)
    assert letter.job_id == f"invalid:{tier.topic}:0:5"
    assert world.store.row(letter.job_id).status is JobStatus.DEAD_LETTERED


async def test_a_transient_republish_error_is_retried_in_place(world: World) -> None:
    rec = on_tier(world, JobEvent(id="j1", type="ok", attempt=2))
    world.publisher.fail(world.topics.main, ConnectionResetError("reset"))
    assert (
        await RetryForwarder(world.machine, world.publisher).handle(rec, world.topics.tiers[0])
        == "republished"
    )
    assert len(world.publisher.on(world.topics.main)) == 1
    assert world.metrics.step_retries.labels(step="republish")._value.get() == 1


async def test_an_event_the_main_topic_refuses_as_too_large_is_unpublishable(
    world: World,
) -> None:
    rec = await retried(world)
    world.publisher.refuse.add(world.topics.main)

    assert (
        await RetryForwarder(world.machine, world.publisher).handle(rec, world.topics.tiers[0])
        == "dead_lettered"
    )
    [letter] = world.letters()
    assert (letter.reason, letter.job_id, letter.attempt) == (
        DeadLetterReason.UNPUBLISHABLE,
        "j1",
        2,
    )
    assert [h.attempt for h in letter.history] == [1, 2]
    # attempt 2 takes the retrying row of attempt 1 and ends it
    row = world.store.row("j1")
    assert (row.status, row.attempt) == (JobStatus.DEAD_LETTERED, 2)
    assert [o.status for o in world.outcomes()] == [JobStatus.DEAD_LETTERED]


async def test_a_republish_error_that_cannot_pass_is_an_internal_error(world: World) -> None:
    rec = await retried(world)
    world.publisher.fail(world.topics.main, ValueError("serializer bug"))

    assert (
        await RetryForwarder(world.machine, world.publisher).handle(rec, world.topics.tiers[0])
        == "dead_lettered"
    )
    [letter] = world.letters()
    assert (letter.reason, letter.error_class) == (DeadLetterReason.INTERNAL_ERROR, "ValueError")
    assert world.store.row("j1").status is JobStatus.DEAD_LETTERED
    assert world.store.held == {}
