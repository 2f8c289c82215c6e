"""The faust app and its agents: one for the main topic, one per retry tier."""

from __future__ import annotations

from typing import Any

import faust

from agents.pipeline import Record
from streams.kafka_security import broker_credentials
from streams.runtime import Runtime
from streams.settings import Settings


def create_app(settings: Settings, bootstrap: str) -> faust.App:
    datadir = settings.state_dir / "faust" / f"{settings.group_id}-{settings.worker_name}"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    return faust.App(
        settings.group_id,
        # our transport: faust's aiokafka one with a commit guard that cannot skip offsets
        broker=f"jobstream://{bootstrap}",
        broker_credentials=broker_credentials(settings),
        store="memory://",
        datadir=str(datadir),
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_s,
        broker_max_poll_interval=settings.max_poll_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        stream_buffer_maxsize=settings.buffer_maxsize,
        # faust's own wait for all buffered events on rebalance/shutdown has no deadline;
        # Runtime.drain does it with one, and the offset guard keeps unfinished work uncommitted
        stream_wait_empty=False,
        producer_acks=-1,
        web_enabled=False,
    )


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


def register_agents(app: faust.App, runtime: Runtime) -> None:
    settings = runtime.settings

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def _joined(sender: Any, **kwargs: Any) -> None:
        # readiness: the replica is in the group and has its (possibly empty) assignment
        runtime.joined.set()

    main_topic = app.topic(runtime.topics.main, key_serializer="raw", value_serializer="raw")

    async def process(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            await runtime.gate()
            await runtime.process(to_record(event.message))
            event.ack()

    app.agent(main_topic, name="jobstream.process", concurrency=settings.concurrency)(process)

    for tier in runtime.topics.tiers:
        tier_topic = app.topic(tier.topic, key_serializer="raw", value_serializer="raw")

        def make_forward(t: Any = tier) -> Any:
            async def forward(stream: faust.StreamT[Any]) -> None:
                async for event in stream.events():
                    await runtime.gate()
                    await runtime.forward(to_record(event.message), t)
                    event.ack()

            return forward

        app.agent(
            tier_topic,
            name=f"jobstream.retry.{tier.topic.rsplit('.', 1)[-1]}",
            concurrency=settings.concurrency,
        )(make_forward())
