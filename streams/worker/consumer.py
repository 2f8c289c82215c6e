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

import asyncio
import base64
import zlib
from collections.abc import Iterable, Mapping
from time import monotonic
from typing import Any, cast

from aiokafka.errors import CommitFailedError
from aiokafka.structs import OffsetAndMetadata
from faust.transport.consumer import CONSUMER_FETCHING
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
    committed_metadata: dict[TP, str]
    """The metadata of each assigned partition's committed offset, read at the last seek."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # read by AIOKafkaConsumer.start() when it builds its fetcher (not a constructor
        # argument faust lets through)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer

    async def seek_to_committed(self) -> Mapping[TP, int]:
        offsets = await super().seek_to_committed()
        self.committed_metadata = await self.call_thread(self._fetch_metadata)
        return offsets

    async def _fetch_metadata(self) -> dict[TP, str]:
        consumer = self._ensure_consumer()
        assigned = list(consumer.assignment())
        # aiokafka reads each committed offset's metadata only through its coordinator
        found = await consumer._coordinator.fetch_committed_offsets(assigned)
        return {TP(tp.topic, tp.partition): om.metadata or "" for tp, om in found.items()}

    async def commit_with(self, offsets: Mapping[TP, int], metadata: Mapping[TP, str]) -> bool:
        return bool(await self.call_thread(self._commit_with, offsets, metadata))

    async def _commit_with(self, offsets: Mapping[TP, int], metadata: Mapping[TP, str]) -> bool:
        """faust's ``_commit``, each offset with its metadata."""
        consumer = self._ensure_consumer()
        assignment = self.assignment()
        committable = {tp: offset for tp, offset in offsets.items() if tp in assignment}
        try:
            await consumer.commit(
                {
                    faust_aiokafka.ensure_aiokafka_TP(tp): OffsetAndMetadata(
                        offset, metadata.get(tp, "")
                    )
                    for tp, offset in committable.items()
                }
            )
        except CommitFailedError as exc:
            if "already rebalanced" in str(exc):
                return False
            await self.crash(exc)
            return False
        except Exception as exc:  # noqa: BLE001 - faust's own policy: a failed commit crashes
            await self.crash(exc)
            return False
        now = monotonic()
        self.tp_last_committed_at.update({tp: now for tp in committable})
        return True


class SafeOffsetConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._head_offset: dict[TP, int] = {}
        self.commits_frozen = False
        self._done: dict[TP, frozenset[int]] = {}
        """Offsets past the committed one that a previous owner finished (from the commit's
        metadata): their records are acked at once, not run again."""
        self._sent_done: dict[TP, tuple[int, int]] = {}
        """(committed offset, offsets past it) as last written into a commit's metadata."""

    # -- done past the commit ------------------------------------------------------------------
    # The committed offset cannot pass an unfinished record, so a slow record at the head of a
    # partition holds back the commit of everything finished after it: a SIGKILL then had the
    # next owner redo all of that (a third of the chaos test's 20,000 jobs re-emitted their
    # outcomes). Every commit also writes, as its metadata, which offsets past it are finished
    # already; the next owner reads it when it seeks and skips those records.

    def already_done(self, tp: TP, offset: int) -> bool:
        done = self._done.get(tp)
        return done is not None and offset in done

    async def perform_seek(self) -> None:
        await super().perform_seek()
        thread = self._thread
        assert isinstance(thread, _ConsumerThread)
        metadata = getattr(thread, "committed_metadata", {})
        self._done = {}
        for tp, text in metadata.items():
            decoded = decode_done(text)
            # faust keeps a committed offset of 0 as None
            if decoded is not None and decoded[0] == (self._committed_offset.get(tp) or 0):
                self._done[tp] = decoded[1]

    def _filter_committable_offsets(self, tps: Iterable[TP]) -> dict[TP, int]:
        offsets: dict[TP, int] = {}
        for tp in tps:
            offset = self._new_offset(tp)
            if offset is not None and self._should_commit(tp, offset):
                offsets[tp] = offset
                continue
            head = self.expected_head(tp)
            # the offset stays (its head is unfinished), but more past it is finished now
            if head is not None and self._sent_done.get(tp) != (head, len(self._acked[tp])):
                offsets[tp] = head
        return offsets

    def _should_commit(self, tp: TP, offset: int) -> bool:
        return not self.commits_frozen and super()._should_commit(tp, offset)

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        if self.commits_frozen:
            return False
        metadata = {tp: encode_done(offset, self._acked[tp]) for tp, offset in offsets.items()}
        thread = self._thread
        assert isinstance(thread, _ConsumerThread)
        committed = await thread.commit_with(offsets, metadata)
        if committed:
            for tp, offset in offsets.items():
                self._sent_done[tp] = (offset, len(self._acked[tp]))
                done = self._done.get(tp)
                if done:  # what the commit passed needs no skipping any more
                    self._done[tp] = frozenset(o for o in done if o >= offset)
        return committed

    # -- delivery -------------------------------------------------------------------------------

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - the real loop
        """faust's fetch loop, without four tasks per record where none is needed.

        faust delivers each record with ``wait_first(callback(message), suspend_flow.wait())``:
        the callback raced against a rebalance suspending the flow, which creates four tasks
        (callback, suspend_flow, stopped, crashed) and cancels three, per record. A topic whose
        channel never blocks (the main topic: ``MainIntake.full()`` is always False) only waits
        in that callback while the flow is suspended, so while the flow is active its records
        are delivered by a plain await. Everything else is faust's loop as it is
        (faust-streaming 0.11, ``Consumer._drain_messages``).
        """
        try:
            await self._fetch_loop(fetcher)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _fetch_loop(self, fetcher: Any) -> None:  # pragma: no cover - the real loop
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        flow_active = self.app.flow_control.is_active
        direct = {
            name
            for channel in self.app.topics
            if getattr(channel, "never_blocks", False)
            for name in channel.topics
        }
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait = cast("Any", getmany(timeout=1.0))
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if message.topic in direct and flow_active():
                            await callback(message)
                        else:
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                unset_flag(CONSUMER_FETCHING)

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


DONE_PREFIX = "jsdone1"
DONE_MAX_BITS = 20_000
"""Offsets past the commit a metadata string can say are done (a bitmap, compressed: Kafka keeps
at most ``offset.metadata.max.bytes``, 4,096 by default, per partition)."""


def encode_done(committed: int, acked: Iterable[int]) -> str:
    """The finished offsets past ``committed`` as a commit's metadata (empty: none)."""
    bits = bytearray((DONE_MAX_BITS + 7) // 8)
    found = False
    for offset in acked:
        i = offset - committed
        if 0 <= i < DONE_MAX_BITS:
            bits[i // 8] |= 1 << (i % 8)
            found = True
    if not found:
        return ""
    packed = base64.b64encode(zlib.compress(bytes(bits).rstrip(b"\0"), 9)).decode()
    text = f"{DONE_PREFIX}:{committed}:{packed}"
    return text if len(text) <= 3500 else ""  # a scattered set: redone rather than refused


def decode_done(text: str) -> tuple[int, frozenset[int]] | None:
    """(committed offset, finished offsets past it) of a metadata ``encode_done`` wrote."""
    try:
        prefix, committed, packed = text.split(":", 2)
        if prefix != DONE_PREFIX:
            return None
        bits = zlib.decompress(base64.b64decode(packed))
        base = int(committed)
    except (ValueError, zlib.error):
        return None
    return base, frozenset(
        base + i * 8 + b for i, byte in enumerate(bits) for b in range(8) if byte >> b & 1
    )


class TopicScopedProducer(faust_aiokafka.Producer):
    """faust's producer, tracking the app's topics only.

    faust sends nothing through it here (the runtime has its own producer), so its aiokafka
    client names no topics, and aiokafka then keeps the metadata of every topic in the cluster
    and re-reads it every 5 minutes: thousands of partitions held and parsed per replica on a
    busy cluster, and an RSS that steps up with every topic anyone creates.
    """

    async def on_start(self) -> None:
        await super().on_start()
        names = sorted({name for channel in self.transport.app.topics for name in channel.topics})
        if names and self._producer is not None:
            self._producer.client.set_topics(names)


class Transport(faust_aiokafka.Transport):
    Consumer = SafeOffsetConsumer
    Producer = TopicScopedProducer
