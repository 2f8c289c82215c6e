"""The timed scenarios' arithmetic and table (streams/dev/bench/timed.py), without Kafka."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from jobstream.streams.dev.bench.report import SCENARIOS, empty_result, render_timed_table
from jobstream.streams.dev.bench.timed import busiest_second, due_offsets, timed_figures

T0 = datetime(2027, 1, 1, 9, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def test_due_offsets_are_seeded_within_the_spread_and_a_burst_is_one_instant() -> None:
    spread = due_offsets(1000, 60.0)
    assert spread == due_offsets(1000, 60.0)  # the same draw for every variant
    assert all(0 <= o <= 60 for o in spread)
    assert max(spread) - min(spread) > 55
    assert set(due_offsets(10, 0.0)) == {0.0}


def test_busiest_second_counts_publishes_per_wall_clock_second() -> None:
    assert busiest_second([at(0.1), at(0.9), at(1.2), at(3.0), at(3.5), at(3.99)]) == 3
    assert busiest_second([]) == 0


def test_figures_of_the_rows_variant() -> None:
    due = {f"j{i}": at(i) for i in range(4)}
    rows: list[dict[str, Any]] = [
        {"job_id": f"j{i}", "dispatched_at": at(i + 0.1), "started_at": at(i + 0.3),
         "finished_at": at(i + 0.4)}
        for i in range(4)
    ]  # fmt: skip
    got = timed_figures(rows, due, rows_variant=True)
    assert got["early"] == 0
    assert round(got["dispatch_lateness_ms"]["p50"]) == 100
    assert round(got["start_lateness_ms"]["p99"]) == 300
    assert got["due_span_s"] == 3.0
    assert got["last_succeeded_after_first_due_s"] == 3.4
    assert got["dispatch_rate_per_s"] == round(4 / 3.1, 1)
    assert got["dispatch_busiest_second"] == 1


def test_figures_of_the_tier_variant_count_an_early_start() -> None:
    due = {"a": at(10), "b": at(10)}
    rows = [
        {"job_id": "a", "dispatched_at": None, "started_at": at(9), "finished_at": at(9.1)},
        {"job_id": "b", "dispatched_at": None, "started_at": at(40), "finished_at": at(41)},
    ]
    got = timed_figures(rows, due, rows_variant=False)
    assert got["early"] == 1
    assert "dispatch_lateness_ms" not in got
    assert got["last_succeeded_after_first_due_s"] == 31.0


def test_the_timed_table_has_a_row_per_timed_scenario_and_says_failed() -> None:
    spec = {s.name: s for s in SCENARIOS}
    ok = empty_result(spec["timed-100k"], jobs=100_000, warmup=0, partitions=8)
    ok["completed"] = 100_000
    ok["rss_mb"] = {"max": 104.0}
    ok["timed"] = {
        "due_span_s": 60.0, "dispatch_lateness_ms": {"p50": 129.0, "p99": 346.0},
        "dispatch_rate_per_s": 1666.0, "dispatch_busiest_second": 2100,
        "start_lateness_ms": {"p50": 221.0, "p99": 522.0},
        "last_succeeded_after_first_due_s": 60.3,
    }  # fmt: skip
    failed = empty_result(spec["timed-tier"], jobs=100_000, warmup=0, partitions=8)
    failed["error"] = "TimeoutError"
    echo = empty_result(spec["echo-1"], jobs=10, warmup=0, partitions=8)
    table = render_timed_table([echo, ok, failed])
    assert table is not None
    lines = table.splitlines()
    assert len(lines) == 4  # header, rule, two scenarios: not echo-1
    assert "| timed-100k" in lines[2]
    assert "1,666" in lines[2]
    assert "2,100" in lines[2]
    assert "failed" in lines[3]
    assert render_timed_table([echo]) is None
