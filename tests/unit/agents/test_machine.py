"""The lifecycle's machine on fakes, many records at once: claims and writes in batches,
handlers side by side under the concurrency limit, acks only after the rows and outcomes are
durable, a drain that starts nothing new."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
import pytest

from jobstream.agents.machine import Machine
from jobstream.agents.registry import JobContext
from jobstream.agents.states import Outcome, Succeeded
from jobstream.models.deadletter import DeadLetterReason
from jobstream.models.errors import FatalError
from jobstream.models.job import JobEvent, JobStatus
from jobstream.models.rows import JobRow
from jobstream.streams.failures import ProducerResetError
from jobstream.streams.kafka.record import Record
from jobstream.streams.polling import wait_until
from jobstream.streams.settings import Settings
from tests.fakes import World


def settings(concurrency: int = 25) -> Settings:
    return Settings(
        topic_prefix="jobs",
        worker_name="test-worker",
        retry_tiers_s=(10.0, 60.0),
        concurrency=concurrency,
        batch_max_delay_ms=10,
    )


@pytest.fixture
def world(http: aiohttp.ClientSession) -> World:
    return World(http=http, settings=settings())


class Acks:
    """The ``done`` callbacks of the records submitted: what the runtime would ack."""

    def __init__(self) -> None:
        self.labels: dict[int, str] = {}
        self.order: list[int] = []
        self.journal: list[str] | None = None

    def for_record(self, rec: Record) -> Callable[[str], None]:
        def done(label: str) -> None:
            assert rec.offset not in self.labels, "a record ended twice"
            self.labels[rec.offset] = label
            self.order.append(rec.offset)
            if self.journal is not None:
                self.journal.append(f"ack {rec.offset}")

        return done

    async def until(self, count: int, timeout: float = 5.0) -> None:
        await until(lambda: len(self.labels) >= count, timeout)


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async def checked() -> bool:
        return check()

    await wait_until(checked, within_s=timeout, interval_s=0.002)


def path(world: World) -> Machine:
    return world.machine


def event(job_id: str, job_type: str = "ok", **payload: Any) -> JobEvent:
    return JobEvent(id=job_id, type=job_type, payload=payload or {"x": 1})


async def echo(payload: Any, ctx: JobContext[Any]) -> dict[str, Any]:
    return {"echo": payload.model_dump()}


def submit(world: World, batch: Machine, acks: Acks, value: JobEvent | bytes) -> Record:
    rec = world.record(value)
    batch.submit(rec, acks.for_record(rec))
    return rec


async def test_a_batch_is_claimed_once_written_once_and_acked_after_its_outcomes(
    http: aiohttp.ClientSession,
) -> None:
    world = World(http=http, settings=settings(concurrency=50))
    world.job_type("ok", echo)
    batch, acks = path(world), Acks()
    acks.journal = world.journal
    for i in range(50):
        submit(world, batch, acks, event(f"j{i}"))
    await acks.until(50)

    assert set(acks.labels.values()) == {"succeeded"}
    assert world.store.calls.count["claim"] == 1
    assert world.store.calls.count["write"] == 1
    assert len(world.outcomes()) == 50
    assert {o.status for o in world.outcomes()} == {JobStatus.SUCCEEDED}
    assert all(world.store.row(f"j{i}").status is JobStatus.SUCCEEDED for i in range(50))
    assert world.store.held == {}
    # nothing is acked before every row of its batch is written and its outcome sent
    first_ack = world.journal.index("ack 0")
    assert world.journal[:first_ack].count("publish jobs.outcomes") == 50
    assert world.completed("ok", "succeeded") == 50
    assert world.metrics.registry.get_sample_value("jobstream_in_flight_jobs") == 0
    await batch.close()


async def test_a_slow_job_does_not_hold_back_the_fast_ones_of_its_batch(world: World) -> None:
    release = asyncio.Event()

    async def slow(payload: Any, ctx: JobContext[Any]) -> str:
        await release.wait()
        return "slow"

    world.job_type("ok", echo)
    world.job_type("slow", slow)
    batch, acks = path(world), Acks()
    slow_rec = submit(world, batch, acks, event("s", "slow"))
    for i in range(20):
        submit(world, batch, acks, event(f"f{i}"))

    await acks.until(20)
    assert slow_rec.offset not in acks.labels  # the fast ones are acked, the slow one runs
    assert batch.running == 1
    release.set()
    await acks.until(21)
    assert acks.labels[slow_rec.offset] == "succeeded"
    await batch.close()


async def test_no_more_handlers_run_at_once_than_the_concurrency(
    http: aiohttp.ClientSession,
) -> None:
    world = World(http=http, settings=settings(concurrency=3))
    running, peak = 0, 0
    release = asyncio.Event()

    async def held(payload: Any, ctx: JobContext[Any]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    world.job_type("ok", held)
    batch, acks = path(world), Acks()
    for i in range(10):
        submit(world, batch, acks, event(f"j{i}"))
    await until(lambda: running == 3)
    assert (batch.running, batch.waiting) == (3, 7)
    # only the jobs with a slot are claimed: their rows say running, the others have none yet
    assert sorted(world.store.rows) == ["j0", "j1", "j2"]
    assert {r.executions for r in world.store.rows.values()} == {1}  # counted as they start
    release.set()
    await acks.until(10)
    assert peak == 3
    assert set(acks.labels.values()) == {"succeeded"}
    await batch.close()


async def test_records_off_the_common_path_take_the_per_record_routes(world: World) -> None:
    world.job_type("ok", echo)

    async def broken(payload: Any, ctx: JobContext[Any]) -> None:
        raise FatalError("no")

    world.job_type("broken", broken)
    batch, acks = path(world), Acks()
    bad = submit(world, batch, acks, b"{not json")
    unknown = submit(world, batch, acks, event("u", "nobody"))
    failed = submit(world, batch, acks, event("b", "broken"))
    first = submit(world, batch, acks, event("dup"))
    copy = submit(world, batch, acks, event("dup"))  # a copy in the same batch
    await acks.until(5)

    assert acks.labels[bad.offset] == "dead_lettered"
    assert acks.labels[unknown.offset] == "dead_lettered"
    assert acks.labels[failed.offset] == "dead_lettered"
    assert (acks.labels[first.offset], acks.labels[copy.offset]) == ("succeeded", "reemitted")
    reasons = sorted(letter.reason for letter in world.letters())
    assert reasons == sorted(
        [DeadLetterReason.INVALID_JSON, DeadLetterReason.UNKNOWN_TYPE, DeadLetterReason.FATAL_ERROR]
    )
    assert world.store.row("dup").executions == 1
    await batch.close()


async def test_a_row_postgresql_refuses_is_dead_lettered_and_the_others_are_written(
    world: World,
) -> None:
    async def result(payload: Any, ctx: JobContext[Any]) -> Any:
        return payload.model_dump()

    world.job_type("ok", result)

    def refuse(row: JobRow) -> BaseException | None:
        if row.status is JobStatus.SUCCEEDED and row.job_id == "bad":
            return asyncpg.DataError("value too long")
        return None

    world.store.refuse = refuse
    batch, acks = path(world), Acks()
    bad = submit(world, batch, acks, event("bad"))
    good = submit(world, batch, acks, event("good"))
    await acks.until(2)

    assert (acks.labels[bad.offset], acks.labels[good.offset]) == ("dead_lettered", "succeeded")
    assert world.store.row("bad").status is JobStatus.DEAD_LETTERED
    [letter] = world.letters()
    assert letter.reason is DeadLetterReason.UNSTORABLE
    assert world.store.row("good").status is JobStatus.SUCCEEDED
    await batch.close()


async def test_outcomes_that_fail_to_send_are_sent_again_before_the_ack(world: World) -> None:
    world.job_type("ok", echo)
    world.publisher.fail(world.topics.outcomes, ProducerResetError("producer replaced"))
    batch, acks = path(world), Acks()
    for i in range(3):
        submit(world, batch, acks, event(f"j{i}"))
    await acks.until(3, timeout=10)

    assert set(acks.labels.values()) == {"succeeded"}
    delivered = {json.loads(s.value or b"")["job_id"] for s in world.outcome_records()}
    assert delivered == {"j0", "j1", "j2"}
    await batch.close()


async def test_a_drain_leaves_the_jobs_waiting_for_a_slot_unclaimed_and_unacked(
    http: aiohttp.ClientSession,
) -> None:
    world = World(http=http, settings=settings(concurrency=2))
    release = asyncio.Event()
    started = 0

    async def held(payload: Any, ctx: JobContext[Any]) -> str:
        nonlocal started
        started += 1
        await release.wait()
        return "done"

    world.job_type("ok", held)
    batch, acks = path(world), Acks()
    for i in range(6):
        submit(world, batch, acks, event(f"j{i}"))
    await until(lambda: started == 2)

    left = await batch.drain()
    assert left == 4
    assert sorted(label for label in acks.labels.values()) == [Outcome.ABANDONED] * 4
    assert len(world.store.rows) == 2  # the 4 left were never claimed
    assert len(world.store.held) == 2
    release.set()
    await acks.until(6)
    assert sorted(acks.labels.values()) == [Outcome.ABANDONED] * 4 + ["succeeded"] * 2
    await batch.close()


async def test_a_rebalance_leaves_the_revoked_partitions_jobs_not_started_to_their_next_owner(
    http: aiohttp.ClientSession,
) -> None:
    world = World(http=http, settings=settings(concurrency=2))
    release = asyncio.Event()
    started: list[str] = []

    async def held(payload: Any, ctx: JobContext[Any]) -> str:
        started.append(ctx.job_id)
        await release.wait()
        return "done"

    world.job_type("ok", held)
    machine, acks = path(world), Acks()
    recs = [world.record(event(f"j{i}"), partition=i % 2) for i in range(6)]
    for rec in recs:
        machine.submit(rec, acks.for_record(rec))
    await until(lambda: len(started) == 2)  # j0 (partition 0) and j1 (partition 1) run

    assert machine.revoke({(world.topics.main, 0)}) == 2  # j2 and j4 waited for a slot
    assert sorted(acks.labels) == [recs[2].offset, recs[4].offset]
    assert set(acks.labels.values()) == {Outcome.ABANDONED}  # unacked: the new owner runs them
    release.set()
    await acks.until(6)
    assert sorted(started) == ["j0", "j1", "j3", "j5"]  # what was running finished
    assert sorted(world.store.rows) == ["j0", "j1", "j3", "j5"]
    await machine.close()


async def test_a_bug_in_a_batch_stage_still_ends_every_record_of_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.job_type("ok", echo)

    records = world.machine.settler.records
    real = records.row

    def broken(state: Any, at: datetime) -> JobRow | None:
        if isinstance(state, Succeeded):
            raise RuntimeError("a bug in the settle stage")
        return real(state, at)

    monkeypatch.setattr(records, "row", broken)
    batch, acks = path(world), Acks()
    for i in range(3):
        submit(world, batch, acks, event(f"j{i}"))
    await acks.until(3)

    assert set(acks.labels.values()) == {"dead_lettered"}
    assert {letter.reason for letter in world.letters()} == {DeadLetterReason.INTERNAL_ERROR}
    assert {world.store.row(f"j{i}").status for i in range(3)} == {JobStatus.DEAD_LETTERED}
    assert world.store.held == {}
    await batch.close()
