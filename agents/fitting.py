"""Making every record jobstream publishes fit the limit of the topic it goes to.

A dead letter carries the original record base64-encoded (4/3 of its size), an outcome carries
the handler's result, a retry event carries the failure history: each can outgrow a limit that
its input respected. A record the broker refuses is a record that never ends, so each is
shrunk here first, saying what was left out. ``budget`` is the room for the record's value: the
topic's limit minus what its key, headers and framing take.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from jobstream.models.deadletter import DeadLetter
from jobstream.models.job import SCHEMA_VERSION, FailureRecord, JobEvent, JobOutcome

HISTORY_KEPT = 3
"""Failure records a shrunk event or letter keeps: the first and the last ones."""
TEXT_KEPT = 500
"""Characters of a message or traceback a shrunk record keeps."""
_MARGIN = 256  # JSON punctuation and the flags set while shrinking


def wire(model: BaseModel) -> bytes:
    """JSON bytes of ``model``, even when a string holds a lone surrogate (UTF-8 refuses it:
    json's ASCII escapes keep it readable instead of failing the whole record)."""
    try:
        return model.model_dump_json().encode()
    except PydanticSerializationError:
        return json.dumps(model.model_dump(mode="json"), ensure_ascii=True).encode()


def original_facts(value: bytes | None) -> dict[str, Any]:
    if value is None:
        return {"original_size": None, "original_sha256": None}
    return {"original_size": len(value), "original_sha256": hashlib.sha256(value).hexdigest()}


def _short_history(history: list[FailureRecord]) -> list[FailureRecord]:
    kept = history if len(history) <= HISTORY_KEPT else [history[0], *history[-2:]]
    return [h.model_copy(update={"message": h.message[:TEXT_KEPT]}) for h in kept]


def fit_dead_letter(letter: DeadLetter, original: bytes | None, budget: int) -> bytes:
    """The letter's bytes, within ``budget``: first the whole original, then a prefix of it
    (``original_truncated``; size and sha256 always say what the whole was), then also
    without headers and with short texts, at last without any of the original."""
    data = wire(letter)
    if len(data) <= budget:
        return data
    shrunk = letter
    for step in range(3):
        if step == 1:
            shrunk = shrunk.model_copy(
                update={
                    "original_headers": [],
                    "history": _short_history(shrunk.history),
                    "traceback": (shrunk.traceback or "")[-TEXT_KEPT:] or None,
                    "error_message": shrunk.error_message[:TEXT_KEPT],
                }
            )
        bare = shrunk.model_copy(update={"original_value": None, "original_truncated": True})
        room = budget - len(wire(bare)) - _MARGIN
        keep = max(0, room * 3 // 4) if step < 2 else 0
        prefix = (original or b"")[:keep]
        candidate = shrunk.model_copy(
            update={
                "original_value": base64.b64encode(prefix).decode() if prefix else None,
                "original_truncated": True,
            }
        )
        data = wire(candidate)
        if len(data) <= budget:
            return data
    return data  # still too large: the publisher refuses it and the caller routes that


def outcome_bytes(fields: dict[str, Any], budget: int) -> bytes:
    """A :class:`JobOutcome`'s bytes from its fields, within ``budget`` (without its result,
    ``result_truncated``, when that is too large). Written with orjson, not through the model:
    one outcome per job, and the model's validation and dump cost several times more; a unit
    test holds the two to the same record."""
    data = _dumps({"v": SCHEMA_VERSION, **fields, "result_truncated": False})
    if len(data) <= budget:
        return data
    error = fields.get("error")
    return _dumps(
        {
            "v": SCHEMA_VERSION,
            **fields,
            "result": None,
            "error": error[:TEXT_KEPT] if error else None,
            "result_truncated": True,
        }
    )


def _dumps(doc: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # a lone surrogate (orjson writes only valid UTF-8): escaped as json does
        return json.dumps(doc, ensure_ascii=True, default=str).encode()


def fit_outcome(outcome: JobOutcome, budget: int) -> bytes:
    """The outcome's bytes; without its result (``result_truncated``) when that is too large.
    The whole result stays in the job's row."""
    data = wire(outcome)
    if len(data) <= budget:
        return data
    return wire(
        outcome.model_copy(
            update={
                "result": None,
                "result_truncated": True,
                "error": (outcome.error or "")[:TEXT_KEPT] or None,
            }
        )
    )


def fit_event(event: JobEvent, budget: int) -> bytes | None:
    """A retry event's bytes with its history shortened if needed; None when even that is
    too large (the payload alone fills the topic's limit), so it cannot be retried."""
    data = wire(event)
    if len(data) <= budget:
        return data
    data = wire(event.model_copy(update={"history": _short_history(event.history)}))
    return data if len(data) <= budget else None
