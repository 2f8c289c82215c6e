"""The dead-letter topic, followed: what the console lists, read once and then only what is new.

Reading the whole topic on each page load costs about half a second per 20,000 dead letters,
so one group-less consumer (it never joins or moves the workers' group) stays assigned to every
partition and, when asked, reads from where it stopped up to the end offsets of that moment:
the same bound as the DLQ tool's snapshot, reached by position because with transactions the
last offsets are control markers. ``read_committed``, as the tool, so aborted dead letters
never show. Records the broker has deleted (retention) are dropped; past :data:`MAX_KEPT` the
oldest are dropped too, and the console says so.

Replay never uses this: it takes the DLQ tool's own fresh snapshot (see
:func:`jobstream.streams.dlq.replay.replay_matching`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from pydantic import ValidationError

from jobstream.models.deadletter import DeadLetter
from jobstream.streams.dlq.snapshot import UnreachableError, first_line

FRESH_S = 1.0
"""Answers are at most this old; within it, a page load costs no broker round trip."""
MAX_KEPT = 200_000
PARTITIONS_S = 30.0
"""How often the topic's partitions (and whether it exists yet) are looked up again."""
TIMEOUT_S = 15.0


class DeadLetterTail:
    def __init__(
        self, bootstrap: str, topic: str, options: Mapping[str, Any] | None = None
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._options = dict(options or {})
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._letters: dict[tuple[int, int], DeadLetter] = {}
        self._ordered: list[DeadLetter] = []
        self._checked = 0.0
        self._parts: set[int] | None = None
        self._parts_at = 0.0
        self.unreadable = 0
        self.dropped = 0

    def invalidate(self) -> None:
        self._checked = 0.0
        self._parts_at = 0.0

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def all(self) -> tuple[list[DeadLetter], str | None]:
        """Every dead letter, oldest failure first, and a note for the page (or None)."""
        async with self._lock:
            if time.monotonic() - self._checked > FRESH_S:
                try:
                    await asyncio.wait_for(self._catch_up(), TIMEOUT_S)
                except (KafkaError, OSError, TimeoutError) as exc:
                    await self.close()
                    raise UnreachableError(
                        f"Kafka at {self._bootstrap} failed reading {self._topic}"
                        f" ({first_line(exc)})"
                    ) from exc
                self._checked = time.monotonic()
            letters = self._ordered
        if self._parts is None:
            return [], f"topic {self._topic} does not exist yet (no dead letters)"
        notes = []
        if self.unreadable:
            notes.append(f"{self.unreadable} records in {self._topic} are not dead letters")
        if self.dropped:
            notes.append(f"only the newest {MAX_KEPT:,} are kept here")
        return letters, "; ".join(notes) or None

    async def _start(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            client_id="jobstream-console",
            request_timeout_ms=int(TIMEOUT_S * 1000),
            **self._options,
        )
        await consumer.start()
        return consumer

    async def _partitions(self) -> set[int] | None:
        """The topic's partitions, None when it does not exist; found from the listing of all
        topics first, since asking a broker about one topic by name can create it."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap,
            client_id="jobstream-console",
            request_timeout_ms=int(TIMEOUT_S * 1000),
            **self._options,
        )
        await admin.start()
        try:
            if self._topic not in await admin.list_topics():
                return None
            (described,) = await admin.describe_topics([self._topic])
        finally:
            await admin.close()
        return {p["partition"] for p in described["partitions"]}

    async def _catch_up(self) -> None:
        if self._parts is None or time.monotonic() - self._parts_at > PARTITIONS_S:
            self._parts = await self._partitions()
            self._parts_at = time.monotonic()
        if self._parts is None:
            return
        if self._consumer is None:
            self._consumer = await self._start()
        consumer = self._consumer
        tps = {TopicPartition(self._topic, p) for p in self._parts}
        if tps != consumer.assignment():
            consumer.assign(sorted(tps))  # new partitions start at their beginning
        ends = await consumer.end_offsets(sorted(tps))
        begins = await consumer.beginning_offsets(sorted(tps))
        changed = self._forget_deleted(begins)
        pending = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        consumer.resume(*tps)
        consumer.pause(*(tps - pending))
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in batch.items():
                for rec in records:
                    if rec.offset >= ends[tp]:
                        continue
                    dl = _parse(rec.value)
                    if dl is None:
                        self.unreadable += 1
                        continue
                    self._letters[(tp.partition, rec.offset)] = dl
                    changed = True
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
        if changed:
            self._trim()
            self._ordered = sorted(
                self._letters.values(),
                key=lambda d: (
                    _aware(d),
                    d.source_topic,
                    d.source_partition,
                    d.source_offset,
                ),
            )

    def _forget_deleted(self, begins: Mapping[TopicPartition, int]) -> bool:
        first = {tp.partition: off for tp, off in begins.items()}
        gone = [k for k in self._letters if k[1] < first.get(k[0], 0)]
        for k in gone:
            del self._letters[k]
        return bool(gone)

    def _trim(self) -> None:
        excess = len(self._letters) - MAX_KEPT
        if excess > 0:
            for k in sorted(self._letters, key=lambda k: _aware(self._letters[k]))[:excess]:
                del self._letters[k]
            self.dropped += excess


def _aware(dl: DeadLetter) -> Any:
    at = dl.last_failure_at
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _parse(value: bytes | None) -> DeadLetter | None:
    if value is None:
        return None
    try:
        return DeadLetter.model_validate_json(value)
    except (ValidationError, ValueError):
        return None
