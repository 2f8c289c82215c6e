"""The producer side: ``JobClient.submit`` publishes a job event and returns its id."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, Self

from jobstream.models.job import JobEvent
from jobstream.streams.kafka.publisher import Publisher
from jobstream.streams.topics import topic_names


class JobClient:
    """Publishes :class:`JobEvent` records to the main topic, keyed by job id (or partition_key).

    ``submit`` waits until the event is durable in Kafka; ``submit_many`` queues all events
    first and then waits for them together, so a batch costs about one round trip.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        topic_prefix: str = "jobs",
        linger_ms: int = 5,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """``options`` are aiokafka client arguments for TLS/SASL, e.g.
        ``streams.kafka.security.client_options(Settings())``."""
        self.topic = topic_names(topic_prefix).main
        self._publisher = Publisher(
            bootstrap, linger_ms=linger_ms, client_id="jobstream-client", options=options
        )

    async def start(self) -> None:
        await self._publisher.start()

    async def stop(self) -> None:
        await self._publisher.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @staticmethod
    def build(
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        job_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        partition_key: str | None = None,
    ) -> JobEvent:
        fields: dict[str, Any] = {
            "type": type,
            "payload": dict(payload or {}),
            "metadata": dict(metadata or {}),
            "partition_key": partition_key,
        }
        if job_id is not None:
            fields["id"] = job_id
        return JobEvent(**fields)

    async def publish(self, event: JobEvent) -> asyncio.Future[Any]:
        """Queue one event; the future resolves when Kafka has it."""
        return await self._publisher.send(self.topic, event.to_bytes(), key=event.key())

    async def submit(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        job_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        partition_key: str | None = None,
    ) -> str:
        event = self.build(
            type, payload, job_id=job_id, metadata=metadata, partition_key=partition_key
        )
        await (await self.publish(event))
        return event.id

    async def submit_many(self, events: Iterable[JobEvent]) -> list[str]:
        ids: list[str] = []
        futures = []
        for event in events:
            futures.append(await self.publish(event))
            ids.append(event.id)
        await asyncio.gather(*futures)
        return ids
