"""Turning raw record bytes into a :class:`JobEvent`, or saying exactly why not."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from models.deadletter import DeadLetterReason
from models.errors import InvalidJobError
from models.job import SCHEMA_VERSION, JobEvent


def decode_event(raw: bytes | None, *, max_bytes: int) -> JobEvent:
    """Raises :class:`InvalidJobError` with a :class:`DeadLetterReason` value as its reason."""
    if raw is None:
        raise InvalidJobError(DeadLetterReason.INVALID_BYTES, "record has no value (tombstone)")
    if len(raw) > max_bytes:
        raise InvalidJobError(
            DeadLetterReason.OVERSIZE, f"record is {len(raw)} bytes, limit is {max_bytes}"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJobError(DeadLetterReason.INVALID_BYTES, f"not UTF-8: {exc}") from exc
    try:
        data: Any = json.loads(text, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidJobError(DeadLetterReason.INVALID_JSON, f"not JSON: {exc}") from exc
    except ValueError as exc:  # NaN / Infinity: Python reads them, JSON and PostgreSQL do not
        raise InvalidJobError(DeadLetterReason.INVALID_JSON, str(exc)) from exc
    if has_nul(data):
        raise InvalidJobError(
            DeadLetterReason.INVALID_JSON,
            "contains the character U+0000, which PostgreSQL cannot store in text or jsonb",
        )
    if not isinstance(data, dict):
        raise InvalidJobError(
            DeadLetterReason.INVALID_SCHEMA, f"expected a JSON object, got {type(data).__name__}"
        )
    version = data.get("v", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise InvalidJobError(
            DeadLetterReason.UNSUPPORTED_VERSION,
            f"schema version {version!r} is not supported (this worker reads v{SCHEMA_VERSION})",
        )
    try:
        return JobEvent.model_validate(data)
    except (ValidationError, RecursionError) as exc:
        raise InvalidJobError(DeadLetterReason.INVALID_SCHEMA, _summary(exc)) from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def has_nul(data: Any) -> bool:
    """Whether any string (key or value) in a JSON document holds U+0000; no recursion."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def storable(result: Any) -> str | None:
    """Why PostgreSQL's jsonb could not hold ``result``, or None when it can."""
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return str(exc)
    if has_nul(result):
        return "it contains the character U+0000"
    return None


def _summary(exc: Exception, limit: int = 500) -> str:
    if isinstance(exc, ValidationError):
        parts = [
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        ]
        text = "; ".join(parts)
    else:
        text = str(exc)
    return text[:limit]


def payload_error(exc: ValidationError) -> str:
    return _summary(exc)
