"""Fitting records into the broker's limits: dead letters, outcomes, retry events, wire bytes."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from jobstream.agents.fitting import fit_dead_letter, fit_event, fit_outcome, original_facts, wire
from jobstream.models.deadletter import DeadLetter, DeadLetterReason, b64
from jobstream.models.job import FailureRecord, JobEvent, JobOutcome, JobStatus

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
    assert not dl.original_truncated
    assert dl.original_bytes() == value


def test_a_letter_too_large_keeps_a_prefix_with_size_and_digest() -> None:
    value = bytes(range(256)) * 4000  # 1,024,000 bytes, 1.37 MB in base64
    budget = 1_000_000
    data = fit_dead_letter(letter(value), value, budget=budget)
    assert len(data) <= budget
    dl = DeadLetter.model_validate_json(data)
    assert dl.original_truncated
    assert dl.original_bytes() is None
    prefix = dl.original_prefix() or b""
    assert len(prefix) > 700_000
    assert value.startswith(prefix)
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
    assert dl.original_truncated
    assert dl.original_headers == []
    assert [h.attempt for h in dl.history] == [0, 7, 8]
    assert dl.original_sha256 == hashlib.sha256(value).hexdigest()


def test_an_outcome_too_large_leaves_out_its_result() -> None:
    outcome = JobOutcome(job_id="j", type="echo", status=JobStatus.SUCCEEDED, attempt=1,
                         result={"blob": "z" * 5000})  # fmt: skip
    assert json.loads(fit_outcome(outcome, 100_000))["result"] == {"blob": "z" * 5000}
    small = JobOutcome.model_validate_json(fit_outcome(outcome, 1000))
    assert small.result is None
    assert small.result_truncated


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
    with pytest.raises(ValueError, match="surrogates not allowed"):
        outcome.model_dump_json()
    assert json.loads(wire(outcome))["result"] == {"s": "\ud800"}


def test_an_outcome_written_without_the_model_is_the_models_record() -> None:
    from datetime import UTC, datetime

    from jobstream.agents.fitting import outcome_bytes
    from jobstream.models.job import JobOutcome, JobStatus

    at = datetime(2027, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    fields = {
        "job_id": "j1", "type": "echo", "status": JobStatus.SUCCEEDED.value, "attempt": 2,
        "result": {"a": [1, 2.5, "x", None, {"k": True}], 3: "int key"}, "error": None,
        "error_class": None, "finished_at": at.isoformat(), "duration_ms": 1.5, "worker": "w",
        "reemitted": False,
    }  # fmt: skip
    model = JobOutcome.model_validate_json(outcome_bytes(fields, 10_000))
    expected = JobOutcome(
        job_id="j1", type="echo", status=JobStatus.SUCCEEDED, attempt=2,
        result={"a": [1, 2.5, "x", None, {"k": True}], "3": "int key"}, finished_at=at,
        duration_ms=1.5, worker="w",
    )  # fmt: skip
    assert model == expected
    # too large for the budget: the result is left out, the rest stays
    small = JobOutcome.model_validate_json(outcome_bytes({**fields, "error": "e" * 900}, 300))
    assert (small.result, small.result_truncated, small.job_id) == (None, True, "j1")
    # a lone surrogate (orjson writes only valid UTF-8) is escaped as json does, not lost
    odd = outcome_bytes({**fields, "error": "bad \ud800 text"}, 10_000)
    assert json.loads(odd)["error"] == "bad \ud800 text"
