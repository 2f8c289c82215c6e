"""Every route one record can take through the lifecycle's machine, in memory: the store,
publisher and limiter are fakes.

Each test reads what the machine left behind: the row (``FakeStore``), the records it published
(``FakePublisher``), the order of both (the journal), and the outcome label it returned.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from pydantic import BaseModel

from jobstream.agents.durable import DurableSteps
from jobstream.agents.intake import TIER_HEADER
from jobstream.agents.registry import JobContext, JobType, Registry
from jobstream.models.deadletter import REPLAY_HEADER, DeadLetterReason
from jobstream.models.errors import FatalError, RateLimitedError, RetryableError
from jobstream.models.job import FailureRecord, JobEvent, JobStatus, derived_job_id
from jobstream.models.rows import ClaimRequest, JobRow
from jobstream.streams.metrics import Metrics
from tests.fakes import World


@pytest.fixture
def world(http: aiohttp.ClientSession) -> World:
    return World(http=http)


class Calls:
    """A handler that counts its runs and returns what it was given."""

    def __init__(self) -> None:
        self.runs: list[JobEvent] = []

    async def __call__(self, payload: Any, ctx: JobContext[Any]) -> dict[str, Any]:
        self.runs.append(ctx.job)
        return {"echo": payload.model_dump(), "attempt": ctx.job.attempt}


def failing(exc: BaseException) -> Any:
    async def handler(payload: Any, ctx: JobContext[Any]) -> Any:
        raise exc

    return handler


def event(job_id: str = "j1", job_type: str = "ok", **fields: Any) -> JobEvent:
    fields.setdefault("payload", {"x": 1})
    return JobEvent(id=job_id, type=job_type, **fields)


# -- succeed -----------------------------------------------------------------------------------


async def test_a_job_that_succeeds_gets_its_row_then_its_outcome(world: World) -> None:
    handler = Calls()
    world.job_type("ok", handler)

    assert await world.handle(world.record(event())) == "succeeded"

    row = world.store.row("j1")
    assert row.status is JobStatus.SUCCEEDED
    assert row.result == {"echo": {"x": 1}, "attempt": 1}
    assert row.executions == 1
    assert row.lease_until is None
    assert row.worker == "test-worker"
    assert world.store.held == {}  # released once the row was written
    [outcome] = world.outcomes()
    assert outcome.status is JobStatus.SUCCEEDED
    assert outcome.result == row.result
    assert outcome.reemitted is False
    assert outcome.duration_ms is not None
    assert world.outcome_records()[0].key == b"j1"
    assert world.journal == ["claim j1 won", "write j1 succeeded", "publish jobs.outcomes"]
    assert world.letters() == []
    assert len(handler.runs) == 1
    assert world.completed("ok", "succeeded") == 1
    assert world.metrics.registry.get_sample_value("jobstream_in_flight_jobs") == 0


async def test_an_event_without_an_id_gets_the_id_derived_from_its_record(world: World) -> None:
    world.job_type("ok", Calls())
    raw = json.dumps({"type": "ok", "payload": {}}).encode()
    rec = world.record(raw, offset=7)

    assert await world.handle(rec) == "succeeded"
    derived = derived_job_id("jobs:0:7")
    assert world.store.row(derived).status is JobStatus.SUCCEEDED
    # every delivery of that record gets the same id: a redelivery only re-emits
    assert await world.handle(world.record(raw, offset=7)) == "reemitted"
    assert [o.job_id for o in world.outcomes()] == [derived, derived]


async def test_the_rate_limited_key_is_acquired_and_tokens_charged(world: World) -> None:
    async def counted(payload: Any, ctx: JobContext[Any]) -> str:
        ctx.usage["tokens"] = 12
        return "ok"

    world.job_type("llm", counted, rate_limit_key="upstream")
    assert await world.handle(world.record(event(job_type="llm"))) == "succeeded"
    assert world.limiter.acquired == ["upstream"]
    assert world.limiter.charged == [("upstream", 12)]


# -- retry, exhausted, fatal -------------------------------------------------------------------


async def test_a_retryable_failure_publishes_the_retry_then_writes_the_retrying_row(
    world: World,
) -> None:
    world.job_type("ok", failing(RetryableError("upstream answered 503")))
    rec = world.record(event(metadata={"origin": "test"}), headers=[("trace", b"t-1")])

    assert await world.handle(rec) == "retried"

    tier = world.topics.tiers[0]
    [sent] = world.publisher.on(tier.topic)
    retry = JobEvent.model_validate_json(sent.value or b"")
    assert retry.id == "j1"
    assert retry.attempt == 2
    assert retry.metadata == {"origin": "test"}
    [failure] = retry.history
    assert failure.attempt == 1
    assert failure.error_class == "RetryableError"
    assert failure.message == "upstream answered 503"
    assert failure.retryable is True
    assert retry.not_before == failure.at + timedelta(seconds=tier.delay_s)  # jitter 0
    assert sent.key == rec.key
    assert sent.header(TIER_HEADER) == tier.topic
    assert sent.header("trace") == "t-1"
    # the retry event is durable before the row says "retrying"
    assert world.journal == ["claim j1 won", f"publish {tier.topic}", "write j1 retrying"]
    row = world.store.row("j1")
    assert row.status is JobStatus.RETRYING
    assert row.attempt == 1
    assert row.error == "upstream answered 503"
    assert row.error_class == "RetryableError"
    assert world.outcomes() == []
    assert world.letters() == []
    assert world.completed("ok", "retried") == 1
    assert world.metrics.retries.labels(tier="10s")._value.get() == 1


async def test_the_next_attempt_claims_the_retrying_row_and_can_succeed(world: World) -> None:
    runs: list[int] = []

    async def second_time_lucky(payload: Any, ctx: JobContext[Any]) -> int:
        runs.append(ctx.job.attempt)
        if ctx.job.attempt == 1:
            raise RetryableError("not yet")
        return ctx.job.attempt

    world.job_type("ok", second_time_lucky)
    assert await world.handle(world.record(event())) == "retried"
    [sent] = world.publisher.on(world.topics.tiers[0].topic)
    # the forwarder puts it back on the main topic once due (not_before cleared)
    due = JobEvent.model_validate_json(sent.value or b"").model_copy(update={"not_before": None})
    again = world.record(due.to_bytes(), headers=sent.headers)

    assert await world.handle(again) == "succeeded"
    assert runs == [1, 2]
    row = world.store.row("j1")
    assert (row.status, row.attempt, row.result, row.executions) == (JobStatus.SUCCEEDED, 2, 2, 2)
    [outcome] = world.outcomes()
    assert outcome.attempt == 2


async def test_a_later_failure_goes_to_the_next_tier(world: World) -> None:
    world.job_type("ok", failing(RetryableError("still down")), max_attempts=5)
    history = [
        FailureRecord(attempt=1, error_class="RetryableError", message="x", at=world.clock.at)
    ]
    # attempt 2 follows a retrying row of attempt 1
    await world.store.claim(ClaimRequest(job_id="j1", type="ok", attempt=1, token="first"))
    await world.store.write(
        JobRow(job_id="j1", type="ok", status=JobStatus.RETRYING, attempt=1, claim_token="first")
    )

    rec = world.record(event(attempt=2, history=history))
    assert await world.handle(rec) == "retried"
    [sent] = world.publisher.on(world.topics.tiers[1].topic)
    retry = JobEvent.model_validate_json(sent.value or b"")
    assert retry.attempt == 3
    assert [h.attempt for h in retry.history] == [1, 2]


async def test_a_handler_past_its_timeout_is_retried(world: World) -> None:
    async def hangs(payload: Any, ctx: JobContext[Any]) -> None:
        await asyncio.Event().wait()

    world.job_type("ok", hangs, timeout_s=0.05)
    assert await world.handle(world.record(event())) == "retried"
    assert world.store.row("j1").error_class == "JobTimeoutError"
    assert world.metrics.handler_timeouts.labels(type="ok")._value.get() == 1


async def test_a_rate_limited_failure_pauses_the_key_and_is_retried(world: World) -> None:
    world.job_type("llm", failing(RateLimitedError("429", retry_after=3.0)), rate_limit_key="u")
    assert await world.handle(world.record(event(job_type="llm"))) == "retried"
    assert world.limiter.paused == [("u", 3.0)]


async def test_the_last_attempt_failing_is_exhausted(world: World) -> None:
    world.job_type("ok", failing(RetryableError("gave up")), max_attempts=2)
    at = world.clock.at
    history = [FailureRecord(attempt=1, error_class="RetryableError", message="first", at=at)]
    await world.store.claim(ClaimRequest(job_id="j1", type="ok", attempt=1, token="first"))
    await world.store.write(
        JobRow(job_id="j1", type="ok", status=JobStatus.RETRYING, attempt=1, claim_token="first")
    )
    rec = world.record(event(attempt=2, history=history))

    assert await world.handle(rec) == "dead_lettered"

    [letter] = world.letters()
    assert letter.reason is DeadLetterReason.EXHAUSTED
    assert letter.job_id == "j1"
    assert letter.attempt == 2
    assert [h.message for h in letter.history] == ["first", "gave up"]
    assert letter.id == rec.coordinates
    assert world.publisher.on(world.topics.dlq)[0].key == b"j1"
    assert all(not world.publisher.on(t.topic) for t in world.topics.tiers)
    row = world.store.row("j1")
    assert (row.status, row.attempt, row.error) == (JobStatus.DEAD_LETTERED, 2, "gave up")
    assert row.source == rec.coordinates
    [outcome] = world.outcomes()
    assert outcome.status is JobStatus.DEAD_LETTERED
    # the dead letter is durable before the terminal row, the row before the outcome
    assert world.journal[-3:] == [
        "publish jobs.dlq",
        "write j1 dead_lettered",
        "publish jobs.outcomes",
    ]
    assert world.metrics.dead_letters.labels(reason="exhausted")._value.get() == 1


@pytest.mark.parametrize(
    ("error", "policy"),
    [
        (FatalError("the receiver answered 400"), {}),
        (KeyError("missing"), {"fatal_errors": frozenset({"KeyError"})}),
        (KeyError("missing"), {"retry_unexpected": False}),
    ],
    ids=["fatal-error", "fatal-by-name", "unexpected-not-retried"],
)
async def test_a_fatal_failure_is_dead_lettered_at_once(
    world: World, error: BaseException, policy: dict[str, Any]
) -> None:
    world.job_type("ok", failing(error), **policy)
    assert await world.handle(world.record(event())) == "dead_lettered"
    [letter] = world.letters()
    assert letter.reason is DeadLetterReason.FATAL_ERROR
    assert letter.error_class == type(error).__name__
    assert letter.traceback is not None
    assert type(error).__name__ in letter.traceback
    assert world.store.row("j1").status is JobStatus.DEAD_LETTERED
    assert all(not world.publisher.on(t.topic) for t in world.topics.tiers)
    assert [o.status for o in world.outcomes()] == [JobStatus.DEAD_LETTERED]


async def test_an_unexpected_error_is_retried_by_default(world: World) -> None:
    world.job_type("ok", failing(KeyError("missing")))
    assert await world.handle(world.record(event())) == "retried"


# -- refused before the handler ----------------------------------------------------------------


async def test_an_unknown_type_is_dead_lettered(world: World) -> None:
    assert await world.handle(world.record(event(job_type="nope"))) == "dead_lettered"
    [letter] = world.letters()
    assert letter.reason is DeadLetterReason.UNKNOWN_TYPE
    assert letter.job_type == "nope"
    row = world.store.row("j1")
    assert (row.status, row.type) == (JobStatus.DEAD_LETTERED, "nope")
    assert world.completed("unknown", "dead_lettered") == 1


class Numbered(BaseModel):
    n: int


async def test_a_payload_its_handler_refuses_is_dead_lettered(world: World) -> None:
    handler = Calls()
    world.job_type("ok", handler, payload=Numbered)
    rec = world.record(event(payload={"n": "many"}))
    assert await world.handle(rec) == "dead_lettered"
    [letter] = world.letters()
    assert letter.reason is DeadLetterReason.INVALID_PAYLOAD
    assert "n:" in letter.error_message
    assert handler.runs == []
    assert world.store.row("j1").status is JobStatus.DEAD_LETTERED


async def test_undecodable_bytes_are_dead_lettered_under_their_coordinates(world: World) -> None:
    rec = world.record(b"\xff\xfe not utf-8", offset=3)
    assert await world.handle(rec) == "dead_lettered"

    [letter] = world.letters()
    assert letter.reason is DeadLetterReason.INVALID_BYTES
    assert letter.job_id == "invalid:jobs:0:3"
    assert letter.original_bytes() == rec.value
    row = world.store.row("invalid:jobs:0:3")
    assert row.status is JobStatus.DEAD_LETTERED
    assert row.error is not None
    assert row.error.startswith("invalid_bytes: ")
    assert row.source == "jobs:0:3"
    [outcome] = world.outcomes()
    assert outcome.job_id == "invalid:jobs:0:3"
    # a redelivery of the same record re-emits; no second letter
    assert await world.handle(world.record(rec.value, offset=3)) == "reemitted"
    assert len(world.letters()) == 1
    assert [o.reemitted for o in world.outcomes()] == [False, True]


async def test_a_tombstone_is_invalid_input(world: World) -> None:
    assert await world.handle(world.record(None)) == "dead_lettered"
    assert world.letters()[0].reason is DeadLetterReason.INVALID_BYTES


async def test_invalid_input_with_a_readable_id_keeps_it(world: World) -> None:
    raw = json.dumps({"id": "j7", "type": 5}).encode()
    first = world.record(raw, offset=1)
    assert await world.handle(first) == "dead_lettered"
    [letter] = world.letters()
    assert (letter.reason, letter.job_id) == (DeadLetterReason.INVALID_SCHEMA, "j7")
    row = world.store.row("j7")
    assert (row.status, row.source) == (JobStatus.DEAD_LETTERED, "jobs:0:1")

    # the same record again: only its outcome again
    assert await world.handle(world.record(raw, offset=1)) == "reemitted"
    assert len(world.letters()) == 1
    # another record under that id still gets its own letter; the row stays the first one's
    assert await world.handle(world.record(raw, offset=2)) == "dead_lettered"
    assert [x.id for x in world.letters()] == ["jobs:0:1", "jobs:0:2"]
    assert world.store.row("j7").source == "jobs:0:1"


async def test_an_oversized_record_is_not_parsed_for_an_id(world: World) -> None:
    big = json.dumps({"id": "j8", "type": "ok", "payload": {"x": "y" * 1_000_001}}).encode()
    assert await world.handle(world.record(big, offset=4)) == "dead_lettered"
    [letter] = world.letters()
    assert (letter.reason, letter.job_id) == (DeadLetterReason.OVERSIZE, "invalid:jobs:0:4")


# -- redeliveries and claims -------------------------------------------------------------------


async def test_a_redelivered_terminal_job_re_emits_its_outcome_without_running(
    world: World,
) -> None:
    handler = Calls()
    world.job_type("ok", handler)
    assert await world.handle(world.record(event(), offset=0)) == "succeeded"

    assert await world.handle(world.record(event(), offset=0)) == "reemitted"
    assert len(handler.runs) == 1
    first, again = world.outcomes()
    assert again.reemitted is True
    assert again.duration_ms is None
    assert (again.result, again.finished_at) == (first.result, first.finished_at)
    assert world.store.row("j1").executions == 1
    assert world.completed("ok", "reemitted") == 1


async def test_a_redelivered_retrying_attempt_is_a_duplicate(world: World) -> None:
    handler = failing(RetryableError("503"))
    world.job_type("ok", handler)
    assert await world.handle(world.record(event(), offset=0)) == "retried"

    redelivered = world.handle(world.record(event(), offset=0))
    assert await asyncio.wait_for(redelivered, 5) == "duplicate"  # not a wait for a holder
    assert len(world.publisher.on(world.topics.tiers[0].topic)) == 1  # no second retry
    assert world.store.row("j1").status is JobStatus.RETRYING
    assert world.completed("ok", "duplicate") == 1


async def test_an_older_attempt_after_a_newer_one_is_a_duplicate(world: World) -> None:
    handler = Calls()
    world.job_type("ok", handler)
    await world.store.claim(ClaimRequest(job_id="j1", type="ok", attempt=2, token="newer"))
    older = world.handle(world.record(event(attempt=1)))
    assert await asyncio.wait_for(older, 5) == "duplicate"
    assert handler.runs == []


async def test_a_claim_held_by_another_replica_is_waited_for_then_re_emitted(
    world: World,
) -> None:
    handler = Calls()
    world.job_type("ok", handler)
    held = await world.store.claim(ClaimRequest(job_id="j1", type="ok", attempt=1, token="other"))
    assert held.won

    task = asyncio.create_task(world.handle(world.record(event())))
    await world.store.calls.wait("claim", 3)  # it looked, waited, and looked again
    assert not task.done()
    other = JobRow(
        job_id="j1",
        type="ok",
        status=JobStatus.SUCCEEDED,
        attempt=1,
        result="theirs",
        worker="other-worker",
        claim_token="other",
        finished_at=world.clock.at,
    )
    await world.store.write(other)

    assert await asyncio.wait_for(task, 5) == "reemitted"
    assert handler.runs == []
    [outcome] = world.outcomes()
    assert (outcome.result, outcome.worker, outcome.reemitted) == ("theirs", "other-worker", True)
    assert world.metrics.claim_waits.labels(type="ok")._value.get() == 1


async def test_a_copy_in_the_same_process_waits_for_the_running_one(world: World) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    runs: list[int] = []

    async def slow(payload: Any, ctx: JobContext[Any]) -> str:
        runs.append(ctx.job.attempt)
        started.set()
        await release.wait()
        return "done"

    world.job_type("ok", slow)
    first = asyncio.create_task(world.handle(world.record(event(), offset=0)))
    await started.wait()
    second = asyncio.create_task(world.handle(world.record(event(), offset=0)))
    await world.store.calls.wait("claim", 2)
    # it waits on the local execution, not by polling the store: a poll would come within
    # 0.06 s (the first backoff), and none comes while the holder runs
    done, _ = await asyncio.wait([second], timeout=0.2)
    assert not done
    assert world.store.calls.count["claim"] == 2
    release.set()

    labels = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert list(labels) == ["succeeded", "reemitted"]
    assert runs == [1]
    assert world.store.calls.count["claim"] == 3  # once more, when the holder was done


async def test_an_expired_claim_is_taken_over(world: World) -> None:
    handler = Calls()
    world.job_type("ok", handler)
    await world.store.claim(ClaimRequest(job_id="j1", type="ok", attempt=1, token="dead", run=True))
    world.clock.advance(world.settings.claim_lease_s + 1)  # its worker died: no renewal

    assert await world.handle(world.record(event())) == "succeeded"
    assert len(handler.runs) == 1
    row = world.store.row("j1")
    assert (row.status, row.takeovers) == (JobStatus.SUCCEEDED, 1)
    assert world.metrics.claim_takeovers.labels(type="ok")._value.get() == 1
    assert row.executions == 2  # the run that died and the one that took over
    # the late write of the execution whose claim lapsed changes nothing, nor the count: its
    # claim counted its run already
    late = JobRow(job_id="j1", type="ok", status=JobStatus.SUCCEEDED, attempt=1, claim_token="dead")
    stored = await world.store.write(late)
    assert stored.result == row.result
    assert world.store.row("j1").executions == 2


async def test_a_live_claim_is_not_taken_over(world: World) -> None:
    world.job_type("ok", Calls())
    await world.store.claim(ClaimRequest(job_id="j1", type="ok", attempt=1, token="alive"))
    world.clock.advance(world.settings.claim_lease_s - 1)
    await world.store.renew()  # the holder renews: still its claim

    task = asyncio.create_task(world.handle(world.record(event())))
    await world.store.calls.wait("claim", 3)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert world.store.row("j1").claim_token == "alive"


async def test_a_job_whose_claim_expired_max_attempts_times_is_stalled(world: World) -> None:
    handler = Calls()
    world.job_type("ok", handler, max_attempts=2)
    lease = world.settings.claim_lease_s
    for token in ("died-1", "died-2"):  # two runs whose processes died
        claim = await world.store.claim(
            ClaimRequest(job_id="j1", type="ok", attempt=1, token=token, run=True)
        )
        assert claim.won
        world.clock.advance(lease + 1)
    assert world.store.row("j1").takeovers == 1

    assert await world.handle(world.record(event())) == "dead_lettered"
    assert handler.runs == []
    [letter] = world.letters()
    assert letter.reason is DeadLetterReason.STALLED
    assert letter.error_class == "JobTimeoutError"
    assert letter.history[-1].retryable is True
    row = world.store.row("j1")
    assert (row.status, row.takeovers) == (JobStatus.DEAD_LETTERED, 2)
    assert row.executions == 2  # the two that died; the stalled claim ran nothing


async def test_a_replayed_dead_letter_claims_the_row_again(world: World) -> None:
    world.job_type("ok", failing(FatalError("bad")))
    assert await world.handle(world.record(event(), offset=0)) == "dead_lettered"
    world.registry = Registry()  # the fix: the handler works now
    world.machine.registry = world.registry
    world.job_type("ok", Calls())

    replay = world.record(event(), headers=[(REPLAY_HEADER, b"jobs:0:0")])
    assert await world.handle(replay) == "succeeded"
    row = world.store.row("j1")
    assert (row.status, row.replay_of, row.takeovers) == (JobStatus.SUCCEEDED, "jobs:0:0", 0)
    # without the header, a copy of the same event only re-emits
    assert await world.handle(world.record(event())) == "reemitted"


# -- refused by the services -------------------------------------------------------------------


async def test_a_result_postgresql_refuses_is_unstorable(world: World) -> None:
    handler = Calls()
    world.job_type("ok", handler)

    def refuse(row: JobRow) -> BaseException | None:
        if row.status is JobStatus.SUCCEEDED:
            return asyncpg.DataError("unsupported Unicode escape sequence")
        return None

    world.store.refuse = refuse
    assert await world.handle(world.record(event())) == "dead_lettered"
    assert len(handler.runs) == 1
    [letter] = world.letters()
    assert letter.reason is DeadLetterReason.UNSTORABLE
    assert letter.error_class == "RowRefusedError"
    assert "unsupported Unicode escape sequence" in letter.error_message
    assert world.store.row("j1").status is JobStatus.DEAD_LETTERED


async def test_an_unstorable_error_text_is_replaced(world: World) -> None:
    world.job_type("ok", failing(FatalError("bad")))
    refused = iter([asyncpg.DataError("invalid byte sequence")])

    def refuse_once(row: JobRow) -> BaseException | None:
        return next(refused, None) if row.status is JobStatus.DEAD_LETTERED else None

    world.store.refuse = refuse_once
    assert await world.handle(world.record(event())) == "dead_lettered"
    row = world.store.row("j1")
    assert row.status is JobStatus.DEAD_LETTERED
    assert row.error == "fatal_error: the row's error text was refused by PostgreSQL"


async def test_a_result_the_handler_cannot_store_is_fatal(world: World) -> None:
    async def nan(payload: Any, ctx: JobContext[Any]) -> float:
        return float("nan")

    world.job_type("ok", nan)
    assert await world.handle(world.record(event())) == "dead_lettered"
    [letter] = world.letters()
    assert letter.reason is DeadLetterReason.FATAL_ERROR
    assert "cannot be stored" in letter.error_message


async def test_a_retry_event_larger_than_its_tier_allows_is_unpublishable(world: World) -> None:
    world.job_type("ok", failing(RetryableError("503")))
    tier = world.topics.tiers[0].topic
    world.publisher.limits[tier] = 300  # the payload alone fills it: even a short history
    rec = world.record(event(payload={"x": "y" * 400}))

    assert await world.handle(rec) == "dead_lettered"
    assert world.publisher.on(tier) == []
    [letter] = world.letters()
    assert letter.reason is DeadLetterReason.UNPUBLISHABLE
    assert "limit of 300 bytes" in letter.error_message
    assert world.store.row("j1").status is JobStatus.DEAD_LETTERED


async def test_a_retry_event_the_broker_refuses_is_unpublishable(world: World) -> None:
    world.job_type("ok", failing(RetryableError("503")))
    tier = world.topics.tiers[0].topic
    world.publisher.refuse.add(tier)  # a limit lowered on the broker after start

    assert await world.handle(world.record(event())) == "dead_lettered"
    [letter] = world.letters()
    assert (letter.reason, letter.error_class) == (
        DeadLetterReason.UNPUBLISHABLE,
        "RecordTooLargeError",
    )
    assert world.store.row("j1").status is JobStatus.DEAD_LETTERED


async def test_a_large_result_is_left_out_of_the_outcome_not_the_row(world: World) -> None:
    async def big(payload: Any, ctx: JobContext[Any]) -> str:
        return "z" * 5000

    world.job_type("ok", big)
    world.publisher.limits[world.topics.outcomes] = 2000
    assert await world.handle(world.record(event())) == "succeeded"
    [outcome] = world.outcomes()
    assert (outcome.result, outcome.result_truncated) == (None, True)
    assert world.store.row("j1").result == "z" * 5000


class BrokenRegistry(Registry):
    """A bug in the machine's own path: the lookup of a handler raises."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def get(self, name: str) -> JobType | None:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("registry lookup broke")
        return super().get(name)


async def test_a_bug_in_the_machine_is_an_internal_error_dead_letter(
    http: aiohttp.ClientSession,
) -> None:
    handler = Calls()
    world = World(http=http, registry=BrokenRegistry(failures=1))
    world.job_type("ok", handler)

    assert await world.handle(world.record(event())) == "dead_lettered"
    assert handler.runs == []
    [letter] = world.letters()
    assert (letter.reason, letter.error_class) == (DeadLetterReason.INTERNAL_ERROR, "RuntimeError")
    assert world.store.row("j1").status is JobStatus.DEAD_LETTERED
    assert world.store.held == {}
    assert world.metrics.registry.get_sample_value("jobstream_in_flight_jobs") == 0


async def test_a_record_no_route_can_end_is_unroutable_and_handle_does_not_raise(
    http: aiohttp.ClientSession,
) -> None:
    world = World(http=http, registry=BrokenRegistry(failures=1))
    world.job_type("ok", Calls())
    world.publisher.faults.down[world.topics.dlq] = ValueError("the dead-letter route is broken")
    assert await world.handle(world.record(event())) == "unroutable"
    assert world.metrics.unroutable._value.get() == 1
    assert world.store.held == {}


# -- infrastructure errors: retried in place ---------------------------------------------------


async def test_a_transient_store_error_is_retried_in_place(world: World) -> None:
    handler = Calls()
    world.job_type("ok", handler)
    world.store.fail("write", ConnectionResetError("reset"), ConnectionResetError("reset"))

    assert await world.handle(world.record(event())) == "succeeded"
    assert len(handler.runs) == 1
    assert world.store.calls.count["write"] == 3
    assert world.store.row("j1").executions == 1
    assert world.metrics.step_retries.labels(step="write")._value.get() == 2
    assert world.letters() == []


async def test_a_transient_publish_error_is_retried_in_place(world: World) -> None:
    world.job_type("ok", Calls())
    world.publisher.fail(world.topics.outcomes, ConnectionRefusedError("broker restarting"))
    assert await world.handle(world.record(event())) == "succeeded"
    assert len(world.outcomes()) == 1
    assert world.metrics.step_retries.labels(step="outcome")._value.get() == 1


async def test_an_outage_past_the_deadline_shows_as_stuck_until_it_passes(
    http: aiohttp.ClientSession,
) -> None:
    metrics = Metrics()
    steps = DurableSteps(metrics=metrics, attempt_timeout_s=0.05, deadline_s=0.2)
    world = World(http=http, metrics=metrics, steps=steps)
    world.job_type("ok", Calls())
    world.store.faults.down["claim"] = ConnectionRefusedError("database is down")

    task = asyncio.create_task(world.handle(world.record(event())))

    async def until_stuck() -> None:
        tries = 1
        while "claim" not in steps.stuck():
            tries += 1
            await world.store.calls.wait("claim", tries)  # the next try, not a timer

    await asyncio.wait_for(until_stuck(), 10)
    assert not task.done()
    assert metrics.step_outages.labels(step="claim")._value.get() == 1
    del world.store.faults.down["claim"]

    assert await asyncio.wait_for(task, 10) == "succeeded"
    assert steps.stuck() == {}
    assert metrics.steps_stuck.labels(step="claim")._value.get() == 0
    assert world.letters() == []


async def test_a_non_transient_store_error_is_not_retried(world: World) -> None:
    world.job_type("ok", Calls())
    world.store.fail("claim", ValueError("bug in the driver"))
    assert await world.handle(world.record(event())) == "dead_lettered"
    [letter] = world.letters()
    assert letter.reason is DeadLetterReason.INTERNAL_ERROR
    assert world.store.calls.count["claim"] == 2  # the failed one, then the dead letter's


def test_claim_tokens_differ_within_a_process_and_in_a_forked_child() -> None:
    import multiprocessing

    from jobstream.agents.claims import new_token

    tokens = {new_token() for _ in range(10_000)}
    assert len(tokens) == 10_000
    fork = multiprocessing.get_context("fork")
    with fork.Pool(1) as pool:
        child = set(pool.starmap(_tokens, [(1_000,)])[0])
    assert len(child) == 1_000
    assert not child & tokens  # the child does not repeat the parent's sequence
    assert not child & {new_token() for _ in range(1_000)}


def _tokens(n: int) -> list[str]:
    from jobstream.agents.claims import new_token

    return [new_token() for _ in range(n)]
