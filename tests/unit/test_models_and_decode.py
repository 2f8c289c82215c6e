from __future__ import annotations

import json

import pytest

from agents.decode import decode_event
from models.deadletter import DeadLetterReason
from models.errors import InvalidJobError
from models.job import JobEvent
from streams.topics import tier_label, topic_names


def reason_of(raw: bytes | None, max_bytes: int = 10_000) -> str:
    with pytest.raises(InvalidJobError) as info:
        decode_event(raw, max_bytes=max_bytes)
    return info.value.reason


def test_a_job_event_round_trips_through_bytes() -> None:
    event = JobEvent(type="echo", payload={"a": [1, 2]}, metadata={"tenant": "t1"})
    decoded = decode_event(event.to_bytes(), max_bytes=10_000)
    assert decoded == event
    assert decoded.key() == event.id.encode()
    assert JobEvent(type="echo", partition_key="user-7").key() == b"user-7"


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


def test_topic_names_come_from_one_prefix() -> None:
    names = topic_names("acme.jobs", (10, 60, 600))
    assert names.all() == [
        "acme.jobs",
        "acme.jobs.outcomes",
        "acme.jobs.dlq",
        "acme.jobs.retry.10s",
        "acme.jobs.retry.1m",
        "acme.jobs.retry.10m",
    ]
    # attempts past the last tier reuse it
    assert [names.tier_for_attempt(a).topic.rsplit(".", 1)[1] for a in (1, 2, 3, 4, 9)] == [
        "10s",
        "1m",
        "10m",
        "10m",
        "10m",
    ]


@pytest.mark.parametrize(
    ("seconds", "label"), [(0.25, "250ms"), (1, "1s"), (90, "90s"), (120, "2m"), (7200, "2h")]
)
def test_tier_labels(seconds: float, label: str) -> None:
    assert tier_label(seconds) == label


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
    from agents.decode import storable

    assert storable({"ok": [1, "two", None]}) is None
    assert storable({"x": float("nan")}) is not None
    assert storable({"x": ["a\x00"]}) is not None
    assert storable({"x": object()}) is not None
