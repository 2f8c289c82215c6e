"""Turning raw record bytes into a :class:`JobEvent`, or saying exactly why not.

This is the one decode rule: the workers dead-letter what :func:`decode_event` refuses, and the
producers (``POST /jobs``, ``jobstream submit``, ``JobClient``) run the same function on the
bytes they are about to publish, so what they accept a worker can decode, and the reverse.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

from jobstream.models.deadletter import DeadLetterReason
from jobstream.models.errors import InvalidJobError
from jobstream.models.job import SCHEMA_VERSION, JobEvent, derived_job_id

MAX_DEPTH = 128
"""Objects and arrays nested in a record, at most (the event object is level 1). Well below the
~255 levels pydantic serializes: whatever a worker accepts it must be able to write again, as
a retry event, an outcome, a row, a result that nests the payload one level deeper (echo)."""


def decode_event(raw: bytes | None, *, max_bytes: int, id_source: str | None = None) -> JobEvent:
    """Raises :class:`InvalidJobError` with a :class:`DeadLetterReason` value as its reason.

    An event published without an id gets one derived from ``id_source`` (the record's
    coordinates), so every delivery of that record gets the same id; it is derived only then.
    """
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
        data: Any = _DECODER.decode(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidJobError(DeadLetterReason.INVALID_JSON, f"not JSON: {exc}") from exc
    except ValueError as exc:  # NaN, Infinity, 1e999: Python reads them, JSON and PostgreSQL not
        raise InvalidJobError(DeadLetterReason.INVALID_JSON, str(exc)) from exc
    # NUL and lone surrogates can only come from \u escapes, and depth needs brackets: skip the
    # walk over the document when neither can be there (most records)
    if "\\u" in text or text.count("{") + text.count("[") > MAX_DEPTH:
        why = json_problem(data)
        if why is not None:
            raise InvalidJobError(DeadLetterReason.INVALID_JSON, why)
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
    if id_source is not None and "id" not in data:
        data["id"] = derived_job_id(id_source)
    try:
        return JobEvent.model_validate(data)
    except (ValidationError, RecursionError) as exc:
        raise InvalidJobError(DeadLetterReason.INVALID_SCHEMA, _summary(exc)) from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]}... does not fit in a double")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
"""Made once: ``json.loads`` with these arguments builds a decoder for every call."""


def json_problem(data: Any, *, depth: int = 0) -> str | None:
    """Why a JSON document cannot be a job, or None: a string (key or value) PostgreSQL cannot
    store (U+0000) or UTF-8 cannot encode (a lone surrogate), nesting deeper than
    :data:`MAX_DEPTH`, a number JSON has no spelling for (NaN, infinities).

    ``depth`` is how many containers enclose ``data`` (1 for a field of the event). A walk with
    a stack, not recursion: the document may nest as deep as the JSON parser allowed.
    """
    stack: list[tuple[Any, int]] = [(data, depth)]
    while stack:
        item, outer = stack.pop()
        if isinstance(item, str):
            why = _unstorable(item)
            if why is not None:
                return why
        elif isinstance(item, dict | list | tuple):
            if outer >= MAX_DEPTH:
                return f"nests deeper than {MAX_DEPTH} levels of objects and arrays"
            if isinstance(item, dict):
                stack.extend((k, outer + 1) for k in item)
                stack.extend((v, outer + 1) for v in item.values())
            else:
                stack.extend((v, outer + 1) for v in item)
        elif isinstance(item, float) and not math.isfinite(item):
            return f"holds the number {item}, which JSON cannot spell"
    return None


def _unstorable(item: str) -> str | None:
    if "\x00" in item:
        return "contains the character U+0000, which PostgreSQL cannot store"
    if _SURROGATE.search(item):
        return "contains a lone UTF-16 surrogate escape, which is not a Unicode character"
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _strings(data: Any) -> Iterator[str]:
    """Every string (key or value) of a JSON document; no recursion: documents nest deeply."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def unstorable_char(data: Any) -> str | None:
    """Why a string (key or value) in a JSON document cannot be stored or re-encoded, if so.

    PostgreSQL's text and jsonb hold neither U+0000 nor a lone UTF-16 surrogate (``\\ud800``),
    and UTF-8 cannot encode the latter: such an event could be neither stored nor retried.
    """
    for item in _strings(data):
        why = _unstorable(item)
        if why is not None:
            return why
    return None


def has_nul(data: Any) -> bool:
    """Whether any string (key or value) in a JSON document holds U+0000."""
    return any("\x00" in item for item in _strings(data))


def readable_id(raw: bytes | None, *, max_bytes: int) -> str | None:
    """The string ``id`` of an event that failed validation, when one can be read.

    An invalid event keeps its id for its row, dead letter and outcome, so ``jobstream status``
    and ``dlq show`` find it by the id its producer knows. Oversized input is not parsed.
    """
    if raw is None or len(raw) > max_bytes:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    job_id = data.get("id") if isinstance(data, dict) else None
    if isinstance(job_id, str) and 0 < len(job_id) <= 200 and unstorable_char(job_id) is None:
        return job_id
    return None


def storable(result: Any) -> str | None:
    """Why PostgreSQL's jsonb could not hold ``result``, or None when it can."""
    try:
        text = json.dumps(result, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return str(exc)
    # json escapes U+0000 as \u0000 (in a key or a value), a backslash as \\: "\\u0000" in
    # the text is an escaped backslash before "u0000", not the character
    if "\\u0000" in text.replace("\\\\", ""):
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
