"""Retry policy as data, and the one backoff function."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def compute_backoff(
    attempt: int,
    *,
    base_s: float,
    factor: float = 2.0,
    max_s: float = 3600.0,
    jitter: float = 0.1,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff for the ``attempt``-th failure, capped, with +/- ``jitter`` spread."""
    raw = min(max_s, base_s * factor ** max(0, attempt - 1))
    spread = raw * jitter
    return max(0.0, raw + (rng or random).uniform(-spread, spread))


@dataclass(frozen=True)
class RetryPolicy:
    """How one job type fails.

    ``max_attempts`` counts executions (1 = never retried). Errors whose class name is in
    ``fatal_errors`` skip retries; an exception outside the project's error tree is retried
    only when ``retry_unexpected`` is true (a bug in a handler usually will not pass by itself).
    ``jitter`` spreads the tier delay so a burst of failures does not come back as a burst.
    """

    max_attempts: int = 5
    fatal_errors: frozenset[str] = field(default_factory=frozenset)
    retry_unexpected: bool = True
    jitter: float = 0.1
