"""Percentiles from the console's latency histograms stay within a bucket of the exact value."""

from __future__ import annotations

import bisect
import random

import pytest

from jobstream.streams.console.rollup import BOUNDS, BUCKETS, STEP, Minute, percentile


def histogram(values: list[float]) -> list[int]:
    hist = [0] * (BUCKETS + 1)
    for v in values:
        hist[bisect.bisect_right(BOUNDS, v)] += 1  # as PostgreSQL's width_bucket counts
    return hist


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@pytest.mark.parametrize("seed", range(5))
def test_percentiles_are_within_a_bucket(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(-2, 1.5) for _ in range(5000)]
    hist = histogram(values)
    for q in (0.5, 0.95, 0.99):
        got = percentile(hist, q)
        assert got is not None
        assert exact(values, q) / STEP <= got <= exact(values, q) * STEP


def test_empty_and_extreme_histograms() -> None:
    assert percentile([0] * (BUCKETS + 1), 0.5) is None
    tiny = histogram([0.0001] * 10)
    assert 0 <= (percentile(tiny, 0.5) or 0) <= BOUNDS[0]
    huge = histogram([10**6] * 3)  # beyond the last bound: reported as the top bucket
    assert (percentile(huge, 0.95) or 0) >= BOUNDS[-1]


def test_minutes_add_up() -> None:
    a, b = Minute(1, 2, 3, histogram([0.1])), Minute(4, 0, 1, histogram([0.1, 5.0]))
    a.add(b)
    assert (a.succeeded, a.dead_lettered, a.retried, sum(a.hist)) == (5, 2, 4, 3)
