"""Which app a command runs (``--app`` / ``JOBSTREAM_APP``, else the built-in one) and the
policy file's per-type overrides.

The policy file (``JOBSTREAM_POLICY_FILE``, JSON) maps a job type to overrides::

    {"llm.chat": {"max_attempts": 8, "timeout_s": 90, "fatal_errors": ["FatalError"],
                  "rate_limit_key": "openrouter", "retry_unexpected": false, "jitter": 0.2}}

``fatal_errors`` names exception classes; an error whose class or one of its bases has such a
name is fatal.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobstream.agents.registry import JobType, Registry
from jobstream.models.errors import ConfigurationError

if TYPE_CHECKING:
    from jobstream.agents.app import JobApp
    from jobstream.streams.settings import Settings

_POLICY_KEYS = {"max_attempts", "fatal_errors", "retry_unexpected", "jitter"}
_TYPE_KEYS = {"timeout_s", "rate_limit_key"}


class AppLoadError(ConfigurationError):
    """Raised when ``--app`` / ``JOBSTREAM_APP`` does not name a :class:`JobApp`."""


def load_app(spec: str) -> JobApp[Any]:
    """The ``JobApp`` that ``module:attribute`` names (``module`` alone: its ``app``).

    The current directory is importable, as with ``celery -A`` and uvicorn.
    """
    from jobstream.agents.app import JobApp

    module_name, _, attribute = spec.strip().partition(":")
    attribute = attribute or "app"
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise AppLoadError(f"--app {spec!r}: expected module.path:attribute")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppLoadError(f"--app {spec!r}: no module named {exc.name!r}") from None
        raise AppLoadError(f"--app {spec!r}: importing {module_name} failed: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the team's module failed at import: one line, its cause
        raise AppLoadError(
            f"--app {spec!r}: importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from None
    app = module
    for part in attribute.split("."):
        try:
            app = getattr(app, part)
        except AttributeError:
            raise AppLoadError(
                f"--app {spec!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not isinstance(app, JobApp):
        raise AppLoadError(f"--app {spec!r}: that is a {type(app).__name__}, not a JobApp")
    return app


def app_for(settings: Settings) -> JobApp[Any]:
    """The app named by ``settings.app``, else :data:`jobstream.agents.builtin.builtin`."""
    if settings.app:
        return load_app(settings.app)
    from jobstream.agents.builtin import builtin

    return builtin


def default_registry(settings: Settings) -> Registry:
    """The job types a worker of ``settings`` runs."""
    return app_for(settings).registry(settings)


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
