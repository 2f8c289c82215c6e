"""Unit tests of the hardening pieces: fitting records, classifying errors, durable steps."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from datetime import UTC, datetime

import asyncpg
import pytest
from aiokafka import errors as kafka_errors

from agents.decode import decode_event, readable_id
from agents.durable import DurableSteps
from agents.fitting import fit_dead_letter, fit_event, fit_outcome, original_facts, wire
from models.deadletter import DeadLetter, DeadLetterReason, b64
from models.errors import InvalidJobError
from models.job import FailureRecord, JobEvent, JobOutcome, JobStatus, derived_job_id
from streams import observability
from streams.failures import ProducerResetError, RecordTooLargeError, is_transient
from streams.metrics import Metrics

AT = datetime(2026, 1, 1, tzinfo=UTC)


def letter(value: bytes, **extra: object) -> DeadLetter:
    return DeadLetter(
        id="jobs:0:1",
        job_id="j",
        reason=DeadLetterReason.INVALID_BYTES,
        error_class="InvalidJobError",
        error_message="not UTF-8",
        source_topic="jobs",
        source_partition=0,
        source_offset=1,
        original_value=b64(value),
        original_headers=[("h", b64(b"v" * 10_000))],
        **original_facts(value),
        **extra,  # type: ignore[arg-type]
    )


def test_a_letter_that_fits_keeps_the_whole_original() -> None:
    value = b"x" * 1000
    data = fit_dead_letter(letter(value), value, budget=100_000)
    dl = DeadLetter.model_validate_json(data)
    assert not dl.original_truncated and dl.original_bytes() == value


def test_a_letter_too_large_keeps_a_prefix_with_size_and_digest() -> None:
    value = bytes(range(256)) * 4000  # 1,024,000 bytes, 1.37 MB in base64
    budget = 1_000_000
    data = fit_dead_letter(letter(value), value, budget=budget)
    assert len(data) <= budget
    dl = DeadLetter.model_validate_json(data)
    assert dl.original_truncated and dl.original_bytes() is None
    prefix = dl.original_prefix() or b""
    assert len(prefix) > 700_000 and value.startswith(prefix)
    assert dl.original_size == len(value)
    assert dl.original_sha256 == hashlib.sha256(value).hexdigest()


def test_a_tiny_budget_drops_headers_history_and_the_original() -> None:
    value = b"y" * 50_000
    history = [
        FailureRecord(attempt=i, error_class="E", message="m" * 2000, at=AT) for i in range(9)
    ]
    big = letter(value, history=history, traceback="t" * 4000)
    data = fit_dead_letter(big, value, budget=3_000)
    assert len(data) <= 3_000
    dl = DeadLetter.model_validate_json(data)
    assert dl.original_truncated and dl.original_headers == []
    assert [h.attempt for h in dl.history] == [0, 7, 8]
    assert dl.original_sha256 == hashlib.sha256(value).hexdigest()


def test_an_outcome_too_large_leaves_out_its_result() -> None:
    outcome = JobOutcome(job_id="j", type="echo", status=JobStatus.SUCCEEDED, attempt=1,
                         result={"blob": "z" * 5000})  # fmt: skip
    assert json.loads(fit_outcome(outcome, 100_000))["result"] == {"blob": "z" * 5000}
    small = JobOutcome.model_validate_json(fit_outcome(outcome, 1000))
    assert small.result is None and small.result_truncated


def test_a_retry_event_sheds_history_or_cannot_be_retried() -> None:
    history = [FailureRecord(attempt=i, error_class="E", message="m" * 1500, at=AT)
               for i in range(1, 6)]  # fmt: skip
    event = JobEvent(type="echo", payload={"p": "q" * 100}, attempt=6, history=history)
    whole = len(wire(event))
    trimmed = fit_event(event, whole - 1)
    assert trimmed is not None
    assert [h.attempt for h in JobEvent.model_validate_json(trimmed).history] == [1, 4, 5]
    assert fit_event(event, 200) is None


def test_wire_survives_a_lone_surrogate() -> None:
    outcome = JobOutcome(job_id="j", type="t", status=JobStatus.SUCCEEDED, attempt=1,
                         result={"s": "\ud800"})  # fmt: skip
    with pytest.raises(ValueError):
        outcome.model_dump_json()
    assert json.loads(wire(outcome))["result"] == {"s": "\ud800"}


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (kafka_errors.KafkaConnectionError(), True),
        (kafka_errors.NotEnoughReplicasError(), True),
        (kafka_errors.NotLeaderForPartitionError(), True),
        (kafka_errors.OutOfOrderSequenceNumber(), True),
        (ProducerResetError("reset"), True),
        (asyncpg.CannotConnectNowError("starting"), True),
        (asyncpg.TooManyConnectionsError("full"), True),
        (asyncpg.InterfaceError("connection is closed"), True),
        (kafka_errors.MessageSizeTooLargeError(), False),
        (RecordTooLargeError("big"), False),
        (asyncpg.DataError("bad json"), False),
        (asyncpg.UndefinedTableError("no jobs"), False),
        (KeyError("bug"), False),
        (ValueError("bug"), False),
    ],
)
def test_only_what_can_pass_by_itself_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def steps(metrics: Metrics, *, timeout: float = 5.0, deadline: float = 10.0) -> DurableSteps:
    return DurableSteps(metrics=metrics, attempt_timeout_s=timeout, deadline_s=deadline)


async def test_a_durable_step_raises_what_cannot_pass_at_once() -> None:
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise asyncpg.DataError("jsonb refused it")

    with pytest.raises(asyncpg.DataError):
        await steps(Metrics()).run("write", refused)
    assert calls == 1


async def test_a_durable_step_retries_transient_errors_and_a_hang() -> None:
    tries: list[str] = []

    async def flaky() -> str:
        tries.append("x")
        if len(tries) == 1:
            raise ConnectionResetError()
        if len(tries) == 2:
            await asyncio.Event().wait()  # never answers: the try's timeout ends it
        return "ok"

    metrics = Metrics()
    assert await steps(metrics, timeout=0.05).run("outcome", flaky) == "ok"
    assert len(tries) == 3
    assert metrics.step_retries.labels(step="outcome")._value.get() == 2


async def test_a_step_past_its_deadline_is_one_outage_and_degrades_until_it_passes() -> None:
    observability.shutdown_sentry()  # a clean outage registry
    metrics = Metrics()
    durable = steps(metrics, timeout=0.05, deadline=0.2)
    release = asyncio.Event()

    async def down() -> str:
        if release.is_set():
            return "ok"
        raise ConnectionRefusedError()

    runs = [asyncio.create_task(durable.run("write", down)) for _ in range(3)]

    async def stuck() -> None:
        # DurableSteps exposes state, not an event: poll it under the wait_for bound
        while "write" not in durable.stuck():  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    await asyncio.wait_for(stuck(), 5)
    assert metrics.step_outages.labels(step="write")._value.get() == 1
    assert "write" in observability.outages()
    release.set()
    assert await asyncio.wait_for(asyncio.gather(*runs), 10) == ["ok"] * 3
    assert durable.stuck() == {}
    assert metrics.steps_stuck.labels(step="write")._value.get() == 0
    assert metrics.step_outages.labels(step="write")._value.get() == 1
    assert "write" not in observability.outages()


def test_decode_refuses_lone_surrogates_and_fills_a_missing_id() -> None:
    with pytest.raises(InvalidJobError) as err:
        decode_event(b'{"type": "echo", "payload": {"s": "\\ud800"}}', max_bytes=1000)
    assert err.value.reason == DeadLetterReason.INVALID_JSON
    coords = "jobs:3:17"
    job = decode_event(b'{"type": "echo"}', max_bytes=1000, default_id=derived_job_id(coords))
    again = decode_event(b'{"type": "echo"}', max_bytes=1000, default_id=derived_job_id(coords))
    assert job.id == again.id == derived_job_id(coords) != derived_job_id("jobs:3:18")
    given = decode_event(b'{"type": "echo", "id": "mine"}', max_bytes=1000, default_id="x")
    assert given.id == "mine"


def test_the_id_of_an_invalid_event_is_read_when_it_can_be() -> None:
    assert readable_id(b'{"id": "abc", "type": 5}', max_bytes=100) == "abc"
    assert readable_id(b'{"id": 5}', max_bytes=100) is None
    assert readable_id(b'{"id": ""}', max_bytes=100) is None
    assert readable_id(b"\xff\xfe", max_bytes=100) is None
    assert readable_id(b'{"id": "abc"}', max_bytes=5) is None  # oversize input is not parsed
    assert readable_id(base64.b64encode(b"x"), max_bytes=100) is None
