"""The benchmark's pure parts: the numbers it derives and the shapes it writes.

The benchmark itself needs Kafka, PostgreSQL and minutes of CPU, so it is not a test; what is
tested is everything that turns raw timings into the published numbers, where a wrong
percentile or a mislabelled column would go unnoticed in a report.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from streams.dev.bench import report as bench_report
from streams.dev.bench import run as bench
from streams.dev.bench.report import (
    REPORT_KEYS,
    RESULT_KEYS,
    SCENARIOS,
    Done,
    add_ratios,
    build_report,
    empty_result,
    latency_summary,
    parse_scenarios,
    percentile,
    render_table,
    summarize,
    write_report,
)

# -- percentiles -------------------------------------------------------------------------------


def test_percentile_interpolates_between_closest_ranks() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 0) == 1
    assert percentile([1, 2, 3, 4], 100) == 4
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert percentile([10, 20], 25) == pytest.approx(12.5)


def test_percentile_does_not_depend_on_input_order() -> None:
    values = [float(v) for v in range(1000)]
    shuffled = values[:]
    random.Random(7).shuffle(shuffled)
    for q in (0, 1, 50, 90, 99, 99.9, 100):
        assert percentile(shuffled, q) == percentile(values, q)


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([42.0], 0) == percentile([42.0], 99) == 42.0


@pytest.mark.parametrize("q", [-1, 100.1])
def test_percentile_rejects_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], q)


def test_percentile_of_nothing_is_an_error_not_zero() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_latency_summary() -> None:
    s = latency_summary([float(v) for v in range(1, 101)])
    assert s == {
        "count": 100,
        "min": 1.0,
        "p50": 50.5,
        "p90": 90.1,
        "p99": 99.0,
        "max": 100.0,
        "mean": 50.5,
    }
    empty = latency_summary([])
    assert empty["count"] == 0
    assert all(v is None for k, v in empty.items() if k != "count")


# -- summarizing raw timings -------------------------------------------------------------------


def _timings(n: int, *, started: float = 1000.0) -> tuple[dict[str, float], dict[str, Done]]:
    """Job i is created at started + i ms and done 100 ms later."""
    created = {f"j{i}": started + i / 1000 for i in range(n)}
    done = {
        job_id: Done(at=t + 0.1, status="succeeded", finished_at=t + 0.09, handler_ms=1.0)
        for job_id, t in created.items()
    }
    return created, done


def test_summarize_throughput_runs_from_first_publish_to_last_output() -> None:
    created, done = _timings(1000)
    r = summarize(created, done, started=1000.0, published=1000.5)
    # last job created at 1000.999, done at 1001.099: 1000 jobs in 1.099 s
    assert r["jobs"] == r["completed"] == 1000
    assert r["duration_s"] == pytest.approx(1.099)
    assert r["jobs_per_s"] == pytest.approx(1000 / 1.099, abs=0.1)
    assert r["publish_s"] == 0.5
    assert r["publish_jobs_per_s"] == 2000.0
    assert r["latency_ms"]["p50"] == pytest.approx(100.0)
    assert r["finished_latency_ms"]["p99"] == pytest.approx(90.0)
    assert r["handler_ms"]["max"] == 1.0
    assert r["statuses"] == {"succeeded": 1000}
    assert r["publisher_bound"] is False


def test_summarize_ignores_outputs_of_other_jobs_and_counts_missing_ones() -> None:
    created, done = _timings(10)
    done["warm-0"] = Done(at=5000.0, status="succeeded")  # a warm-up job, finished much later
    del done["j9"]
    r = summarize(created, done, started=1000.0, published=1000.01)
    assert r["jobs"] == 10
    assert r["completed"] == 9
    assert r["duration_s"] == pytest.approx(0.108)
    assert r["latency_ms"]["count"] == 9


def test_summarize_flags_a_run_that_only_followed_the_publisher() -> None:
    created = {f"j{i}": 1000 + i / 100 for i in range(100)}  # published over ~1 s
    done = {j: Done(at=t + 0.002, status="succeeded") for j, t in created.items()}
    r = summarize(created, done, started=1000.0, published=1001.0)
    assert r["publisher_bound"] is True


def test_summarize_with_nothing_done() -> None:
    created, _ = _timings(5)
    r = summarize(created, {}, started=1000.0, published=1000.1)
    assert r["completed"] == 0
    assert r["jobs_per_s"] is None
    assert r["latency_ms"]["p50"] is None


def _result(name: str, rate: float | None, error: str | None = None) -> dict[str, object]:
    spec = bench_report.BY_NAME[name]
    r = empty_result(spec, jobs=100, warmup=10, partitions=8)
    r.update(jobs_per_s=rate, completed=100 if rate else 0, error=error)
    return r


def test_ratios_to_the_baseline_and_to_the_expected_rate() -> None:
    results = [_result("baseline", 2000.0), _result("echo-1", 500.0), _result("llm-25", 40.0)]
    add_ratios(results)
    assert [r["vs_baseline"] for r in results] == [1.0, 0.25, 0.02]
    assert results[2]["expected_jobs_s"] == 50.0
    assert results[2]["vs_expected"] == 0.8
    assert results[1]["vs_expected"] is None


def test_no_ratio_without_a_usable_baseline() -> None:
    failed = [_result("baseline", 2000.0, error="boom"), _result("echo-1", 500.0)]
    add_ratios(failed)
    assert [r["vs_baseline"] for r in failed] == [None, None]
    missing = [_result("echo-1", 500.0)]
    add_ratios(missing)
    assert missing[0]["vs_baseline"] is None


def test_expected_rate_is_littles_law() -> None:
    assert bench_report.BY_NAME["llm-25"].expected_jobs_s == 50.0
    assert bench_report.BY_NAME["llm-500"].expected_jobs_s == 1000.0
    assert bench_report.BY_NAME["echo-1"].expected_jobs_s is None


# -- the table ---------------------------------------------------------------------------------


def test_table_columns_and_values() -> None:
    results = [_result("baseline", 2000.0), _result("echo-1", 288.44)]
    results[1]["latency_ms"] = latency_summary([100.0, 3831.8, 6800.2])
    add_ratios(results)
    lines = render_table(results).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "scenario", "replicas", "concurrency", "jobs", "jobs/s", "p50 ms", "p99 ms", "vs baseline",
    ]  # fmt: skip
    assert set(lines[1]) <= {"|", "-", ":", " "}
    assert lines[1].count(":") == 7  # every column but the name is right-aligned
    base = [c.strip() for c in lines[2].strip("|").split("|")]
    echo = [c.strip() for c in lines[3].strip("|").split("|")]
    assert base == ["baseline", "1", "-", "100", "2,000.0", "-", "-", "1.00 (ref)"]
    assert echo == ["echo-1", "1", "25", "100", "288.4", "3,832", "6,741", "0.14x"]
    assert len({len(line) for line in lines}) == 1  # columns line up


def test_table_shows_failures_and_incomplete_runs() -> None:
    failed = _result("echo-2", None, error="TimeoutError: timed out")
    failed["completed"] = 40
    lines = render_table([failed]).splitlines()
    row = [c.strip() for c in lines[2].strip("|").split("|")]
    assert row[0] == "echo-2"
    assert row[3] == "40/100"
    assert row[4] == "failed"
    assert row[7] == "-"


# -- the JSON ----------------------------------------------------------------------------------


def test_failed_scenario_result_still_has_every_key() -> None:
    r = empty_result(bench_report.BY_NAME["llm-500"], jobs=1500, warmup=200, partitions=8)
    assert tuple(r) == RESULT_KEYS
    assert r["concurrency"] == 500
    assert r["latency_ms"]["count"] == 0
    assert r["error"] is None


def test_report_shape_and_round_trip(tmp_path: Path) -> None:
    created, done = _timings(50)
    results = [_result("baseline", 1000.0), _result("echo-1", 300.0)]
    results[1].update(summarize(created, done, started=1000.0, published=1000.01))
    add_ratios(results)
    report = build_report(
        started_at="2025-01-01T00:00:00+00:00",
        finished_at="2025-01-01T00:01:00+00:00",
        complete=True,
        machine=bench.machine_info(),
        services={"kafka_bootstrap": "127.0.0.1:9092", "kafka_version": None},
        options={"quick": True},
        results=results,
    )
    assert set(report) == REPORT_KEYS
    assert report["schema"] == bench_report.SCHEMA_VERSION
    assert report["machine"]["cores"] >= 1
    assert "python" in report["machine"]
    assert all(tuple(s) == RESULT_KEYS for s in report["scenarios"])

    out = tmp_path / "results" / "bench-x.json"
    written = write_report(report, out, latest=True)
    assert written == [out, out.parent / "latest.json"]
    assert json.loads(out.read_text()) == json.loads((out.parent / "latest.json").read_text())
    loaded = json.loads(out.read_text())
    assert loaded["scenarios"][1]["latency_ms"]["p50"] == pytest.approx(100.0)

    other = tmp_path / "elsewhere.json"
    assert write_report(report, other, latest=False) == [other]
    assert not (tmp_path / "latest.json").exists()


# -- reading outputs ---------------------------------------------------------------------------


# -- choosing scenarios ------------------------------------------------------------------------


def _names(text: str | None, **kw: bool) -> list[str]:
    return [s.name for s in parse_scenarios(text, **kw)]


def test_default_is_everything_baseline_first() -> None:
    assert _names(None) == ["baseline", "echo-1", "echo-2", "llm-25", "llm-500"]
    assert _names("all") == _names(None) == [s.name for s in SCENARIOS]


def test_baseline_is_added_for_the_ratios_unless_refused() -> None:
    assert _names("echo-2") == ["baseline", "echo-2"]
    assert _names("echo-2", with_baseline=False) == ["echo-2"]
    assert _names("all", with_baseline=False) == ["echo-1", "echo-2", "llm-25", "llm-500"]
    # named explicitly, it runs even with --no-baseline
    assert _names("baseline,echo-1", with_baseline=False) == ["baseline", "echo-1"]
    assert _names("baseline") == ["baseline"]


def test_aliases_numbers_case_spaces_and_order() -> None:
    assert _names("llm", with_baseline=False) == ["llm-25", "llm-500"]
    assert _names(" LLM-500 , echo-1 ,", with_baseline=False) == ["echo-1", "llm-500"]
    assert _names("1,3", with_baseline=False) == ["echo-1", "llm-25"]
    assert _names("5") == ["baseline"]
    assert _names("echo,echo-1", with_baseline=False) == ["echo-1", "echo-2"]
    assert _names(",", with_baseline=False) == ["echo-1", "echo-2", "llm-25", "llm-500"]


@pytest.mark.parametrize("text", ["echo-3", "llm-100", "6", "echo;llm"])
def test_unknown_scenarios_are_refused_with_the_choices(text: str) -> None:
    with pytest.raises(ValueError, match=r"unknown scenario .* choose from baseline, echo-1"):
        parse_scenarios(text)


def test_notes_say_what_limits_each_number() -> None:
    llm = _result("llm-500", 167.0)
    llm["cpu"] = {"consumer_cpu_ms_per_job": 1.734, "machine_busy": 0.998}
    llm["upstream"] = {"max_in_flight": 100}
    base = _result("baseline", 2000.0)
    base["publisher_bound"] = True
    failed = _result("echo-1", None, error="TimeoutError: timed out\nmore")
    results = [base, llm, failed]
    add_ratios(results)
    notes = bench_report.render_notes(results).splitlines()
    assert notes[0] == "- baseline: kept up with the publisher (rate is the publisher's)"
    assert notes[1] == (
        "- llm-500: 1.73 CPU ms/job; machine 100% busy; 17% of the 1000/s ceiling;"
        " upstream max in flight 100"
    )
    assert notes[2] == "- echo-1: error: TimeoutError: timed out"
