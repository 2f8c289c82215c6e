"""Kafka's own tools (``jobstream dev kafka-tool``) against the real broker.

The tool jars are fetched on first use (Maven, cached next to the broker's jars). The topics and
the group's committed offsets are made here, so the tools' answers are known in advance.
"""

from __future__ import annotations

import os

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from jobstream.streams.kafka.admin import ensure_topics
from jobstream.streams.settings import Settings
from jobstream.streams.topics import topic_configs, topic_names
from tests.integration.harness import run_cli


def tool_env(bootstrap: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSTREAM_")}
    return env | {"JOBSTREAM_KAFKA_BOOTSTRAP": bootstrap}


async def test_topics_groups_and_configs_as_kafkas_tools_see_them(
    kafka_bootstrap: str, prefix: str
) -> None:
    settings = Settings(topic_prefix=prefix, partitions=2)
    names = topic_names(prefix, settings.retry_tiers_s)
    await ensure_topics(
        kafka_bootstrap, names.all(), partitions=2, configs=topic_configs(settings, names)
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(names.main, b"x", partition=0, key=str(i).encode())
    finally:
        await producer.stop()
    # no auto-commit: on stop it would commit the position it fetched (the log end, 5) over
    # the offset committed here, whenever that fetch finished first
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=prefix, enable_auto_commit=False
    )
    await consumer.start()
    try:  # the group has read two of the five events on partition 0
        consumer.assign([TopicPartition(names.main, 0)])
        await consumer.commit({TopicPartition(names.main, 0): OffsetAndMetadata(2, "")})
    finally:
        await consumer.stop()
    env = tool_env(kafka_bootstrap)

    code, out = await run_cli("dev", "kafka-tool", "kafka-topics", "--list", env=env)
    assert code == 0, out
    assert set(names.all()) <= set(out.split())

    code, out = await run_cli(
        "dev", "kafka-tool", "kafka-consumer-groups", "--describe", "--group", prefix, env=env
    )
    assert code == 0, out
    rows = [line.split() for line in out.splitlines() if line.startswith(prefix + " ")]
    # GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
    assert [r[1:6] for r in rows if r[2] == "0"] == [[names.main, "0", "2", "5", "3"]]

    code, out = await run_cli(
        "dev", "kafka-tool", "kafka-configs", "--describe", "--entity-type", "topics",
        "--entity-name", names.dlq, env=env,
    )  # fmt: skip
    assert code == 0, out
    assert f"retention.ms={settings.dlq_retention_ms}" in out

    code, out = await run_cli("dev", "kafka-tool", "kafka-nope", env=env)
    assert code == 2
    assert "unknown Kafka tool" in out
