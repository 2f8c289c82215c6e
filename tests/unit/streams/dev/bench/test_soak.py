"""The soak scenario's pure parts: the mix it publishes, what it reads from a replica's metrics,
the windows it cuts the run into, the memory verdict and the table.

The soak itself runs for half an hour against Kafka and PostgreSQL, so it is not a test; a
mix that quietly stopped failing, a window that took the wrong samples or a verdict off by one
sign would go unnoticed in its report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

import pytest
from prometheus_client import generate_latest

from jobstream.agents.handlers.basic import SleepPayload
from jobstream.streams.dev.bench import run as bench
from jobstream.streams.dev.bench.report import BY_NAME, Done, parse_scenarios
from jobstream.streams.dev.bench.soak import (
    EXPECTED_STATUS,
    KINDS,
    MIX,
    RETRY_TIERS_S,
    Completions,
    SoakLoad,
    SoakOptions,
    cpu_cores,
    job_at,
    kind_at,
    memory_verdict,
    phase_figures,
    render_soak_table,
    replica_figures,
    soak_figures,
    status_check,
    verdict_line,
)
from jobstream.streams.metrics import Metrics
from jobstream.streams.settings import Settings

# -- the mix -----------------------------------------------------------------------------------


@pytest.mark.parametrize("first", [0, 1, 37, 1234])
def test_every_hundred_jobs_have_each_kind_s_exact_share(first: int) -> None:
    assert Counter(kind_at(i) for i in range(first, first + 100)) == dict(MIX)


def test_the_rare_kinds_are_spread_not_published_back_to_back() -> None:
    kinds = [kind_at(i) for i in range(1000)]
    for rare in ("retried", "fatal", "exhausted"):
        at = [i for i, k in enumerate(kinds) if k == rare]
        assert min(b - a for a, b in pairwise(at)) >= 10, rare


def test_each_kind_is_a_job_the_built_in_app_runs_as_the_kind_says() -> None:
    max_attempts = Settings.model_fields["max_attempts"].default
    seen: dict[str, list[tuple[str, dict[str, Any]]]] = {kind: [] for kind in KINDS}
    for i in range(300):
        seen[kind_at(i)].append(job_at(i))
    assert {t for t, _ in seen["echo"]} == {"echo"}
    assert {t for t, _ in seen["llm.chat"]} == {"llm.chat"}
    assert all(p["messages"][0]["role"] == "user" for _, p in seen["llm.chat"])
    for kind in ("sleep", "retried", "fatal", "exhausted"):
        assert {t for t, _ in seen[kind]} == {"sleep"}, kind
    sleeps = [SleepPayload.model_validate(p) for kind in seen if kind != "echo"
              for t, p in seen[kind] if t == "sleep"]  # fmt: skip
    assert sleeps  # every sleep payload is one the handler accepts
    plain = [SleepPayload.model_validate(p) for _, p in seen["sleep"]]
    assert all(0.5 <= p.seconds <= 2.0 and not p.fatal and not p.fail_attempts for p in plain)
    assert len({p.seconds for p in plain}) > 5  # short sleeps of different lengths
    retried = [SleepPayload.model_validate(p) for _, p in seen["retried"]]
    # fails once or twice, then succeeds well before its attempts run out
    assert {p.fail_attempts for p in retried} == {1, 2}
    assert all(p.fail_attempts < max_attempts and not p.fatal for p in retried)
    assert all(SleepPayload.model_validate(p).fatal for _, p in seen["fatal"])
    exhausted = [SleepPayload.model_validate(p) for _, p in seen["exhausted"]]
    assert all(p.fail_attempts >= max_attempts and not p.fatal for p in exhausted)
    assert EXPECTED_STATUS == {
        "echo": "succeeded", "sleep": "succeeded", "llm.chat": "succeeded",
        "retried": "succeeded", "fatal": "dead_lettered", "exhausted": "dead_lettered",
    }  # fmt: skip


def test_retries_are_done_within_seconds() -> None:
    # two failures wait out both tiers; an exhausted job the last one again for each retry after
    assert sum(RETRY_TIERS_S) <= 10
    assert max(RETRY_TIERS_S) <= 5


def test_the_load_publishes_the_mix_at_the_rate() -> None:
    spec = BY_NAME["soak"]
    load = SoakLoad.of(spec, 42.0)
    assert load.publish_rate == 42.0
    assert load.upstream_latency_ms == 500.0  # the fake OpenRouter's latency
    assert (load.name, load.replicas, load.concurrency) == ("soak", 2, spec.concurrency)
    assert [load.job_at(i) for i in range(50)] == [job_at(i) for i in range(50)]
    # the scenario itself has neither: no ceiling, no upstream scenario added to the run
    assert (spec.publish_rate, spec.upstream_latency_ms) == (None, None)


# -- options and scenarios ---------------------------------------------------------------------


def test_soak_is_not_in_all_and_runs_alone() -> None:
    assert "soak" not in [s.name for s in parse_scenarios("all")]
    assert [s.name for s in parse_scenarios("soak")] == ["soak"]  # no baselines added
    assert [s.name for s in parse_scenarios("soak,echo-1", with_baseline=False)] == [
        "echo-1",
        "soak",
    ]


@pytest.mark.parametrize(
    ("minutes", "sample_s", "jobs", "warmup_s", "window_s"),
    [
        (30, 10, 108_000, 180, 60),  # the half hour: 3 minutes of warm-up
        (4, 10, 14_400, 24, 24),
        (1, 10, 3_600, 6, 10),  # a window holds at least one sample
        (0.5, 45, 1_800, 3, 45),
    ],
)
def test_options_size_the_run_and_its_windows(
    minutes: float, sample_s: float, jobs: int, warmup_s: float, window_s: float
) -> None:
    options = SoakOptions(minutes=minutes, rate=60, sample_s=sample_s)
    assert options.duration_s == minutes * 60
    assert options.jobs == jobs
    assert options.warmup_s == pytest.approx(warmup_s)
    assert options.window_s == pytest.approx(window_s)


def test_command_line_options() -> None:
    args = bench.build_parser().parse_args(["--scenarios", "soak", "--soak-minutes", "4"])
    assert SoakOptions.from_args(args) == SoakOptions(minutes=4, rate=60, sample_s=10)
    args = bench.build_parser().parse_args(["--soak-rate", "7.5", "--soak-sample-s", "2"])
    assert SoakOptions.from_args(args) == SoakOptions(minutes=30, rate=7.5, sample_s=2)


@pytest.mark.parametrize("argv", [["--soak-minutes", "0"], ["--soak-rate", "-1"],
                                  ["--soak-sample-s", "x"]])  # fmt: skip
def test_command_line_refuses_what_cannot_run(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err


# -- what a replica says -----------------------------------------------------------------------


def test_replica_figures_fold_each_gauge_over_its_partitions() -> None:
    m = Metrics()
    m.event_loop_tasks.set(312)
    m.in_flight.set(9)
    m.running_jobs.set(7)
    m.waiting_jobs.set(2)
    m.consumer_lag.labels(group="g", topic="t", partition="0").set(3)
    m.consumer_lag.labels(group="g", topic="t", partition="1").set(4)
    m.consumer_lag_seconds.labels(group="g", topic="t", partition="0").set(1.5)
    m.consumer_lag_seconds.labels(group="g", topic="t", partition="1").set(0.25)
    m.retry_waiting.labels(group="g", tier="2s", partition="0").set(5)
    m.for_type("echo").completed("succeeded").inc(5)
    m.for_type("sleep").completed("succeeded").inc(2)
    m.for_type("sleep").completed("retried").inc(3)
    figures = replica_figures(generate_latest(m.registry).decode())
    assert figures == {
        "tasks": 312, "in_flight": 9, "running": 7, "waiting": 2,
        "lag_events": 7,  # summed over the partitions it owns
        "lag_s": 1.5,  # the oldest of them
        "retry_waiting": 5,
        "completed_retried": 3, "completed_succeeded": 7,  # over the types, _created left out
    }  # fmt: skip


def test_replica_figures_before_any_lag_was_measured() -> None:
    figures = replica_figures(generate_latest(Metrics().registry).decode())
    assert figures["lag_events"] == figures["lag_s"] == figures["retry_waiting"] == 0
    assert not any(k.startswith("completed_") for k in figures)


# -- windows -----------------------------------------------------------------------------------

T0 = 1_700_000_000.0


def _done(at: float, status: str = "succeeded") -> Done:
    return Done(at=T0 + at, status=status)


def test_completions_are_cut_by_outcome_time_from_after_t0_to_t1() -> None:
    created = {"a": T0, "b": T0 + 1, "c": T0 + 2, "lost": T0 + 3}
    done = {"c": _done(2.5), "a": _done(1.0), "b": _done(2.0), "other": _done(1.5)}
    kinds = {"a": "echo", "b": "sleep", "c": "echo", "lost": "echo"}
    c = Completions(created, done, kinds)
    assert [r.kind for r in c.rows] == ["echo", "sleep", "echo"]  # in outcome order, ours only
    assert [r.latency_ms for r in c.rows] == [1000.0, 1000.0, 500.0]
    assert [r.latency_ms for r in c.between(T0 + 1.0, T0 + 2.5)] == [1000.0, 500.0]
    assert c.between(T0 + 3, T0 + 9) == []
    assert (c.done_by(T0 + 0.9), c.done_by(T0 + 2.0), c.done_by(T0 + 9)) == (0, 2, 3)


def _sample(at: float, **replicas: Mapping[str, float | None]) -> dict[str, Any]:
    return {"at": T0 + at, "replicas": replicas}


def test_cpu_cores_from_the_first_to_the_last_reading() -> None:
    samples = [_sample(0, w={"cpu_s": 10.0}), _sample(10, w={"cpu_s": None}),
               _sample(20, w={"cpu_s": 15.0})]  # fmt: skip
    assert cpu_cores(samples, "w") == 0.25
    assert cpu_cores(samples[:2], "w") is None  # one reading measures nothing
    assert cpu_cores(samples, "other") is None


def test_a_phase_takes_the_samples_and_the_outcomes_inside_it() -> None:
    samples = [
        _sample(5, w1={"rss_mb": 50.0, "tasks": 900, "cpu_s": 1.0}),  # warm-up: left out
        _sample(10, w1={"rss_mb": 100.0, "tasks": 300, "lag_events": 4, "lag_s": 0.5,
                        "in_flight": 3, "cpu_s": 3.0}),
        _sample(20, w1={"rss_mb": 110.0, "tasks": 310, "lag_events": 0, "lag_s": 2.0,
                        "in_flight": 5, "cpu_s": 6.0}, w2={"rss_mb": 90.0}),
        _sample(31, w1={"rss_mb": 999.0}),  # after it
    ]  # fmt: skip
    created = {f"j{i}": T0 + 8 + i * 0.1 for i in range(100)}
    done = {j: _done(at - T0 + (2.0 if i == 99 else 0.1)) for i, (j, at) in
            enumerate(created.items())}  # fmt: skip
    kinds = {j: "retried" if i == 99 else "echo" for i, j in enumerate(created)}
    phase = phase_figures(samples, Completions(created, done, kinds), T0 + 10, T0 + 30)
    w1 = phase["replicas"]["w1"]
    assert phase["samples"] == 2
    assert (w1["rss_mb"], w1["tasks"], w1["tasks_max"]) == (105.0, 305.0, 310)
    assert (w1["lag_events"], w1["lag_events_max"], w1["lag_s_max"]) == (2.0, 4, 2.0)
    assert w1["in_flight"] == 4.0
    assert w1["cpu_cores"] == 0.33  # from the sample at 5 s, which opens the window's first 5 s
    assert phase["replicas"]["w2"]["rss_mb"] == 90.0
    assert phase["replicas"]["w2"]["cpu_cores"] is None
    # outcomes from after 10 s to 30 s: j19 (at 8 + 1.9 + 0.1 = 10.0) is not in, j20 is
    assert phase["jobs_done"] == 80
    assert phase["jobs_per_s"] == 4.0
    assert phase["statuses"] == {"succeeded": 80}
    assert phase["latency_ms"]["echo"]["p99"] == 100.0
    assert phase["latency_ms"]["retried"]["count"] == 1
    assert phase["latency_ms"]["retried"]["p99"] == 2000.0
    assert phase["latency_ms"]["fatal"]["count"] == 0
    assert phase["latency_ms"]["all"]["count"] == 80


# -- the verdict -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("end", "within"),
    [(100.0, True), (110.0, True), (90.0, True), (110.2, False), (88.0, False)],
)
def test_memory_verdict_is_within_ten_percent_either_way(end: float, within: bool) -> None:
    verdict = memory_verdict({"w1": 100.0, "w2": 80.0}, {"w1": end, "w2": 80.0})
    assert verdict["within"] is within
    assert verdict["tolerance_pct"] == 10.0
    assert verdict["replicas"]["w1"] == {
        "start_mb": 100.0,
        "end_mb": end,
        "change_pct": round(end - 100.0, 1),
    }


def test_memory_verdict_without_a_figure_is_unknown_not_yes() -> None:
    verdict = memory_verdict({"w1": 100.0, "w2": 80.0}, {"w1": 100.0})
    assert verdict["within"] is None
    assert verdict["replicas"]["w2"]["change_pct"] is None
    assert memory_verdict({}, {})["within"] is None
    assert verdict_line(verdict).startswith("memory within ±10 % after warm-up: unknown (")


def test_verdict_line_names_start_end_and_change_of_each_replica() -> None:
    line = verdict_line(memory_verdict({"w1": 100.0, "w2": 80.0}, {"w1": 104.26, "w2": 72.0}))
    assert line == (
        "memory within ±10 % after warm-up: yes (w1: start 100.0 MB, end 104.3 MB, change"
        " +4.3 %; w2: start 80.0 MB, end 72.0 MB, change -10.0 %)"
    )


def test_status_check_counts_missing_and_wrong_outcomes() -> None:
    ids = ["a", "b", "c", "d"]
    kinds = {"a": "echo", "b": "fatal", "c": "exhausted", "d": "retried"}
    done = {"a": _done(1), "b": _done(1, "dead_lettered"), "c": _done(1, "succeeded")}
    assert status_check(ids, kinds, done) == {"missing": 1, "unexpected": 1}


# -- the whole figures and the table -----------------------------------------------------------


def _soak_result(rss_end: float) -> dict[str, Any]:
    """A 4-minute run at 10 jobs/s: one echo job a 0.1 s, each done 50 ms later."""
    options = SoakOptions(minutes=4, rate=10, sample_s=10)
    samples = [
        _sample(t, **{"worker-1": {"rss_mb": 100.0 if t < 120 else rss_end, "tasks": 300,
                                   "in_flight": 1, "lag_events": 0, "lag_s": 0.0,
                                   "cpu_s": t / 10, "completed_retried": 7}})
        for t in range(10, 250, 10)
    ]  # fmt: skip
    created = {f"p-{i:07d}": T0 + i / 10 for i in range(2400)}
    done = {j: Done(at=c + 0.05, status="succeeded") for j, c in created.items()}
    kinds = dict.fromkeys(created, "echo")
    soak = soak_figures(samples, created, done, kinds, started=T0, ended=T0 + 240,
                        options=options)  # fmt: skip
    soak["options"] = {"minutes": 4.0, "rate": 10.0, "sample_s": 10.0}
    soak["jobs"] = {"published": 2400, "missing": 0, "unexpected": 0, "retries": 7}
    return {
        "name": "soak", "kind": "soak", "replicas": 1, "completed": 2400, "soak": soak,
        "rows": {"succeeded": {"jobs": 2376, "retried": 72},
                 "dead_lettered": {"jobs": 24, "retried": 12}},
    }  # fmt: skip


def test_soak_figures_windows_and_series() -> None:
    soak = _soak_result(rss_end=105.0)["soak"]
    assert (soak["ran_s"], soak["warmup_s"], soak["window_s"]) == (240.0, 24.0, 24.0)
    start, end = soak["start"], soak["end"]
    assert (start["from_s"], start["to_s"], end["from_s"], end["to_s"]) == (24, 48, 216, 240)
    assert (start["samples"], end["samples"]) == (2, 3)  # at 30, 40 s; at 220, 230, 240 s
    assert start["jobs_per_s"] == end["jobs_per_s"] == 10.0
    assert end["replicas"]["worker-1"]["cpu_cores"] == 0.1
    assert soak["memory"]["within"] is True
    assert soak["memory"]["replicas"]["worker-1"]["change_pct"] == 5.0
    first, last = soak["samples"][0], soak["samples"][-1]
    assert (first["t"], first["published"], first["done"], first["window_jobs"]) == (
        10.0, 101, 100, 100,
    )  # fmt: skip
    assert first["p99_ms"] == {"all": 50.0, "echo": 50.0}  # kinds with no job are left out
    assert (last["t"], last["published"], last["done"]) == (240.0, 2400, 2400)
    assert last["replicas"]["worker-1"]["rss_mb"] == 105.0


def test_soak_table_puts_start_and_end_side_by_side_with_the_verdict() -> None:
    text = render_soak_table([{"name": "echo-1", "kind": "jobstream"}, _soak_result(115.0)])
    assert text is not None
    lines = text.splitlines()
    assert lines[0] == (
        "soak: 1 replicas, 10 jobs/s for 4.0 min (asked 4), warm-up 24 s, a sample every 10 s"
    )
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:4]]
             for line in lines if line.startswith("|")}  # fmt: skip
    assert cells["soak"] == ["start 24-48 s", "end 216-240 s"]
    assert cells["RSS MB worker-1"] == ["100.0", "115.0"]
    assert cells["event-loop tasks worker-1"] == ["300", "300"]
    assert cells["outcomes/s"] == ["10.0", "10.0"]
    assert cells["p99 ms echo (jobs)"] == ["50 (240)", "50 (240)"]
    assert cells["p99 ms fatal (jobs)"] == ["- (0)", "- (0)"]
    assert len({len(line) for line in lines if line.startswith("|")}) == 1
    assert "rows: succeeded 2,376 (after a retry 72), dead_lettered 24" in text
    assert "0 missing, 0 unexpected" in text
    assert lines[-1].startswith("memory within ±10 % after warm-up: no (worker-1: start 100.0")
    assert "change +15.0 %" in lines[-1]


def test_soak_table_of_a_run_without_figures_and_of_none() -> None:
    failed = {"name": "soak", "kind": "soak", "soak": {"samples": []}, "error": "interrupted"}
    assert render_soak_table([failed]) == "soak: no figures (interrupted)"
    assert render_soak_table([{"name": "echo-1", "kind": "jobstream"}]) is None
