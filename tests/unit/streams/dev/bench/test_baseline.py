"""The baseline consumer's outputs name their job."""

from __future__ import annotations

import json
from types import SimpleNamespace

from models.job import JobEvent
from streams.dev.bench import run as bench
from streams.dev.bench.baseline import output_for


def test_baseline_output_names_the_job() -> None:
    event = JobEvent(id="abc", type="echo", payload={"n": 1})
    doc = json.loads(output_for(event.to_bytes()))
    assert doc["job_id"] == "abc"
    assert doc["status"] == "succeeded"
    assert isinstance(doc["finished_at"], float)
    record = SimpleNamespace(value=output_for(event.to_bytes()), timestamp=1_000)
    parsed = bench.parse_baseline(record)
    assert parsed is not None
    assert parsed[0] == "abc"
    assert parsed[1].at == 1.0
