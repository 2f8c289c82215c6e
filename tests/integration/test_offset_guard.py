"""faust #606 against real Kafka: a slow job at offset N, a fast one at N+1, SIGKILL, restart.

With faust's stock guard the group commits N+2 while N still runs, and N is lost. Here the
committed offset must stay at N, and N must be processed after the restart.
"""

from __future__ import annotations

import asyncio

import asyncpg
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from jobstream.streams.producer.client import JobClient
from tests.integration.harness import WorkerFactory, topic_reader, wait_for, wait_terminal


async def committed_offset(bootstrap: str, group: str, topic: str) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    meta = offsets.get(TopicPartition(topic, 0))
    return None if meta is None or meta.offset < 0 else meta.offset


async def test_sigkill_with_slow_head_loses_nothing(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    # a short lease: the restarted worker takes the dead one's claim on the slow job over soon
    env = {
        "JOBSTREAM_PARTITIONS": "1",
        "JOBSTREAM_CONCURRENCY": "4",
        "JOBSTREAM_CLAIM_LEASE_S": "3",
    }
    worker = workers.start("first", **env)
    await worker.wait_assigned()
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        slow = await client.submit("sleep", {"seconds": 8})  # offset 0
        fast = await client.submit("echo", {"n": 1})  # offset 1
        fast2 = await client.submit("echo", {"n": 2})  # offset 2

    await wait_terminal(pg_pool, [fast, fast2], timeout=60)
    # Give faust several commit intervals (0.5 s each) to commit whatever it would commit. This
    # bounded quiet period is the assertion itself: nothing may pass the running offset 0 while
    # it lasts, and no event marks "faust tried to commit". The slow job (8 s) outlasts it.
    await asyncio.sleep(2.0)
    before_kill = await committed_offset(kafka_bootstrap, prefix, prefix)
    # the slow job is claimed (running), not finished
    assert await pg_pool.fetchval("SELECT status FROM jobs WHERE job_id = $1", slow) == "running"
    assert before_kill in (None, 0), f"commit passed the running offset 0: {before_kill}"

    worker.kill()
    restarted = workers.start("second", **env)
    await restarted.wait_assigned()
    await wait_terminal(pg_pool, [slow], timeout=60)

    rows = {
        r["job_id"]: r
        for r in await pg_pool.fetch(
            "SELECT job_id, status, executions, worker, takeovers FROM jobs WHERE job_id = ANY($1)",
            [slow, fast, fast2],
        )
    }
    assert rows[slow]["status"] == "succeeded"
    assert rows[slow]["worker"] == "second"
    assert rows[slow]["takeovers"] == 1  # the dead worker's claim, taken over after its lease
    # the fast jobs were redelivered (the commit could not pass offset 0) but not re-run
    assert rows[fast]["executions"] == 1
    assert rows[fast2]["executions"] == 1

    async def committed_past_all() -> bool:
        return (await committed_offset(kafka_bootstrap, prefix, prefix) or 0) >= 3

    await wait_for(committed_past_all, timeout=30, what="commit after the restart")


async def test_after_a_sigkill_what_was_finished_past_a_slow_head_is_not_redone(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    """The commit cannot pass the running offset 0, but its metadata says which offsets past
    it are finished: the next owner acks those at once instead of redoing them (before: every
    one re-emitted its outcome)."""
    env = {
        "JOBSTREAM_PARTITIONS": "1",
        "JOBSTREAM_CONCURRENCY": "8",
        "JOBSTREAM_CLAIM_LEASE_S": "3",
    }
    worker = workers.start("first", **env)
    await worker.wait_assigned()
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        slow = await client.submit("sleep", {"seconds": 8})  # offset 0
        fast = await client.submit_many([client.build("echo", {"n": i}) for i in range(50)])

    await wait_terminal(pg_pool, fast, timeout=60)

    async def said_in_a_commit() -> bool:
        return bool(await committed_metadata(kafka_bootstrap, prefix, prefix))

    await wait_for(said_in_a_commit, timeout=10, what="a commit saying what is done past 0")
    assert await committed_offset(kafka_bootstrap, prefix, prefix) in (None, 0)

    worker.kill()
    restarted = workers.start("second", **env)
    await restarted.wait_assigned()
    await wait_terminal(pg_pool, [slow], timeout=60)

    async def skipped() -> float | None:
        value = await restarted.metric("jobstream_records_skipped_total")
        return value if value else None

    assert await wait_for(skipped, timeout=30, what="the finished records skipped") == 50
    async with topic_reader(kafka_bootstrap, f"{prefix}.outcomes") as reader:
        outcomes = await reader.caught_up(timeout=30)
    reemitted = [o for o in reader.json() if o["reemitted"]]
    assert reemitted == [], f"{len(reemitted)} finished job(s) redone"
    assert len(outcomes) == 51


async def committed_metadata(bootstrap: str, group: str, topic: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    meta = offsets.get(TopicPartition(topic, 0))
    return meta.metadata if meta is not None and meta.metadata else ""
