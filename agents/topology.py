"""The faust agents: one for the main topic, one per retry tier, each handing records to the
runtime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol, cast

import faust

from jobstream.agents.states import Outcome
from jobstream.streams.kafka.record import Record
from jobstream.streams.settings import Settings
from jobstream.streams.topics import RetryTier, TopicNames


class AgentHost(Protocol):
    """What the agents hand their records to: the replica's runtime
    (:class:`jobstream.streams.worker.runtime.Runtime`), which sits above this package."""

    settings: Settings
    topics: TopicNames
    joined: asyncio.Event

    async def gate(self) -> None: ...

    def done_before(self, topic: str, partition: int, offset: int) -> bool: ...

    async def admit(self) -> None: ...

    def submit(self, rec: Record, ack: Callable[[], object]) -> None: ...

    async def forward(self, rec: Record, tier: RetryTier) -> Outcome | str: ...


def to_record(message: Any) -> Record:
    headers = message.headers or ()
    if isinstance(headers, dict):
        headers = list(headers.items())
    return Record(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=[(k, v) for k, v in headers],
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
    )


def register_agents(app: faust.App, runtime: AgentHost) -> None:
    settings = runtime.settings

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def _joined(sender: Any, **kwargs: Any) -> None:
        # readiness: the replica is in the group and has its (possibly empty) assignment
        runtime.joined.set()

    main_topic = app.topic(runtime.topics.main, key_serializer="raw", value_serializer="raw")

    async def process(stream: faust.StreamT[Any]) -> None:
        # One agent takes every record of the replica's partitions and hands it on without
        # waiting (runtime.submit: the lifecycle's machine), so the agent is never the bound; the
        # in-flight limit (admit) and the handler slots (settings.concurrency) are. Acks are
        # manual (noack): a record is acked only once its results are durable, never by
        # faust when the agent moves on or is cancelled.
        async for event in cast("faust.Stream[Any]", stream).noack().events():
            message = event.message
            if runtime.done_before(message.topic, message.partition, message.offset):
                event.ack()  # a previous owner of the partition finished it (commit metadata)
                continue
            await runtime.admit()
            await runtime.gate()  # after admit: a drain that began meanwhile holds it here
            runtime.submit(to_record(event.message), event.ack)

    app.agent(main_topic, name="jobstream.process", concurrency=1)(process)

    for tier in runtime.topics.tiers:
        tier_topic = app.topic(tier.topic, key_serializer="raw", value_serializer="raw")

        def make_forward(t: Any = tier) -> Any:
            async def forward(stream: faust.StreamT[Any]) -> None:
                async for event in stream.events():
                    await runtime.gate()
                    ended = await runtime.forward(to_record(event.message), t)
                    if ended == Outcome.ABANDONED:
                        await asyncio.Future()  # a drain left it: unacked until faust stops us
                    event.ack()

            return forward

        app.agent(
            tier_topic,
            name=f"jobstream.retry.{tier.label}",
            concurrency=settings.retry_forwarders,
        )(make_forward())
