"""What the dispatcher publishes for a due row: the stored event, ``not_before`` cleared, keyed
as its producer keyed it, decodable by the workers' own decode."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from jobstream.agents.decode import decode_event
from jobstream.models.job import JobEvent
from jobstream.streams.pg.scheduled import Due
from jobstream.streams.worker.dispatcher import _record

AT = datetime(2027, 1, 1, 3, 0, tzinfo=UTC)


def _due(event: dict[str, object]) -> Due:
    return Due(str(event.get("id", "row-id")), event, AT, 0.1)


def test_the_stored_event_goes_out_due_now_under_its_own_key() -> None:
    event = JobEvent(id="j1", type="echo", payload={"n": "ü"}, not_before=AT, expires_at=AT)
    value, key = _record(_due(event.model_dump(mode="json")))
    decoded = decode_event(value, max_bytes=1_000_000)
    assert decoded.not_before is None
    assert decoded.expires_at == AT  # its expiry travels with it
    assert decoded.payload == {"n": "ü"}
    assert key == b"j1"
    assert "ü" in value.decode()  # not escaped: the record is no larger than it was


def test_a_partition_key_keys_it_and_a_lone_surrogate_is_escaped() -> None:
    event = JobEvent(id="j2", type="echo", payload={"s": "\ud800"}, partition_key="cust-7")
    value, key = _record(_due(event.model_dump(mode="json")))
    assert key == b"cust-7"
    assert json.loads(value)["payload"] == {"s": "\ud800"}


def test_an_event_without_an_id_is_keyed_by_its_row() -> None:
    value, key = _record(_due({"type": "echo"}))
    assert key == b"row-id"
    assert json.loads(value) == {"type": "echo", "not_before": None}
