"""The lag a worker exports equals what the broker says, on a group with a known backlog.

One replica with concurrency 1 runs a job that sleeps for minutes, so everything published
after it waits: nothing on the main topic is committed meanwhile and the backlog is known. A job
that fails once sits in the 1-minute retry tier. The worker's /metrics must then show, per
partition, log-end minus committed exactly as the broker reports them (offsets read with an admin
client and a group-less consumer), time lags that match the waiting records' own timestamps, and
the held retry event. With two replicas each reports only its own partitions, the two together
add up to the broker's answer, and a replica that leaves hands its series to the one that stays.
"""

from __future__ import annotations

import time
from collections import defaultdict

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from jobstream.streams.kafka.admin import ensure_topics
from jobstream.streams.metrics import Metrics
from jobstream.streams.producer.client import JobClient
from jobstream.streams.topics import topic_names
from jobstream.streams.worker.lag import LagMonitor
from tests.integration.harness import WorkerFactory, wait_for

BACKLOG = 12
PARTITIONS = 3
SAMPLE_S = 0.5
AGE_S = 3.0

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


async def scrape(http: aiohttp.ClientSession, port: int) -> Samples:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    out: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


def by_partition(samples: Samples, name: str, **match: str) -> dict[int, float]:
    found = {}
    for labels, value in samples.get(name, {}).items():
        d = dict(labels)
        if all(d.get(k) == v for k, v in match.items()):
            found[int(d["partition"])] = value
    return found


async def broker_lag(
    bootstrap: str, group: str, topic: str, partitions: int = PARTITIONS
) -> dict[int, int]:
    """The broker's answer: end offset minus the committed one (log start if none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
    finally:
        await consumer.stop()
        await admin.close()
    lag = {}
    for tp in tps:
        meta = committed.get(tp)
        start = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
        lag[tp.partition] = ends[tp] - start
    return lag


async def oldest_timestamps(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The Kafka timestamp of the record at each partition's committed offset."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        consumer.assign(tps)
        for tp in tps:
            meta = committed.get(tp)
            consumer.seek(tp, meta.offset if meta is not None and meta.offset >= 0 else 0)
        found: dict[int, int] = {}

        async def all_read() -> bool:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                if records:
                    found.setdefault(tp.partition, records[0].timestamp)
            return len(found) == PARTITIONS

        await wait_for(all_read, timeout=10, interval=0, what="one record per partition")
        return found
    finally:
        await consumer.stop()
        await admin.close()


async def test_exported_lag_equals_the_brokers_answer(
    workers: WorkerFactory,
    kafka_bootstrap: str,
    pg_pool: asyncpg.Pool,
    prefix: str,
    http: aiohttp.ClientSession,
) -> None:
    worker = workers.start(
        JOBSTREAM_CONCURRENCY="1",
        JOBSTREAM_PARTITIONS=str(PARTITIONS),
        JOBSTREAM_RETRY_TIERS_S="[60]",
        JOBSTREAM_LAG_SAMPLE_INTERVAL_S=str(SAMPLE_S),
    )
    await worker.wait_assigned()
    names = topic_names(prefix, (60.0,))
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        retried = await client.submit("sleep", {"seconds": 0, "fail_attempts": 1})

        async def in_tier() -> bool:
            q = "SELECT status FROM jobs WHERE job_id = $1"
            return bool(await pg_pool.fetchval(q, retried) == "retrying")

        await wait_for(in_tier, timeout=30, what="the failing job in the retry tier")
        blocker = await client.submit("sleep", {"seconds": 600})
        del blocker
        await client.submit_many(client.build("echo", {"n": i}) for i in range(BACKLOG - 1))

    # the backlog is known once the retried job's offset is committed: BACKLOG events wait
    async def settled() -> dict[int, int] | None:
        lag = await broker_lag(kafka_bootstrap, prefix, names.main)
        return lag if sum(lag.values()) == BACKLOG else None

    expected = await wait_for(settled, timeout=30, what=f"a broker lag of {BACKLOG}")
    assert expected is not None

    async def exported_equals_broker() -> Samples | None:
        samples = await scrape(http, worker.web_port)
        got = by_partition(samples, "jobstream_consumer_lag_events", group=prefix)
        return samples if got == {p: float(n) for p, n in expected.items()} else None

    samples = await wait_for(
        exported_equals_broker, timeout=20, what="exported lag equal to the broker's"
    )
    assert samples is not None
    # nothing moved meanwhile: the broker still says the same
    assert await broker_lag(kafka_bootstrap, prefix, names.main) == expected

    # time lag: the age of the event at each partition's committed offset (the oldest one not
    # finished; running on one partition, waiting on the others), as of the last sample, once
    # the backlog is a few seconds old
    async def aged() -> Samples | None:
        samples = await scrape(http, worker.web_port)
        got = by_partition(samples, "jobstream_consumer_lag_seconds", group=prefix)
        waiting = [got.get(p, 0) for p, n in expected.items() if n]
        return samples if min(waiting) >= AGE_S else None

    samples = await wait_for(aged, timeout=30, what=f"time lags of {AGE_S}s")
    assert samples is not None
    scraped_ms = time.time() * 1000
    timestamps = await oldest_timestamps(kafka_bootstrap, prefix, names.main)
    ages = by_partition(samples, "jobstream_consumer_lag_seconds", group=prefix, topic=names.main)
    assert set(ages) == set(range(PARTITIONS))
    for partition, events in expected.items():
        if events == 0:
            assert ages[partition] == 0
            continue
        true_age = (scraped_ms - timestamps[partition]) / 1000
        assert true_age - SAMPLE_S - 2 <= ages[partition] <= true_age + 0.5, (partition, ages)

    # the retry tier holds one event, and says so
    tier = names.tiers[0].topic
    tier_lag = await broker_lag(kafka_bootstrap, prefix, tier)
    assert sum(tier_lag.values()) == 1
    waiting = by_partition(samples, "jobstream_retry_waiting_events", group=prefix, tier="1m")
    assert waiting == {p: float(n) for p, n in tier_lag.items()}
    held = by_partition(samples, "jobstream_retry_oldest_seconds", group=prefix, tier="1m")
    (held_partition,) = [p for p, n in tier_lag.items() if n]
    assert held[held_partition] > 0
    assert all(v == 0 for p, v in held.items() if p != held_partition)
    delay = samples["jobstream_retry_tier_delay_seconds"]
    assert delay == {(("group", prefix), ("tier", "1m")): 60.0}


async def test_each_replica_reports_exactly_the_partitions_it_owns_until_it_leaves(
    workers: WorkerFactory,
    kafka_bootstrap: str,
    prefix: str,
    http: aiohttp.ClientSession,
) -> None:
    settings = {
        "JOBSTREAM_CONCURRENCY": "1",
        "JOBSTREAM_PARTITIONS": str(PARTITIONS + 1),
        "JOBSTREAM_LAG_SAMPLE_INTERVAL_S": str(SAMPLE_S),
        "JOBSTREAM_SHUTDOWN_GRACE_S": "1",
    }
    replicas = [workers.start(**settings), workers.start(**settings)]
    for r in replicas:
        await r.wait_assigned()
    names = topic_names(prefix)
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        await client.submit_many(
            client.build("sleep", {"seconds": 600}) for _ in range(3 * (PARTITIONS + 1))
        )

    async def split_and_equal() -> list[dict[int, float]] | None:
        per_replica = [
            by_partition(await scrape(http, r.web_port), "jobstream_consumer_lag_events",
                         group=prefix, topic=names.main)
            for r in replicas
        ]  # fmt: skip
        owned = [set(p) for p in per_replica]
        if not all(owned) or owned[0] & owned[1]:
            return None  # a rebalance is still settling
        broker = await broker_lag(kafka_bootstrap, prefix, names.main, PARTITIONS + 1)
        merged = per_replica[0] | per_replica[1]
        return per_replica if merged == {p: float(n) for p, n in broker.items()} else None

    per_replica = await wait_for(
        split_and_equal, timeout=30, what="disjoint per-replica lag adding up to the broker's"
    )
    assert per_replica is not None
    assert sum(sum(p.values()) for p in per_replica) == 3 * (PARTITIONS + 1)

    # the second replica leaves: the first takes its partitions over, and reports them
    replicas[1].stop(timeout_s=30)

    async def all_on_the_first() -> bool:
        samples = await scrape(http, replicas[0].web_port)
        got = by_partition(samples, "jobstream_consumer_lag_events", group=prefix, topic=names.main)
        broker = await broker_lag(kafka_bootstrap, prefix, names.main, PARTITIONS + 1)
        return got == {p: float(n) for p, n in broker.items()}

    await wait_for(all_on_the_first, timeout=60, what="the remaining replica reporting all")


async def test_the_lag_monitor_keeps_the_metadata_of_its_own_topics_only(
    kafka_bootstrap: str, prefix: str
) -> None:
    """A replica's lag clients track the group's topics: not the whole cluster's metadata, which
    aiokafka keeps (and re-reads every 5 minutes and on each unsubscribe) for a client that
    names no topics (thousands of partitions per replica on a shared cluster)."""
    names = topic_names(prefix, (60.0,))
    other = f"{prefix}-not-ours"
    await ensure_topics(kafka_bootstrap, [*names.all(), other], partitions=PARTITIONS)
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        await client.submit_many(client.build("echo", {"n": i}) for i in range(BACKLOG))
    owned = [(t, p) for t in (names.main, names.tiers[0].topic) for p in range(PARTITIONS)]
    monitor = LagMonitor(
        bootstrap=kafka_bootstrap,
        group=prefix,
        topics=names,
        metrics=Metrics(),
        assignment=lambda: owned,
        in_flight={},
        interval_s=0.2,
    )
    await monitor.start()
    try:
        for _ in range(3):
            lags = await monitor.sample()
        assert sum(lag.events for lag in lags) == BACKLOG  # nothing consumed: all of it waits
        assert all(lag.oldest_timestamp_ms for lag in lags if lag.events)  # records were read
        ours = {names.main, *(t.topic for t in names.tiers)}
        for client_ in (monitor._admin, monitor._peek):
            assert client_ is not None
            await client_._client.force_metadata_update()
            assert client_._client.cluster.topics() <= ours, client_
    finally:
        await monitor.stop()
