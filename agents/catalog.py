"""The job types a worker runs, with per-type policy overrides from a file.

The policy file (``JOBSTREAM_POLICY_FILE``, JSON) maps a job type to overrides::

    {"llm.chat": {"max_attempts": 8, "timeout_s": 90, "fatal_errors": ["FatalError"],
                  "rate_limit_key": "openrouter", "retry_unexpected": false, "jitter": 0.2}}
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from jobstream.agents.handlers import llm, webhook
from jobstream.agents.handlers.basic import echo_type, sleep_type
from jobstream.agents.policy import RetryPolicy
from jobstream.agents.registry import JobType, Registry
from jobstream.models.errors import ConfigurationError
from jobstream.streams.settings import Settings

_POLICY_KEYS = {"max_attempts", "fatal_errors", "retry_unexpected", "jitter"}
_TYPE_KEYS = {"timeout_s", "rate_limit_key"}


def default_registry(settings: Settings) -> Registry:
    registry = Registry()
    overrides = load_policy_file(settings.policy_file) if settings.policy_file else {}
    base = RetryPolicy(max_attempts=settings.max_attempts)
    for job_type in (echo_type(), sleep_type(), llm.job_type(settings), webhook.job_type(settings)):
        if job_type.policy == RetryPolicy():
            job_type = dataclasses.replace(job_type, policy=base)
        registry.register(apply_overrides(job_type, overrides.get(job_type.name, {})))
    unknown = set(overrides) - set(registry.names())
    if unknown:
        raise ConfigurationError(f"policy file names unknown job types: {sorted(unknown)}")
    return registry


def load_policy_file(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"cannot read policy file {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigurationError(f"policy file {path} must map job types to objects")
    return data


def apply_overrides(job_type: JobType, override: dict[str, Any]) -> JobType:
    unknown = set(override) - _POLICY_KEYS - _TYPE_KEYS
    if unknown:
        raise ConfigurationError(f"{job_type.name}: unknown policy keys {sorted(unknown)}")
    policy_changes = {k: v for k, v in override.items() if k in _POLICY_KEYS}
    if "fatal_errors" in policy_changes:
        policy_changes["fatal_errors"] = frozenset(policy_changes["fatal_errors"])
    if policy_changes.get("max_attempts", 1) < 1:
        raise ConfigurationError(f"{job_type.name}: max_attempts must be >= 1")
    type_changes = {k: v for k, v in override.items() if k in _TYPE_KEYS}
    return dataclasses.replace(
        job_type, policy=dataclasses.replace(job_type.policy, **policy_changes), **type_changes
    )
