"""The wire models: a job event survives bytes."""

from __future__ import annotations

from jobstream.agents.decode import decode_event
from jobstream.models.job import JobEvent


def test_a_job_event_round_trips_through_bytes() -> None:
    event = JobEvent(type="echo", payload={"a": [1, 2]}, metadata={"tenant": "t1"})
    decoded = decode_event(event.to_bytes(), max_bytes=10_000)
    assert decoded == event
    assert decoded.key() == event.id.encode()
    assert JobEvent(type="echo", partition_key="user-7").key() == b"user-7"
