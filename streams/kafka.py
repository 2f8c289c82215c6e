"""The project's Kafka plumbing outside faust: an idempotent publisher and topic creation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import RecordMetadata

Headers = Sequence[tuple[str, bytes]]


class Publisher:
    """An idempotent, batching producer (acks=all).

    ``send`` returns once the record is queued; the returned future resolves when it is
    durable. Callers gather those futures instead of awaiting each send in turn, which lets
    the producer fill batches.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        linger_ms: int = 5,
        client_id: str = "jobstream",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """``options`` are extra aiokafka client arguments (security: TLS, SASL)."""
        self._config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": client_id,
            "enable_idempotence": True,
            "acks": "all",
            "linger_ms": linger_ms,
            "max_batch_size": 256 * 1024,
            "max_request_size": 4 * 1024 * 1024,
            **(options or {}),
        }
        self._started: AIOKafkaProducer | None = None

    @property
    def _producer(self) -> AIOKafkaProducer:
        if self._started is None:
            raise RuntimeError("Publisher.start() was not awaited")
        return self._started

    async def start(self) -> None:
        # aiokafka binds to the running loop, so the producer is built here, not in __init__
        producer = AIOKafkaProducer(**self._config)
        await producer.start()
        self._started = producer

    async def stop(self) -> None:
        if self._started is not None:
            await self._started.stop()
            self._started = None

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        return await self._producer.send(
            topic, value=value, key=key, headers=list(headers) if headers else None
        )

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> RecordMetadata:
        return await (await self.send(topic, value, key=key, headers=headers))

    async def flush(self) -> None:
        await self._producer.flush()


async def ensure_topics(
    bootstrap: str, names: Iterable[str], *, partitions: int, replication_factor: int = 1
) -> None:
    """Create the topics that do not exist yet; safe to call from every replica."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if not missing:
            return
        with contextlib.suppress(TopicAlreadyExistsError):  # another replica won the race
            await admin.create_topics(
                [NewTopic(n, partitions, replication_factor) for n in missing]
            )
        # wait until the metadata shows them, so a consumer subscribing next sees partitions
        for _ in range(100):
            if set(missing) <= set(await admin.list_topics()):
                return
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
