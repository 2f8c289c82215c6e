"""Retry policy as data, and the one backoff function."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from jobstream.models.errors import JobError

ExceptionTypes = tuple[type[BaseException], ...]


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

    ``max_attempts`` counts executions (1 = never retried). An error is fatal (dead-lettered
    at once) when it is an instance of a class in ``fatal`` or when its class or one of its
    bases is named in ``fatal_errors`` (the policy file's names); it is retried when it is an
    instance of ``retry_on``, a :class:`~jobstream.models.errors.JobError` that says so, or any
    other exception while ``retry_unexpected`` is true (a bug in a handler usually will not pass
    by itself). ``jitter`` spreads the tier delay so a burst of failures does not come back as
    a burst.
    """

    max_attempts: int = 5
    fatal_errors: frozenset[str] = field(default_factory=frozenset)
    retry_unexpected: bool = True
    jitter: float = 0.1
    fatal: ExceptionTypes = ()
    retry_on: ExceptionTypes = ()

    def retryable(self, exc: BaseException) -> bool:
        """True when ``exc`` may pass on a later attempt."""
        if isinstance(exc, self.fatal):
            return False
        if self.fatal_errors and any(c.__name__ in self.fatal_errors for c in type(exc).__mro__):
            return False
        if isinstance(exc, self.retry_on):
            return True
        if isinstance(exc, JobError):
            return exc.retryable
        return self.retry_unexpected
