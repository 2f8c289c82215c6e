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

    def take(
        self,
        rec: Record,
        ack: Callable[[], object],
        pause: Callable[[], None],
        resume: Callable[[], None],
    ) -> None: ...

    def forget_pauses(self) -> None: ...

    def revoke(self, partitions: set[tuple[str, int]]) -> None: ...

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


class MainTopic(faust.Topic):
    """The main topic as faust's conductor sees it: its records are not decoded into faust
    events (the machine decodes them), the message itself goes to the queue."""

    never_blocks = True
    """Read by the consumer's fetch loop (``SafeOffsetConsumer._drain_messages``): delivering a
    record of this topic waits for nothing while faust's flow is active."""

    def _compile_decode(self) -> None:
        # faust compiles ``decode`` (its schema's) per instance; here it is the message as is
        self.decode = _as_is  # type: ignore[method-assign]


async def _as_is(message: Any, *, propagate: bool = False) -> Any:
    return message


class MainIntake:
    """What faust's conductor takes for the main topic's queue: it never fills, and each record
    goes to the runtime as it arrives, without a task, a buffer or a stream.

    The runtime pauses the record's partition (``on_pressure_high``) while its in-flight limit is
    reached and resumes it (``on_pressure_drop``) once half is free again: the same back-pressure
    faust's own buffer applies, bounded by one fetch (``broker_max_poll_records``).
    """

    def __init__(self, app: faust.App, runtime: AgentHost) -> None:
        self.app = app
        self.runtime = runtime
        self.generation: int | None = None

    def full(self) -> bool:
        return False

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def put_nowait_enhanced(
        self,
        value: Any,
        *,
        on_pressure_high: Callable[[], None],
        on_pressure_drop: Callable[[], None],
    ) -> None:
        message = value  # MainTopic.decode leaves it as it is
        app = self.app
        generation = message.generation_id
        if generation != app.consumer_generation_id:
            return  # fetched before a rebalance: the partition was sought back since (unacked)
        runtime = self.runtime
        if generation != self.generation:
            # a new assignment made every partition active again: pauses from before are void
            self.generation = generation
            runtime.forget_pauses()
        consumer = app.consumer
        if runtime.done_before(message.topic, message.partition, message.offset):
            message.ack(consumer)  # a previous owner of the partition finished it
            return
        runtime.take(
            to_record(message), lambda: message.ack(consumer), on_pressure_high, on_pressure_drop
        )


def register_agents(app: faust.App, runtime: AgentHost) -> None:
    settings = runtime.settings

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def _joined(sender: Any, **kwargs: Any) -> None:
        # readiness: the replica is in the group and has its (possibly empty) assignment
        runtime.joined.set()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        # faust clears its streams' buffers here; the main topic's are the machine's records
        # that have not started: the partitions' next owners read them again
        runtime.revoke({(tp.topic, tp.partition) for tp in revoked})

    # The main topic has no faust agent: faust's conductor hands each fetched record straight
    # to the runtime (MainIntake below), skipping the per-event cost of faust's Event, buffer
    # queue and Stream iteration. faust still owns the group, the assignment, the fetches and
    # the commits.
    main_topic = MainTopic(
        app,
        topics=[runtime.topics.main],
        key_serializer="raw",
        value_serializer="raw",
        queue=cast("Any", MainIntake(app, runtime)),
    )
    app.topics.add(main_topic)

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
