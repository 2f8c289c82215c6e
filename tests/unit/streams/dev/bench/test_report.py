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

from jobstream.streams.dev.bench import report as bench_report
from jobstream.streams.dev.bench.machine import machine_info
from jobstream.streams.dev.bench.report import (
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


def test_ratios_to_each_baseline_and_to_the_concurrency_ceiling() -> None:
    results = [
        _result("faust", 4000.0),
        _result("aiokafka", 10000.0),
        _result("echo-1", 1000.0),
        _result("llm-25", 40.0),
    ]
    add_ratios(results)
    assert [r["vs_faust"] for r in results] == [1.0, 2.5, 0.25, 0.01]
    assert [r["vs_aiokafka"] for r in results] == [0.4, 1.0, 0.1, 0.004]
    # no upstream row: the ceiling is Little's law alone
    assert results[3]["expected_jobs_s"] == results[3]["ceiling_jobs_s"] == 50.0
    assert results[3]["vs_ceiling"] == 0.8
    assert results[2]["ceiling_jobs_s"] is None
    assert results[2]["vs_ceiling"] is None


def test_ceiling_is_the_fake_server_alone_when_it_is_lower() -> None:
    upstream = _result("upstream", 800.0)
    llm500, llm25 = _result("llm-500", 600.0), _result("llm-25", 45.0)
    results = [upstream, llm25, llm500]
    add_ratios(results)
    assert llm500["expected_jobs_s"] == 1000.0
    assert llm500["ceiling_jobs_s"] == 800.0  # min(1 x 500 / 0.5 s, 800/s measured alone)
    assert llm500["vs_ceiling"] == 0.75
    assert llm25["ceiling_jobs_s"] == 50.0  # its own concurrency is the lower one
    assert llm25["vs_ceiling"] == 0.9
    # a failed upstream row is no ceiling: Little's law stays
    failed = [_result("upstream", 800.0, error="boom"), _result("llm-500", 600.0)]
    add_ratios(failed)
    assert failed[1]["ceiling_jobs_s"] == 1000.0
    assert failed[1]["vs_ceiling"] == 0.6


def test_the_fake_server_alone_is_not_compared_to_the_consumers() -> None:
    results = [_result("faust", 4000.0), _result("aiokafka", 8000.0), _result("upstream", 800.0)]
    add_ratios(results)
    assert results[2]["vs_faust"] is None
    assert results[2]["vs_aiokafka"] is None
    assert results[2]["vs_ceiling"] == 0.8  # of what its 500 connections allow at 500 ms


def test_no_ratio_without_a_usable_baseline() -> None:
    failed = [_result("faust", 2000.0, error="boom"), _result("echo-1", 500.0)]
    add_ratios(failed)
    assert [r["vs_faust"] for r in failed] == [None, None]
    assert [r["vs_aiokafka"] for r in failed] == [None, None]
    missing = [_result("echo-1", 500.0)]
    add_ratios(missing)
    assert missing[0]["vs_faust"] is None


def test_expected_rate_is_littles_law() -> None:
    assert bench_report.BY_NAME["llm-25"].expected_jobs_s == 50.0
    assert bench_report.BY_NAME["llm-500"].expected_jobs_s == 1000.0
    assert bench_report.BY_NAME["echo-1"].expected_jobs_s is None


def test_echo_two_over_echo_one() -> None:
    results = [_result("echo-1", 800.0), _result("echo-2", 1200.0)]
    assert bench_report.ratio_of(results, "echo-2", "echo-1") == 1.5
    assert bench_report.ratio_of(results[:1], "echo-2", "echo-1") is None
    results[1]["error"] = "boom"
    assert bench_report.ratio_of(results, "echo-2", "echo-1") is None


# -- the mixed scenario ------------------------------------------------------------------------


def test_mixed_scenario_puts_a_sleep_job_every_twentieth() -> None:
    mixed = bench_report.BY_NAME["mixed-1"]
    plan = [mixed.job_at(i) for i in range(40)]
    sleeps = [i for i, (job_type, _) in enumerate(plan) if job_type == "sleep"]
    assert sleeps == [19, 39]
    assert plan[19][1] == {"seconds": 2.0}
    assert plan[0] == ("echo", {"n": 0, "text": "benchmark"})
    # 25 slots, each sleep holds one for 2 s once every 20 jobs: 250 jobs/s at best
    assert mixed.slow_bound_jobs_s == 250.0
    # published at 150/s: 7.5 sleeps a second, each 2 s, hold 15 slots on average
    assert mixed.slow_slots == 15.0
    assert mixed.slow_slots < (mixed.concurrency or 0)  # so echo jobs never wait for a slot
    assert bench_report.BY_NAME["echo-1"].slow_bound_jobs_s is None
    assert bench_report.BY_NAME["echo-1"].slow_slots is None
    assert all(t == "echo" for t, _ in map(bench_report.BY_NAME["echo-1"].job_at, range(40)))


def test_a_paced_batch_follows_a_fixed_schedule() -> None:
    pace = bench_report.pace_wait
    assert pace(100.0, 0, 150.0, now=100.0) == 0.0
    assert pace(100.0, 300, 150.0, now=100.5) == pytest.approx(1.5)  # job 300 is due at 102
    assert pace(100.0, 300, 150.0, now=103.0) == 0.0  # late: sent at once, not rescheduled
    assert pace(100.0, 10_000, None, now=100.0) == 0.0  # unpaced: all at once


def test_a_mix_published_all_at_once_notes_the_bound_its_sleeps_set() -> None:
    r = _result("echo-1", 1000.0)
    r.update(slow_slots=None, slow_bound_jobs_s=250.0)
    add_ratios([r])
    assert bench_report.render_notes([r]) == (
        "- echo-1: the sleep jobs alone bound the mix at 250 jobs/s"
    )


def test_llm_jobs_carry_a_chat_request() -> None:
    job_type, payload = bench_report.BY_NAME["llm-500"].job_at(3)
    assert job_type == "llm.chat"
    assert payload["messages"][0]["role"] == "user"
    assert payload["max_tokens"] == 16


# -- counting consumers, memory, CPU -------------------------------------------------------------


def test_count_summary_times_from_first_publish_to_the_last_event() -> None:
    counted = {"batch": 1, "events": 2000, "first_at": 1000.05, "last_at": 1000.5}
    r = bench_report.summarize_count(2000, counted, started=1000.0, published=1000.4)
    assert r["completed"] == 2000
    assert r["duration_s"] == 0.5
    assert r["jobs_per_s"] == 4000.0
    assert r["publish_jobs_per_s"] == 5000.0
    assert r["publisher_bound"] is False  # 0.1 s after the last publish, 0.04 s would be
    nothing = bench_report.summarize_count(2000, None, started=1000.0, published=1000.4)
    assert nothing["completed"] == 0
    assert nothing["jobs_per_s"] is None


def test_peak_rss_is_the_highest_sample_per_process_and_overall() -> None:
    peaks = bench_report.peak_rss_mb(
        {"worker-1": [100_000_000, 150_400_000, 120_000_000], "worker-2": [90_000_000], "x": []}
    )
    assert peaks == {"worker-1": 150.4, "worker-2": 90.0, "x": None, "max": 150.4}
    assert bench_report.peak_rss_mb({}) == {"max": None}


def test_cpu_per_job() -> None:
    assert bench_report.cpu_ms_per_job(1.5, 3000) == 0.5
    assert bench_report.cpu_ms_per_job(None, 3000) is None
    assert bench_report.cpu_ms_per_job(1.5, 0) is None


# -- the table ---------------------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_columns_and_values() -> None:
    results = [_result("faust", 4000.0), _result("aiokafka", 2000.0), _result("echo-1", 288.44)]
    results[2]["latency_ms"] = latency_summary([100.0, 3831.8, 6800.2])
    results[2]["cpu"] = {"consumer_cpu_ms_per_job": 0.894}
    results[2]["rss_mb"] = {"worker-1": 148.2, "max": 148.2}
    add_ratios(results)
    lines = render_table(results).splitlines()
    assert _cells(lines[0]) == [
        "scenario", "replicas", "concurrency", "jobs", "jobs/s", "p50 ms", "p99 ms",
        "CPU ms/job", "peak RSS MB", "vs faust", "vs aiokafka", "% ceiling",
    ]  # fmt: skip
    assert set(lines[1]) <= {"|", "-", ":", " "}
    assert lines[1].count(":") == 11  # every column but the name is right-aligned
    assert _cells(lines[2]) == [
        "faust", "1", "1", "100", "4,000.0", "-", "-", "-", "-", "1.00 (ref)", "2.00x", "-",
    ]  # fmt: skip
    assert _cells(lines[3])[9:11] == ["0.50x", "1.00 (ref)"]
    assert _cells(lines[4]) == [
        "echo-1", "1", "25", "100", "288.4", "3,832", "6,741", "0.89", "148", "0.07x", "0.14x",
        "-",
    ]  # fmt: skip
    assert len({len(line) for line in lines}) == 1  # columns line up


def test_table_shows_the_percentage_of_the_ceiling() -> None:
    results = [_result("upstream", 800.0), _result("llm-500", 600.0)]
    add_ratios(results)
    row = _cells(render_table(results).splitlines()[3])
    assert row[0] == "llm-500"
    assert row[-1] == "75"


def test_table_gives_each_type_of_a_mixed_run_its_own_row() -> None:
    r = _result("mixed-1", 200.0)
    r["by_type"] = {
        "echo": {"jobs": 95, "completed": 95, "jobs_per_s": 190.0,
                 "latency_ms": latency_summary([10.0, 20.0])},
        "sleep": {"jobs": 5, "completed": 4, "jobs_per_s": 2.5,
                  "latency_ms": latency_summary([2000.0, 2100.0])},
    }  # fmt: skip
    add_ratios([r])
    lines = render_table([r]).splitlines()
    assert len(lines) == 5
    assert _cells(lines[3])[:7] == ["mixed-1 echo", "", "", "95", "190.0", "15", "20"]
    assert _cells(lines[4])[:7] == ["mixed-1 sleep", "", "", "4/5", "2.5", "2,050", "2,099"]
    assert _cells(lines[4])[7:] == [""] * 5
    assert len({len(line) for line in lines}) == 1


def test_table_shows_failures_and_incomplete_runs() -> None:
    failed = _result("echo-2", None, error="TimeoutError: timed out")
    failed["completed"] = 40
    lines = render_table([failed]).splitlines()
    row = _cells(lines[2])
    assert row[0] == "echo-2"
    assert row[3] == "40/100"
    assert row[4] == "failed"
    assert row[9:] == ["-", "-", "-"]


# -- the JSON ----------------------------------------------------------------------------------


def test_failed_scenario_result_still_has_every_key() -> None:
    r = empty_result(bench_report.BY_NAME["llm-500"], jobs=1500, warmup=200, partitions=8)
    assert tuple(r) == RESULT_KEYS
    assert r["concurrency"] == 500
    assert r["latency_ms"]["count"] == 0
    assert r["error"] is None


def test_report_shape_and_round_trip(tmp_path: Path) -> None:
    created, done = _timings(50)
    results = [_result("aiokafka", 1000.0), _result("echo-1", 300.0)]
    results[1].update(summarize(created, done, started=1000.0, published=1000.01))
    add_ratios(results)
    report = build_report(
        started_at="2025-01-01T00:00:00+00:00",
        finished_at="2025-01-01T00:01:00+00:00",
        complete=True,
        machine=machine_info(),
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


ALL = ["faust", "aiokafka", "upstream", "echo-1", "echo-2", "mixed-1", "echo-c2000",
       "llm-25", "llm-500"]  # fmt: skip
JOBSTREAM = [n for n in ALL if n not in ("faust", "aiokafka", "upstream")]


def test_default_is_everything_baselines_first() -> None:
    assert _names(None) == ALL
    measured = ("baseline", "upstream", "jobstream")  # a scenario of its own kind runs alone
    assert _names("all") == _names(None) == [s.name for s in SCENARIOS if s.kind in measured]


def test_the_timed_scenarios_run_without_baselines() -> None:
    assert _names("timed") == ["timed-100k", "timed-burst", "timed-tier"]
    assert _names("timed-100k") == ["timed-100k"]


def test_baselines_are_added_for_the_ratios_unless_refused() -> None:
    assert _names("echo-2") == ["faust", "aiokafka", "echo-2"]
    assert _names("llm-500") == ["faust", "aiokafka", "upstream", "llm-500"]
    assert _names("echo-2", with_baseline=False) == ["echo-2"]
    assert _names("all", with_baseline=False) == JOBSTREAM
    # named explicitly, they run even with --no-baseline
    assert _names("baseline,echo-1", with_baseline=False) == ["faust", "aiokafka", "echo-1"]
    assert _names("baseline") == ["faust", "aiokafka"]
    assert _names("upstream") == ["upstream"]
    assert _names("faust") == ["faust"]


def test_aliases_numbers_case_spaces_and_order() -> None:
    assert _names("llm", with_baseline=False) == ["llm-25", "llm-500"]
    assert _names(" LLM-500 , echo-1 ,", with_baseline=False) == ["echo-1", "llm-500"]
    assert _names("1,3", with_baseline=False) == ["echo-1", "llm-25"]
    assert _names("5") == ["faust", "aiokafka"]
    assert _names("echo,echo-1", with_baseline=False) == ["echo-1", "echo-2"]
    assert _names(",", with_baseline=False) == JOBSTREAM


@pytest.mark.parametrize("text", ["echo-3", "llm-100", "6", "echo;llm"])
def test_unknown_scenarios_are_refused_with_the_choices(text: str) -> None:
    with pytest.raises(ValueError, match=r"unknown scenario .* choose from faust, aiokafka, up"):
        parse_scenarios(text)


def test_notes_say_what_limits_each_number() -> None:
    upstream = _result("upstream", 800.0)
    upstream["cpu"] = {"consumer_cpu_ms_per_job": 0.13}
    llm = _result("llm-500", 400.0)
    llm["cpu"] = {"consumer_cpu_ms_per_job": 1.734, "machine_busy": 0.998}
    llm["upstream"] = {"max_in_flight": 500}
    base = _result("aiokafka", 2000.0)
    base["publisher_bound"] = True
    failed = _result("echo-1", None, error="TimeoutError: timed out\nmore")
    mixed = _result("mixed-1", 200.0)
    llm25 = _result("llm-25", 45.0)
    llm25["profile"] = {"error": "py-spy exited with 1: Permission denied"}
    llm["profile"] = {"file": "x.txt", "samples": 10, "self": [], "inclusive": []}
    results = [base, upstream, failed, mixed, llm25, llm]
    add_ratios(results)
    notes = bench_report.render_notes(results).splitlines()
    assert notes == [
        "- aiokafka: kept up with the publisher (rate is the publisher's)",
        "- upstream: CPU and RSS are the fake server's; 80% of its ceiling (1000/s by concurrency)",
        "- echo-1: error: TimeoutError: timed out",
        "- mixed-1: published at 150/s, the sleep jobs hold 15 of the 25 slots: an echo job that"
        " waits seconds waits behind a sleep, not for a slot",
        "- llm-25: 90% of its ceiling (50/s by concurrency);"
        " no profile: py-spy exited with 1: Permission denied",
        "- llm-500: machine 100% busy; 50% of its ceiling (800/s the fake server sustained"
        " alone, below 1000/s by concurrency); upstream max in flight 500;"
        " profiled (py-spy pauses it for each sample)",
    ]


def test_notes_report_what_the_second_replica_adds() -> None:
    results = [_result("echo-1", 800.0), _result("echo-2", 1240.0)]
    add_ratios(results)
    last = bench_report.render_notes(results).splitlines()[-1]
    assert last.startswith("- echo-2 / echo-1 = 1.55 (")


# -- profiles ----------------------------------------------------------------------------------

COLLAPSED = """\
<module> (cli.py:9);run (loop.py:60);_run_once (loop.py:1900);select (selectors.py:468) 50
<module> (cli.py:9);run (loop.py:60);_run_once (loop.py:1936);handle (pipeline.py:120);loads (json.py:346) 30
<module> (cli.py:9);run (loop.py:60);_run_once (loop.py:1936);handle (pipeline.py:121) 15
<module> (cli.py:9);run (loop.py:60);_run_once (loop.py:1936);walk (decode.py:10);walk (decode.py:12) 5
not a stack line
truncated;line 1x
"""  # noqa: E501


def test_collapsed_stacks_are_parsed_with_line_numbers_dropped() -> None:
    stacks = bench_report.parse_collapsed(COLLAPSED)
    assert sum(stacks.values()) == 100
    assert stacks[("<module> (cli.py)", "run (loop.py)", "_run_once (loop.py)",
                   "select (selectors.py)")] == 50  # fmt: skip
    # the same function at two lines is one frame
    trunk = ("<module> (cli.py)", "run (loop.py)", "_run_once (loop.py)")
    assert stacks[(*trunk, "handle (pipeline.py)")] == 15
    assert bench_report.parse_collapsed("") == {}
    # two lines that differ only in line numbers add up
    merged = bench_report.parse_collapsed("a (m.py:1);b (m.py:2) 3\na (m.py:1);b (m.py:7) 4\n")
    assert merged == {("a (m.py)", "b (m.py)"): 7}


def test_frames_without_a_location_are_kept_as_they_are() -> None:
    stacks = bench_report.parse_collapsed("process 12;thread (0x7f);<native> 2\n")
    assert stacks == {("process 12", "thread (0x7f)", "<native>"): 2}


def test_top_frames_by_self_and_inclusive_time() -> None:
    top = bench_report.top_frames(bench_report.parse_collapsed(COLLAPSED), n=3)
    assert top["samples"] == 100
    assert top["self"] == [
        {"frame": "select (selectors.py)", "samples": 50, "pct": 50.0},
        {"frame": "loads (json.py)", "samples": 30, "pct": 30.0},
        {"frame": "handle (pipeline.py)", "samples": 15, "pct": 15.0},
    ]
    inclusive = {f["frame"]: f["pct"] for f in top["inclusive"]}
    # every sample is under <module>, run and _run_once: ties are ordered by name
    assert list(inclusive) == ["<module> (cli.py)", "_run_once (loop.py)", "run (loop.py)"]
    assert set(inclusive.values()) == {100.0}
    full = {f["frame"]: f for f in bench_report.top_frames(
        bench_report.parse_collapsed(COLLAPSED), n=50)["inclusive"]}  # fmt: skip
    assert full["handle (pipeline.py)"]["pct"] == 45.0  # its own 15 and loads' 30
    assert full["walk (decode.py)"]["samples"] == 5  # recursive: counted once per sample


def test_the_event_loop_trunk_is_ranked_by_self_time_only() -> None:
    stacks = bench_report.parse_collapsed(
        "<module> (<frozen runpy>:88);run_forever (asyncio/base_events.py:608);"
        "_run_once (asyncio/base_events.py:1922);_run (asyncio/events.py:84);"
        "handle (agents/pipeline.py:120) 6\n"
        "<module> (<frozen runpy>:88);run_forever (asyncio/base_events.py:608);"
        "_run_once (asyncio/base_events.py:1922) 4\n"
    )
    top = bench_report.top_frames(stacks)
    assert top["inclusive"] == [{"frame": "handle (agents/pipeline.py)", "samples": 6, "pct": 60.0}]
    assert top["self"][1] == {"frame": "_run_once (asyncio/base_events.py)", "samples": 4,
                              "pct": 40.0}  # fmt: skip


def test_profile_rendering_names_both_rankings_or_the_reason() -> None:
    top = bench_report.top_frames(bench_report.parse_collapsed(COLLAPSED), n=2)
    text = bench_report.render_profile("echo-1", {"file": "p.txt", **top})
    assert text.splitlines()[0] == "profile of echo-1 (100 samples, p.txt):"
    assert "  by self time:" in text
    assert "     50.0%  select (selectors.py)" in text
    assert "  by inclusive time:" in text
    assert bench_report.render_profile("echo-1", {"error": "no ptrace"}) == (
        "profile of echo-1: not recorded: no ptrace"
    )
