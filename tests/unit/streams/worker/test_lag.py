"""Lag arithmetic and what the gauges show, without a broker."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from jobstream.streams.metrics import Metrics
from jobstream.streams.topics import topic_names
from jobstream.streams.worker.lag import LagMonitor, PartitionLag, partition_lag

TP = ("jobs", 0)


def test_caught_up_partition_has_no_oldest_event() -> None:
    lag = partition_lag(TP, committed=10, log_start=0, log_end=10, in_flight={})
    assert (lag.events, lag.oldest_offset, lag.age_s(5_000)) == (0, None, 0.0)


def test_backlog_without_running_events_points_at_the_committed_offset() -> None:
    lag = partition_lag(TP, committed=7, log_start=0, log_end=10, in_flight={})
    assert (lag.events, lag.oldest_offset, lag.oldest_timestamp_ms) == (3, 7, None)


def test_the_oldest_running_event_is_the_oldest_unfinished_one() -> None:
    running = {9: 3_000, 8: 2_000}
    lag = partition_lag(TP, committed=8, log_start=0, log_end=12, in_flight=running)
    assert (lag.events, lag.oldest_offset, lag.oldest_timestamp_ms) == (4, 8, 2_000)
    assert lag.age_s(5_000) == 3.0


def test_no_commit_yet_counts_from_the_log_start() -> None:
    lag = partition_lag(TP, committed=None, log_start=4, log_end=10, in_flight={})
    assert (lag.events, lag.oldest_offset) == (6, 4)
    # a committed offset that retention has passed also counts from the log start
    lag = partition_lag(TP, committed=2, log_start=4, log_end=10, in_flight={})
    assert (lag.events, lag.oldest_offset) == (6, 4)


def test_running_events_outside_the_unfinished_range_are_ignored() -> None:
    # offset 3 is below the commit (a stale entry); offset 20 is past the log end
    lag = partition_lag(TP, committed=5, log_start=0, log_end=8, in_flight={3: 1, 20: 2})
    assert (lag.oldest_offset, lag.oldest_timestamp_ms) == (5, None)


def test_an_unknown_timestamp_reports_no_age() -> None:
    assert PartitionLag("jobs", 0, 3, 5, None).age_s(10_000) == 0.0
    assert PartitionLag("jobs", 0, 3, 5, 20_000).age_s(10_000) == 0.0  # clock skew


def gauges(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name.startswith(("jobstream_consumer_lag", "jobstream_retry_")):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_gauges_follow_the_assignment() -> None:
    registry = CollectorRegistry()
    names = topic_names("jobs", (10.0, 60.0))
    monitor = LagMonitor(
        bootstrap="unused:9092",
        group="g",
        topics=names,
        metrics=Metrics(registry),
        assignment=lambda: [],
        in_flight={},
        clock=lambda: 10.0,
    )
    monitor._export(
        [
            PartitionLag("jobs", 0, 5, 3, 4_000),
            PartitionLag("jobs", 1, 0, None),
            PartitionLag("jobs.retry.1m", 2, 1, 7, 7_500),
        ]
    )
    got = gauges(registry)
    main0 = (("group", "g"), ("partition", "0"), ("topic", "jobs"))
    tier2 = (("group", "g"), ("partition", "2"), ("tier", "1m"))
    assert got[("jobstream_consumer_lag_events", main0)] == 5
    assert got[("jobstream_consumer_lag_seconds", main0)] == 6.0
    assert got[("jobstream_retry_waiting_events", tier2)] == 1
    assert got[("jobstream_retry_oldest_seconds", tier2)] == 2.5
    assert len(got) == 6

    # partition 0 and the tier partition moved to another replica: their series go
    monitor._export([PartitionLag("jobs", 1, 2, 9, 9_000)])
    got = gauges(registry)
    main1 = (("group", "g"), ("partition", "1"), ("topic", "jobs"))
    assert got == {
        ("jobstream_consumer_lag_events", main1): 2,
        ("jobstream_consumer_lag_seconds", main1): 1.0,
    }
