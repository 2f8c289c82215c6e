"""The one group-less topic reader, on aiokafka's public API only.

A reader never joins a consumer group (so it never takes partitions from the workers'), learns
a topic's partitions from the admin client's metadata and reads from the beginning. Used by the
benchmark's output collector, the tests and retention's look at the dead-letter topic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from jobstream.streams.polling import wait_until


async def topic_partitions(admin: AIOKafkaAdminClient, topic: str) -> list[int] | None:
    """The partitions of ``topic`` once every one has a leader; None while it has none (not
    created yet, or a new topic whose leaders are still being elected: offset lookups against
    it would fail, and aiokafka would log errors for what is only a slow start).

    Metadata of all topics is asked for: naming the topic would have a broker that auto-creates
    topics create it with its defaults, before its owner creates it with the right configs."""
    for meta in await admin.describe_topics():
        if meta["topic"] != topic or meta["error_code"] != 0:
            continue
        parts = meta["partitions"]
        if parts and all(p["error_code"] == 0 and p["leader"] >= 0 for p in parts):
            return sorted(p["partition"] for p in parts)
    return None


async def partitions_of(
    bootstrap: str, topics: Sequence[str], options: Mapping[str, Any] | None = None
) -> dict[str, list[int]]:
    """The partitions of each of ``topics`` that exists now (a missing topic is left out)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(options or {}))
    await admin.start()
    try:
        found = {t: await topic_partitions(admin, t) for t in topics}
    finally:
        await admin.close()
    return {t: parts for t, parts in found.items() if parts}


class TopicReader:
    """Reads ``topic`` from its beginning outside any group; ``options`` are extra aiokafka
    client arguments (TLS, SASL). Use as ``async with TopicReader(...) as reader``, or
    :meth:`start` / :meth:`stop`."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        options: Mapping[str, Any] | None = None,
        *,
        within_s: float = 30.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.options = dict(options or {})
        self.within_s = within_s
        """How long to wait for the topic to exist with a leader on every partition."""
        self.partitions: list[TopicPartition] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> Self:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.options)
        await admin.start()
        try:

            async def partitions() -> list[int] | None:
                return await topic_partitions(admin, self.topic)

            parts = await wait_until(
                partitions, within_s=self.within_s, what=f"partitions of {self.topic}"
            )
        finally:
            await admin.close()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self.options,
        )
        await consumer.start()
        self._consumer = consumer
        self.partitions = [TopicPartition(self.topic, p) for p in parts]
        consumer.assign(self.partitions)
        await consumer.seek_to_beginning(*self.partitions)
        return self

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "TopicReader.start() first"
        return self._consumer

    async def read(self, *, timeout_ms: int = 200, max_records: int | None = None) -> list[Any]:
        """The records that arrived since the last call (within ``timeout_ms``), in partition
        order."""
        batch = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return [rec for records in batch.values() for rec in records]

    async def end_offsets(self) -> dict[TopicPartition, int]:
        return dict(await self.consumer.end_offsets(self.partitions))

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
