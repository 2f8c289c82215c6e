"""What the console's routes share: settings, the pool, Kafka views, templates."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import jinja2

from jobstream.streams.console.cluster import ClusterView
from jobstream.streams.console.dlq_tail import DeadLetterTail
from jobstream.streams.console.queries import JobsSchema, discover
from jobstream.streams.kafka.publisher import Publisher
from jobstream.streams.settings import Settings
from jobstream.streams.topics import TopicNames, topic_names


def template_env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("jobstream.streams.console", "templates"),
        autoescape=jinja2.select_autoescape(("html",)),
        undefined=jinja2.StrictUndefined,
    )


@dataclass
class Console:
    settings: Settings
    bootstrap: str
    pool: asyncpg.Pool
    topics: TopicNames
    cluster: ClusterView
    dead_letters: DeadLetterTail
    schema: JobsSchema
    kafka_options: dict[str, Any] = field(default_factory=dict)
    """aiokafka arguments for TLS/SASL, as every other client of the project uses."""
    templates: jinja2.Environment = field(default_factory=template_env)
    _publisher: Publisher | None = None
    """For the outcome records of jobs an operator cancels before they started: made on the
    first such cancel."""
    _publisher_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    async def open(cls, settings: Settings, *, bootstrap: str, pool: asyncpg.Pool) -> Console:
        from jobstream.streams.kafka.security import client_options

        names = topic_names(settings.topic_prefix, settings.retry_tiers_s)
        options = client_options(settings)
        return cls(
            settings=settings,
            bootstrap=bootstrap,
            pool=pool,
            topics=names,
            cluster=ClusterView(bootstrap, settings.group_id, names, options),
            dead_letters=DeadLetterTail(bootstrap, names.dlq, options),
            schema=await discover(pool),
            kafka_options=options,
        )

    async def close(self) -> None:
        await self.cluster.close()
        await self.dead_letters.close()
        if self._publisher is not None:
            await self._publisher.stop()
            self._publisher = None

    async def send_outcome(self, key: bytes, value: bytes) -> None:
        """Publish one outcome record (a job cancelled here) and wait until Kafka has it."""
        async with self._publisher_lock:
            if self._publisher is None:
                publisher = Publisher(
                    self.bootstrap, client_id="jobstream-console", options=self.kafka_options
                )
                await publisher.start()
                self._publisher = publisher
        await (await self._publisher.send(self.topics.outcomes, value, key=key))

    def replayed_by(self, role: str, remote: str | None) -> str:
        """Who replayed, for the audit: the console, the role, where from; never a token."""
        return f"console:{role}@{socket.gethostname()} from {remote or 'unknown'}"
