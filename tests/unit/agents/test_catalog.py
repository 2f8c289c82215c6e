"""The default registry and the policy file that overrides it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobstream.agents.catalog import default_registry
from jobstream.models.errors import (
    ConfigurationError,
)
from jobstream.streams.settings import Settings


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
