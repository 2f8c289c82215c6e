from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from agents.catalog import default_registry
from agents.pipeline import classify
from agents.policy import RetryPolicy, compute_backoff
from models.errors import (
    ConfigurationError,
    FatalError,
    JobTimeoutError,
    RateLimitedError,
    RetryableError,
)
from streams.settings import Settings


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
    ],
)
def test_classify_follows_the_error_tree_and_the_policy(
    exc: BaseException, policy: RetryPolicy, retryable: bool
) -> None:
    assert classify(exc, policy) is retryable


def test_the_default_registry_has_the_four_job_types() -> None:
    registry = default_registry(Settings(max_attempts=7))
    assert registry.names() == ["echo", "http.webhook", "llm.chat", "sleep"]
    assert registry.get("echo").policy.max_attempts == 7  # type: ignore[union-attr]
    assert registry.get("llm.chat").rate_limit_key == "openrouter"  # type: ignore[union-attr]


def test_policy_file_overrides_per_type(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(
        json.dumps({"sleep": {"max_attempts": 2, "timeout_s": 1.5, "fatal_errors": ["KeyError"]}})
    )
    sleep = default_registry(Settings(policy_file=path)).get("sleep")
    assert sleep is not None
    assert (sleep.policy.max_attempts, sleep.timeout_s) == (2, 1.5)
    assert sleep.policy.fatal_errors == frozenset({"KeyError"})


@pytest.mark.parametrize(
    "content",
    ['{"nope": {}}', '{"sleep": {"max_attempts": 0}}', '{"sleep": {"colour": 1}}', "not json"],
)
def test_a_bad_policy_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError):
        default_registry(Settings(policy_file=path))
