"""The baselines' own protocol: the aiokafka loop's outputs name their job, the faust agent's
count reports are found in its log, the fake server is driven with llm.chat's requests."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from jobstream.models.job import JobEvent
from jobstream.streams.dev.bench.baseline import output_for
from jobstream.streams.dev.bench.faust_baseline import (
    BatchCounter,
    format_report,
    parse_sizes,
    read_report,
)
from jobstream.streams.dev.bench.faust_baseline import main as faust_main
from jobstream.streams.dev.bench.outputs import parse_baseline
from jobstream.streams.dev.bench.report import payload_for
from jobstream.streams.dev.bench.upstream import chat_request


def test_baseline_output_names_the_job() -> None:
    event = JobEvent(id="abc", type="echo", payload={"n": 1})
    doc = json.loads(output_for(event.to_bytes()))
    assert doc["job_id"] == "abc"
    assert doc["status"] == "succeeded"
    assert isinstance(doc["finished_at"], float)
    record = SimpleNamespace(value=output_for(event.to_bytes()), timestamp=1_000)
    parsed = parse_baseline(record)
    assert parsed is not None
    assert parsed[0] == "abc"
    assert parsed[1].at == 1.0


# -- the faust baseline's count ----------------------------------------------------------------


def test_faust_counter_reports_each_batch_at_its_last_event() -> None:
    counter = BatchCounter([2, 3])
    assert counter.seen(10.0) is None
    assert counter.seen(10.5) == {"batch": 0, "events": 2, "first_at": 10.0, "last_at": 10.5}
    assert counter.seen(20.0) is None
    assert counter.seen(20.1) is None
    assert counter.seen(21.0) == {"batch": 1, "events": 3, "first_at": 20.0, "last_at": 21.0}
    # past every announced batch: counted nowhere, reported never
    assert counter.seen(30.0) is None


def test_faust_report_is_found_in_the_log_with_or_without_a_logging_prefix() -> None:
    report = {"batch": 1, "events": 3, "first_at": 20.0, "last_at": 21.0}
    log = "\n".join(
        [
            "[2026-12-01 11:33:29,076] [5523] [INFO] [^---Recovery]: Worker ready",
            "[2026-12-01 11:33:29,289] [5523] [WARNING] "
            + format_report({"batch": 0, "events": 2, "first_at": 1.0, "last_at": 2.0}),
            format_report(report),
            format_report(report)[:-9],  # a line still being written
        ]
    )
    assert read_report(log, 1) == report
    assert read_report(log, 0) == {"batch": 0, "events": 2, "first_at": 1.0, "last_at": 2.0}
    assert read_report(log, 2) is None
    assert read_report(format_report(report)[:-9], 1) is None


@pytest.mark.parametrize("text", ["", "0", "100,-1", ","])
def test_faust_batch_sizes_must_be_positive(text: str) -> None:
    with pytest.raises(ValueError, match="positive"):
        parse_sizes(text)
    assert parse_sizes("100,2000") == [100, 2000]


def test_faust_baseline_refuses_bad_sizes_before_starting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--bootstrap", "127.0.0.1:1", "--topic", "t", "--group", "g", "--expect", "0"]
    with pytest.raises(SystemExit) as exc:
        faust_main(argv)
    assert exc.value.code == 2
    assert "--expect" in capsys.readouterr().err


# -- the fake server alone -------------------------------------------------------------------


def test_upstream_requests_are_what_the_llm_handler_sends_for_a_bench_job() -> None:
    """The same body ``OpenRouterClient.chat`` builds from the benchmark's llm.chat payload."""
    from jobstream.agents.handlers.llm import ChatPayload

    payload = ChatPayload.model_validate(payload_for("llm.chat", 7))
    expected = {
        "model": "openai/gpt-4o-mini",
        "messages": [m.model_dump(exclude_none=True) for m in payload.messages],
        "max_tokens": payload.max_tokens,
    }
    assert chat_request(7, "openai/gpt-4o-mini") == expected
