"""The faust app and its agents: one for the main topic, one per retry tier."""

from __future__ import annotations

import faust

from jobstream.streams.kafka.security import broker_credentials
from jobstream.streams.settings import Settings


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
        # the main topic's records go straight to the machine (agents.topology.MainIntake): one
        # fetch is what may arrive past the in-flight limit before the partition pauses
        broker_max_poll_records=settings.buffer_maxsize,
        # faust's own wait for all buffered events on rebalance/shutdown has no deadline;
        # Runtime.drain does it with one, and the offset guard keeps unfinished work uncommitted
        stream_wait_empty=False,
        producer_acks=-1,
        web_enabled=False,
    )
