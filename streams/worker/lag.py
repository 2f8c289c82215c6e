"""Consumer lag measured by the worker itself, for the partitions this replica owns.

Lag used to come only from an external exporter, which the chart does not ship and whose
series name the group and topic. Each replica knows its own assignment, so it can answer for
exactly its partitions: the offset lag (log-end minus the group's committed offset, as the broker
reports both, i.e. what ``kafka-consumer-groups --describe`` and KEDA see) and the time lag (age
of the oldest unfinished event). For retry tiers the same two figures mean "events waiting to be
republished" and "age of the oldest one held".

The oldest unfinished event of a partition is the oldest one being worked on, if any (events
before it are finished); otherwise, when there is a backlog, the event at the committed offset,
whose timestamp is read once with a group-less consumer and cached while that offset stays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from jobstream.streams.metrics import Metrics
from jobstream.streams.topics import TopicNames

log = logging.getLogger(__name__)

Partition = tuple[str, int]
InFlight = Mapping[Partition, Mapping[int, int | None]]


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    events: int
    """Log-end offset minus the committed offset (or the log start, before any commit)."""
    oldest_offset: int | None
    """The oldest unfinished event's offset; None when the partition is caught up."""
    oldest_timestamp_ms: int | None = None

    def age_s(self, now_ms: int) -> float:
        if self.oldest_offset is None or self.oldest_timestamp_ms is None:
            return 0.0
        return max(0.0, (now_ms - self.oldest_timestamp_ms) / 1000)


def partition_lag(
    tp: Partition,
    *,
    committed: int | None,
    log_start: int,
    log_end: int,
    in_flight: Mapping[int, int | None],
) -> PartitionLag:
    """Lag of one partition from the broker's offsets and the records being worked on.

    ``committed`` None means the group never committed here: consumption starts at the log
    start (the app resets to earliest), so everything from there on is lag. A committed offset
    below the log start (retention deleted unread events) counts from the log start too.
    """
    start = log_start if committed is None or committed < log_start else committed
    events = max(0, log_end - start)
    running = [o for o in in_flight if start <= o < log_end]
    if running:
        oldest = min(running)
        return PartitionLag(tp[0], tp[1], events, oldest, in_flight[oldest])
    return PartitionLag(tp[0], tp[1], events, start if events else None)


class LagMonitor:
    """Samples the lag of the owned partitions every ``interval_s`` and sets the gauges."""

    def __init__(
        self,
        *,
        bootstrap: str,
        group: str,
        topics: TopicNames,
        metrics: Metrics,
        assignment: Callable[[], Iterable[Partition]],
        in_flight: InFlight,
        interval_s: float = 5.0,
        options: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``assignment`` returns this replica's partitions (faust's ``consumer.assignment()``);
        it may raise while the consumer is not started. ``options`` are extra aiokafka client
        arguments (TLS, SASL)."""
        self.bootstrap = bootstrap
        self.group = group
        self.topics = topics
        self.metrics = metrics
        self.assignment = assignment
        self.in_flight = in_flight
        self.interval_s = interval_s
        self.options = dict(options or {})
        self.clock = clock
        self._tiers = {t.topic: t.label for t in topics.tiers}
        self._ours = [topics.main, *self._tiers]
        self._admin: AIOKafkaAdminClient | None = None
        self._peek: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._timestamps: dict[Partition, tuple[int, int | None]] = {}
        self._exported: set[Partition] = set()
        self.last: list[PartitionLag] = []

    async def start(self) -> None:
        common = {"bootstrap_servers": self.bootstrap, **self.options}
        self._admin = AIOKafkaAdminClient(client_id=f"{self.group}-lag", **common)
        await self._admin.start()
        # group-less: it reads offsets and single records, never joins the workers' group
        self._peek = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            client_id=f"{self.group}-lag",
            **common,
        )
        await self._peek.start()
        # Without topics of their own, aiokafka's clients keep (and refresh, every 5 min and on
        # each unsubscribe) the metadata of every topic in the cluster: thousands of partitions
        # parsed and held per replica on a busy cluster. No public call sets them for an admin
        # client, hence its ``_client``.
        self._admin._client.set_topics(self._ours)
        self._peek._client.set_topics(self._ours)
        for tier in self.topics.tiers:
            label = self._tiers[tier.topic]
            self.metrics.retry_tier_delay.labels(group=self.group, tier=label).set(tier.delay_s)
        self._task = asyncio.create_task(self._run(), name="lag-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # our own cancel; a cancel of stop() still raises
            self._task = None
        if self._peek is not None:
            await self._peek.stop()
            self._peek = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self.sample()
                if failing:
                    log.info("lag samples work again")
                failing = False
            except Exception as exc:  # noqa: BLE001 - a monitor must never take the worker down
                self.metrics.lag_sample_errors.inc()
                if not failing:  # one line per outage, the counter counts the rest
                    log.warning("lag sample failed: %s", type(exc).__name__)
                failing = True
            await asyncio.sleep(self.interval_s)

    def _owned(self) -> list[TopicPartition]:
        ours = {self.topics.main, *self._tiers}
        try:
            assigned = list(self.assignment())
        except Exception:  # noqa: BLE001 - faust raises ConsumerNotStarted before it joined; no assignment either way
            return []
        return sorted(TopicPartition(t, p) for t, p in assigned if t in ours)

    async def sample(self) -> list[PartitionLag]:
        """One measurement of every owned partition; also sets (and clears) the gauges."""
        assert self._admin is not None
        assert self._peek is not None
        owned = self._owned()
        lags: list[PartitionLag] = []
        if owned:
            offsets = await self._admin.list_consumer_group_offsets(self.group, partitions=owned)
            ends = await self._peek.end_offsets(owned)
            starts = await self._peek.beginning_offsets(owned)
            for tp in owned:
                meta = offsets.get(tp)
                committed = meta.offset if meta is not None and meta.offset >= 0 else None
                lags.append(
                    partition_lag(
                        (tp.topic, tp.partition),
                        committed=committed,
                        log_start=starts[tp],
                        log_end=ends[tp],
                        in_flight=dict(self.in_flight.get((tp.topic, tp.partition), {})),
                    )
                )
            lags = await self._with_timestamps(lags)
        self._export(lags)
        self.last = lags
        return lags

    async def _with_timestamps(self, lags: list[PartitionLag]) -> list[PartitionLag]:
        """Fill in the timestamp of each waiting (not running) oldest event, read once each."""
        wanted = {
            (lag.topic, lag.partition): lag.oldest_offset
            for lag in lags
            if lag.oldest_offset is not None and lag.oldest_timestamp_ms is None
        }
        missing = {tp: o for tp, o in wanted.items() if self._timestamps.get(tp, (-1,))[0] != o}
        if missing:
            found = await self._read_timestamps(missing)
            for tp, offset in missing.items():
                if tp in found:
                    self._timestamps[tp] = (offset, found[tp])
        out = []
        for lag in lags:
            tp = (lag.topic, lag.partition)
            cached = self._timestamps.get(tp)
            if tp in wanted and cached is not None and cached[0] == wanted[tp]:
                lag = replace(lag, oldest_timestamp_ms=cached[1])
            out.append(lag)
        return out

    async def _read_timestamps(
        self, offsets: Mapping[Partition, int], timeout_s: float = 2.0
    ) -> dict[Partition, int | None]:
        assert self._peek is not None
        tps = {TopicPartition(*tp): o for tp, o in offsets.items()}
        self._peek.assign(list(tps))  # unpaused; it tracks only these partitions' topics now
        self._peek._client.set_topics(self._ours)
        for tp, offset in tps.items():
            self._peek.seek(tp, offset)
        found: dict[Partition, int | None] = {}
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            while len(found) < len(tps) and asyncio.get_running_loop().time() < deadline:
                pending = [tp for tp in tps if (tp.topic, tp.partition) not in found]
                batch = await self._peek.getmany(*pending, timeout_ms=200, max_records=len(pending))
                for tp, records in batch.items():
                    if records:
                        found[(tp.topic, tp.partition)] = records[0].timestamp
        finally:
            # no background fetching between samples; not ``unsubscribe()``, which would drop
            # the topics and fetch the whole cluster's metadata
            self._peek.pause(*tps)
        return found

    def _export(self, lags: list[PartitionLag]) -> None:
        m, now_ms = self.metrics, int(self.clock() * 1000)
        current: set[Partition] = set()
        for lag in lags:
            tp = (lag.topic, lag.partition)
            current.add(tp)
            part = str(lag.partition)
            tier = self._tiers.get(lag.topic)
            if tier is None:
                labels = {"group": self.group, "topic": lag.topic, "partition": part}
                m.consumer_lag.labels(**labels).set(lag.events)
                m.consumer_lag_seconds.labels(**labels).set(lag.age_s(now_ms))
            else:
                labels = {"group": self.group, "tier": tier, "partition": part}
                m.retry_waiting.labels(**labels).set(lag.events)
                m.retry_oldest_seconds.labels(**labels).set(lag.age_s(now_ms))
        # a partition handed to another replica is that replica's to report
        for topic, partition in self._exported - current:
            tier = self._tiers.get(topic)
            if tier is None:
                m.consumer_lag.remove(self.group, topic, str(partition))
                m.consumer_lag_seconds.remove(self.group, topic, str(partition))
            else:
                m.retry_waiting.remove(self.group, tier, str(partition))
                m.retry_oldest_seconds.remove(self.group, tier, str(partition))
            self._timestamps.pop((topic, partition), None)
        self._exported = current
