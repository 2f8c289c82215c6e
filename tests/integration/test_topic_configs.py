"""Topic creation with configs, against the real broker."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from jobstream.streams.kafka.admin import ensure_topics
from jobstream.streams.settings import Settings
from jobstream.streams.topics import topic_configs, topic_names


async def described(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    [(_, _, _, _, entries)] = response.resources
    return {e[0]: e[1] for e in entries}


async def test_created_topics_carry_their_configs_and_existing_ones_are_left_alone(
    kafka_bootstrap: str, prefix: str
) -> None:
    s = Settings(topic_prefix=prefix, dlq_retention_ms=-1, max_event_bytes=2_000_000)
    names = topic_names(prefix, s.retry_tiers_s)
    expected = topic_configs(s, names)
    await ensure_topics(kafka_bootstrap, names.all(), partitions=1, configs=expected)
    for topic in names.all():
        actual = await described(kafka_bootstrap, topic)
        assert {k: actual[k] for k in expected[topic]} == expected[topic], topic
    assert (await described(kafka_bootstrap, names.dlq))["retention.ms"] == "-1"

    # a second start with other settings does not touch what exists
    other = topic_configs(Settings(topic_prefix=prefix, dlq_retention_ms=1000), names)
    await ensure_topics(kafka_bootstrap, names.all(), partitions=1, configs=other)
    assert (await described(kafka_bootstrap, names.dlq))["retention.ms"] == "-1"


async def test_a_config_the_broker_refuses_is_an_error_not_a_topic_without_it(
    kafka_bootstrap: str, prefix: str
) -> None:
    with pytest.raises(KafkaError, match=prefix):
        await ensure_topics(
            kafka_bootstrap, [prefix], partitions=1, configs={prefix: {"retention.ms": "soon"}}
        )
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert prefix not in await admin.list_topics()
    finally:
        await admin.close()
