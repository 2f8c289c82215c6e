"""Decoding input bytes into a job event: what is refused, why, and which id it keeps."""

from __future__ import annotations

import base64
import json

import pytest

from jobstream.agents.decode import decode_event, readable_id
from jobstream.models.deadletter import DeadLetterReason
from jobstream.models.errors import InvalidJobError
from jobstream.models.job import derived_job_id


def reason_of(raw: bytes | None, max_bytes: int = 10_000) -> str:
    with pytest.raises(InvalidJobError) as info:
        decode_event(raw, max_bytes=max_bytes)
    return info.value.reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, DeadLetterReason.INVALID_BYTES),
        (b"\xff\xfe", DeadLetterReason.INVALID_BYTES),
        (b"{nope", DeadLetterReason.INVALID_JSON),
        (b"[" * 100_000 + b"]" * 100_000, DeadLetterReason.OVERSIZE),
        (b'"a string"', DeadLetterReason.INVALID_SCHEMA),
        (b'{"payload": {}}', DeadLetterReason.INVALID_SCHEMA),
        (b'{"type": "echo", "attempt": 0}', DeadLetterReason.INVALID_SCHEMA),
        (b'{"type": "echo", "surprise": 1}', DeadLetterReason.INVALID_SCHEMA),
        (b'{"v": 2, "type": "echo"}', DeadLetterReason.UNSUPPORTED_VERSION),
    ],
)
def test_undecodable_input_says_why(raw: bytes | None, reason: DeadLetterReason) -> None:
    assert reason_of(raw) == reason


def test_deeply_nested_json_is_refused_not_crashing() -> None:
    raw = b'{"type": "echo", "payload": {"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}"
    assert reason_of(raw, max_bytes=len(raw) + 1) in {
        DeadLetterReason.INVALID_JSON,
        DeadLetterReason.INVALID_SCHEMA,
    }


def test_schema_errors_name_the_field() -> None:
    with pytest.raises(InvalidJobError) as info:
        decode_event(json.dumps({"type": "echo", "attempt": "x"}).encode(), max_bytes=1000)
    assert "attempt" in str(info.value)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type": "echo", "payload": {"x": NaN}}',
        b'{"type": "echo", "payload": {"x": -Infinity}}',
        b'{"type": "echo", "payload": {"x": "a\\u0000b"}}',
        b'{"type": "echo", "payload": {"k\\u0000": 1}}',
        b'{"type": "echo\\u0000"}',
    ],
)
def test_json_postgresql_cannot_store_is_refused_at_the_door(raw: bytes) -> None:
    assert reason_of(raw) == DeadLetterReason.INVALID_JSON


def test_a_literal_backslash_u_is_not_a_nul() -> None:
    event = decode_event(b'{"type": "echo", "payload": {"x": "\\\\u0000"}}', max_bytes=1000)
    assert event.payload == {"x": "\\u0000"}


def test_storable_names_what_jsonb_would_refuse() -> None:
    from jobstream.agents.decode import storable

    assert storable({"ok": [1, "two", None]}) is None
    assert storable({"x": float("nan")}) is not None
    assert storable({"x": ["a\x00"]}) is not None
    assert storable({"x": object()}) is not None


def test_decode_refuses_lone_surrogates_and_fills_a_missing_id() -> None:
    with pytest.raises(InvalidJobError) as err:
        decode_event(b'{"type": "echo", "payload": {"s": "\\ud800"}}', max_bytes=1000)
    assert err.value.reason == DeadLetterReason.INVALID_JSON
    coords = "jobs:3:17"
    job = decode_event(b'{"type": "echo"}', max_bytes=1000, id_source=coords)
    again = decode_event(b'{"type": "echo"}', max_bytes=1000, id_source=coords)
    assert job.id == again.id == derived_job_id(coords) != derived_job_id("jobs:3:18")
    given = decode_event(b'{"type": "echo", "id": "mine"}', max_bytes=1000, id_source="jobs:0:0")
    assert given.id == "mine"


def test_the_id_of_an_invalid_event_is_read_when_it_can_be() -> None:
    assert readable_id(b'{"id": "abc", "type": 5}', max_bytes=100) == "abc"
    assert readable_id(b'{"id": 5}', max_bytes=100) is None
    assert readable_id(b'{"id": ""}', max_bytes=100) is None
    assert readable_id(b"\xff\xfe", max_bytes=100) is None
    assert readable_id(b'{"id": "abc"}', max_bytes=5) is None  # oversize input is not parsed
    assert readable_id(base64.b64encode(b"x"), max_bytes=100) is None


def nested(levels: int) -> bytes:
    """An event whose document nests ``levels`` containers (the event object is the first)."""
    inner = levels - 2  # the event, then its payload, then arrays
    return b'{"type": "echo", "payload": {"x": ' + b"[" * inner + b"]" * inner + b"}}"


def test_depth_is_refused_past_max_depth_and_what_passes_can_be_written_again() -> None:
    from jobstream.agents.decode import MAX_DEPTH

    event = decode_event(nested(MAX_DEPTH), max_bytes=10_000)
    # a worker writes it again: as a retry event, and as a result one level deeper (echo)
    assert decode_event(event.to_bytes(), max_bytes=10_000) == event
    assert json.loads(json.dumps({"echo": event.payload}))
    assert reason_of(nested(MAX_DEPTH + 1)) == DeadLetterReason.INVALID_JSON
    with pytest.raises(InvalidJobError, match=f"deeper than {MAX_DEPTH}"):
        decode_event(nested(MAX_DEPTH + 1), max_bytes=10_000)


@pytest.mark.parametrize("number", [b"1e999", b"-1e999", b"1" * 400 + b".0"])
def test_a_number_past_a_double_is_refused_not_turned_into_null(number: bytes) -> None:
    assert reason_of(b'{"type": "echo", "payload": {"x": ' + number + b"}}") == (
        DeadLetterReason.INVALID_JSON
    )


def test_json_problem_names_each_kind_for_documents_built_in_python() -> None:
    from jobstream.agents.decode import MAX_DEPTH, json_problem

    deep: list[object] = []
    for _ in range(MAX_DEPTH):
        deep = [deep]
    assert json_problem({"a": ["b", {"c": 1.5}]}) is None
    assert "U+0000" in (json_problem({"k\x00": 1}) or "")
    assert "surrogate" in (json_problem(["\ud800"]) or "")
    assert "deeper" in (json_problem(deep) or "")
    assert json_problem(deep[0]) is None
    assert "deeper" in (json_problem(deep[0], depth=1) or "")
    assert "JSON cannot spell" in (json_problem({"x": float("nan")}) or "")
