"""The configs jobstream gives its topics follow the settings."""

from __future__ import annotations

from streams.settings import Settings
from streams.topics import RECORD_OVERHEAD_BYTES, topic_configs, topic_names


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
