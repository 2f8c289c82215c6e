"""A faust consumer whose commit offset never passes an unfinished event.

faust-streaming 0.15.3 (``faust.transport.consumer.Consumer._new_offset``, upstream #606)
guards the head of the acked list with ``min(acked) - committed > 1``. The stored committed
offset is the *next* offset to read, so with ``concurrency > 1`` offset C still running and C+1
acked makes the commit jump to C+2: if the process dies, C is never processed. The guard is also
skipped while nothing was committed yet (``None`` or 0). This subclass replaces the guard with
the correct one: the acked run must start exactly at the next offset to read, which is the
committed offset or, before the first commit, the first offset this assignment delivered.

Also: faust acks an event in a ``finally`` even when its agent was cancelled, so at shutdown
every event an agent held but never finished would count as done and be committed by the
consumer's last commit. ``freeze_commits`` (called by the worker right after its own final
commit) makes every later commit a no-op, so those offsets stay for the next owner.

The broker may hold a fetch for at most ``FETCH_MAX_WAIT_MS`` (faust hard-codes 1,500 ms).

The transport is registered under the URL scheme ``jobstream://`` (entry point
``faust.transports`` in pyproject), so the app selects it with ``broker="jobstream://host:port"``.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from faust.utils.functional import consecutive_numbers

FETCH_MAX_WAIT_MS = 100
"""How long the broker may hold a fetch for data to arrive. faust hard-codes 1,500 ms, and a
partition resumed after faust paused it (its buffer was full) is only fetched again once the
fetch in flight returns: with the other partitions idle, up to 1.5 s of stall with records
waiting. aiokafka's own default is 500 ms; 100 ms costs an idle replica ten empty fetches per
second."""


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # read by AIOKafkaConsumer.start() when it builds its fetcher (not a constructor
        # argument faust lets through)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class SafeOffsetConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._head_offset: dict[TP, int] = {}
        self.commits_frozen = False

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def freeze_commits(self) -> None:
        self.commits_frozen = True

    def _to_message(self, tp: TP, record: Any) -> ConsumerMessage:
        # Called in offset order for every fetched record, so the lowest offset fetched since
        # the assignment is where consumption (re)started. (faust's streams inline their own
        # message tracking, so Consumer.track_message is not a usable hook.)
        head = self._head_offset.get(tp)
        if head is None or record.offset < head:
            self._head_offset[tp] = record.offset
        return super()._to_message(tp, record)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self._head_offset.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        # A re-assignment seeks back to the committed offset: forget the old head.
        for tp in assigned:
            self._head_offset.pop(tp, None)
        await super().on_partitions_assigned(assigned, generation_id)

    def expected_head(self, tp: TP) -> int | None:
        committed = self._committed_offset[tp]
        return committed if committed is not None else self._head_offset.get(tp)

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        if not acked or self.commits_frozen:
            return None
        self._merge_gaps(tp, acked)
        acked.sort()
        head = self.expected_head(tp)
        if head is None or acked[0] > head:
            return None  # the next offset to read is not finished: nothing may be committed
        batch = next(consecutive_numbers(acked))
        acked[: len(batch)] = []
        self._acked_index[tp].difference_update(batch)
        return batch[-1] + 1

    def _merge_gaps(self, tp: TP, acked: list[int]) -> None:
        """Offsets known to be absent (compaction, transaction markers) count as acked."""
        gap_for_tp = self._gap[tp]
        if not gap_for_tp:
            return
        max_offset = max(acked)
        candidates = sorted(gap_for_tp.overlap(0, max_offset), key=lambda x: x.begin)
        if candidates:
            stuff_to_add: list[int] = []
            for entry in candidates:
                stuff_to_add.extend(range(entry.begin, entry.end))
            new_max_offset = max(stuff_to_add[-1], max_offset + 1)
            acked.extend(stuff_to_add)
            gap_for_tp.chop(0, new_max_offset)


class Transport(faust_aiokafka.Transport):
    Consumer = SafeOffsetConsumer
