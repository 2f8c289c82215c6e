"""The workers' consumer group as Kafka sees it: members, their partitions, lag per partition.

Read with the admin client's public API (describe the group, list its committed offsets)
and a group-less consumer for end offsets, so looking never joins or rebalances the group.
One admin client and one consumer live as long as the console; answers are cached briefly
because every open overview polls them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from jobstream.streams.topics import TopicNames

TIMEOUT_S = 5.0
CACHE_S = 2.0


class ClusterView:
    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topics: TopicNames,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._options = dict(options or {})
        self._group = group_id
        self._topics = topics
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self._bootstrap,
                client_id="jobstream-console",
                request_timeout_ms=int(TIMEOUT_S * 1000),
                **self._options,
            )
            await asyncio.wait_for(admin.start(), TIMEOUT_S)
            self._admin = admin
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                group_id=None,
                enable_auto_commit=False,
                client_id="jobstream-console",
                request_timeout_ms=int(TIMEOUT_S * 1000),
                **self._options,
            )
            await asyncio.wait_for(consumer.start(), TIMEOUT_S)
            self._consumer = consumer
        return self._admin, self._consumer

    async def snapshot(self) -> dict[str, Any]:
        """Members and lag, at most :data:`CACHE_S` old; an error is reported, not raised."""
        async with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < CACHE_S:
                return self._cached[1]
            try:
                view = await asyncio.wait_for(self._read(), TIMEOUT_S * 3)
            except (KafkaError, OSError, TimeoutError) as exc:
                await self.close()  # reconnect next time
                view = {"group": self._group, "error": f"Kafka: {type(exc).__name__}: {exc}"}
            self._cached = (time.monotonic(), view)
            return view

    async def _read(self) -> dict[str, Any]:
        admin, consumer = await self._clients()
        existing = set(await admin.list_topics())
        tiers = {t.topic: f"retry {t.topic.rsplit('.', 1)[-1]}" for t in self._topics.tiers}
        roles = {self._topics.main: "main", **tiers}
        topics = [t for t in roles if t in existing]
        described = await admin.describe_consumer_groups([self._group])
        members, state = _members(described)
        committed = await admin.list_consumer_group_offsets(self._group)
        tps: list[TopicPartition] = []
        if topics:
            for info in await admin.describe_topics(topics):
                tps.extend(
                    TopicPartition(info["topic"], p["partition"]) for p in info["partitions"]
                )
        ends = await consumer.end_offsets(tps) if tps else {}
        begins = await consumer.beginning_offsets(tps) if tps else {}
        owner = {tp: m["member_id"] for m in members for tp in m.pop("_tps")}
        partitions = []
        for tp in sorted(tps):
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else None
            end = ends.get(tp, 0)
            lag = end - (done if done is not None else begins.get(tp, 0))
            partitions.append(
                {
                    "topic": tp.topic,
                    "role": roles[tp.topic],
                    "partition": tp.partition,
                    "committed": done,
                    "end": end,
                    "lag": max(lag, 0),
                    "member": owner.get(tp),
                }
            )
        per_topic = []
        for topic in topics:
            mine = [p for p in partitions if p["topic"] == topic]
            per_topic.append(
                {"topic": topic, "role": roles[topic], "lag": sum(p["lag"] for p in mine)}
            )
        missing = [t for t in roles if t not in existing]
        return {
            "group": self._group,
            "state": state,
            "members": members,
            "partitions": partitions,
            "topics": per_topic,
            "missing_topics": missing,
            "error": None,
        }


def _members(described: list[Any]) -> tuple[list[dict[str, Any]], str | None]:
    """Members of the group from the raw DescribeGroups answer.

    Indexed from the end, because v4 and later add ``group_instance_id`` after the member id.
    """
    members: list[dict[str, Any]] = []
    state: str | None = None
    for response in described:
        for group in response.groups:
            state = group[2] or None
            for m in group[5]:
                tps: list[TopicPartition] = []
                try:
                    assignment = ConsumerProtocolMemberAssignment.decode(m[-1]) if m[-1] else None
                except Exception:  # noqa: BLE001 - a foreign protocol's bytes can fail the decoder any way: show the member anyway
                    assignment = None
                if assignment is not None:
                    tps = [
                        TopicPartition(t, p) for t, parts in assignment.assignment for p in parts
                    ]
                members.append(
                    {
                        "member_id": m[0],
                        "client_id": m[-4],
                        "client_host": m[-3],
                        "assigned": [f"{tp.topic}:{tp.partition}" for tp in sorted(tps)],
                        "_tps": tps,
                    }
                )
    members.sort(key=lambda x: str(x["client_id"]))
    return members, state
