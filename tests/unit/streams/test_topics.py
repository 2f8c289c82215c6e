"""Topic names and tier labels come from one prefix; the topic configs follow the settings."""

from __future__ import annotations

import pytest

from jobstream.streams.settings import Settings
from jobstream.streams.topics import RECORD_OVERHEAD_BYTES, tier_label, topic_configs, topic_names


def test_every_topic_gets_retention_and_a_size_limit_from_the_settings() -> None:
    s = Settings(
        max_event_bytes=2_000_000,
        main_retention_ms=1,
        retry_retention_ms=2,
        outcome_retention_ms=3,
        dlq_retention_ms=-1,
    )
    names = topic_names("jobs", (10.0, 60.0))
    configs = topic_configs(s, names)
    assert set(configs) == set(names.all())
    retention = {t: int(c["retention.ms"]) for t, c in configs.items()}
    assert retention == {
        "jobs": 1, "jobs.retry.10s": 2, "jobs.retry.1m": 2, "jobs.outcomes": 3, "jobs.dlq": -1
    }  # fmt: skip
    assert all(c["cleanup.policy"] == "delete" for c in configs.values())


def test_size_limits_admit_what_the_worker_accepts() -> None:
    s = Settings(max_event_bytes=1_048_576)
    configs = topic_configs(s, topic_names("jobs"))
    for topic in ("jobs", "jobs.retry.10s", "jobs.outcomes"):
        # an accepted event, with key and headers, must also fit where the worker re-publishes it
        assert int(configs[topic]["max.message.bytes"]) == 1_048_576 + RECORD_OVERHEAD_BYTES
    # a dead letter may carry the whole original base64-encoded
    assert int(configs["jobs.dlq"]["max.message.bytes"]) >= 1_048_576 * 4 // 3


def test_default_dlq_retention_outlasts_the_main_topic() -> None:
    s = Settings()
    assert s.dlq_retention_ms >= 30 * 86_400_000 > s.main_retention_ms


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
