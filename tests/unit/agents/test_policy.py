"""Retry policy: the backoff, and how errors are classified by the error tree and the policy."""

from __future__ import annotations

import random

import pytest

from jobstream.agents.policy import RetryPolicy, compute_backoff
from jobstream.models.errors import (
    FatalError,
    JobTimeoutError,
    RateLimitedError,
    RetryableError,
)


def test_backoff_grows_caps_and_jitters_within_bounds() -> None:
    rng = random.Random(7)
    plain = [compute_backoff(a, base_s=1, jitter=0, max_s=30) for a in range(1, 8)]
    assert plain == [1, 2, 4, 8, 16, 30, 30]
    jittered = [compute_backoff(3, base_s=1, jitter=0.25, rng=rng) for _ in range(200)]
    assert all(3.0 <= d <= 5.0 for d in jittered)
    assert len({round(d, 6) for d in jittered}) > 100  # actually spread


@pytest.mark.parametrize(
    ("exc", "policy", "retryable"),
    [
        (RetryableError("5xx"), RetryPolicy(), True),
        (RateLimitedError("429", retry_after=3), RetryPolicy(), True),
        (JobTimeoutError("slow"), RetryPolicy(), True),
        (FatalError("401"), RetryPolicy(), False),
        (KeyError("bug"), RetryPolicy(), True),
        (KeyError("bug"), RetryPolicy(retry_unexpected=False), False),
        (RetryableError("x"), RetryPolicy(fatal_errors=frozenset({"RetryableError"})), False),
        # a subclass of a fatal class is fatal, by class or by name in the policy file
        (PermissionError("403"), RetryPolicy(fatal=(OSError,)), False),
        (PermissionError("403"), RetryPolicy(fatal_errors=frozenset({"OSError"})), False),
        (RateLimitedError("429"), RetryPolicy(fatal_errors=frozenset({"RetryableError"})), False),
        # retry_on retries what retry_unexpected would not; fatal wins over it
        (ConnectionResetError(), RetryPolicy(retry_unexpected=False, retry_on=(OSError,)), True),
        (ValueError("bad"), RetryPolicy(retry_unexpected=False, retry_on=(OSError,)), False),
        (PermissionError(), RetryPolicy(fatal=(PermissionError,), retry_on=(OSError,)), False),
        (FatalError("x"), RetryPolicy(retry_on=(FatalError,)), True),
    ],
)
def test_classify_follows_the_error_tree_and_the_policy(
    exc: BaseException, policy: RetryPolicy, retryable: bool
) -> None:
    assert policy.retryable(exc) is retryable
