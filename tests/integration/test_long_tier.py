"""A retry tier that holds an event far longer than max.poll.interval causes no rebalance.

The worker runs with a 4 s max poll interval and a 6 s session timeout; the job's retry tier
holds it for 15 s. The group's member must stay the same meanwhile (a consumer that missed its
poll deadline leaves and rejoins under a new member id), and the job must come back and succeed.
"""

from __future__ import annotations

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from jobstream.streams.producer.client import JobClient
from tests.integration.harness import WorkerFactory, wait_for, wait_terminal

HOLD_S = 15


async def members(bootstrap: str, group: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    [(error, _, state, *_, group_members)] = response.groups
    assert error == 0, (error, state)
    assert state == "Stable", (error, state)
    return sorted(m[0] for m in group_members)


async def test_a_long_hold_in_a_retry_tier_causes_no_rebalance(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    worker = workers.start(
        JOBSTREAM_RETRY_TIERS_S=f"[{HOLD_S}]",
        JOBSTREAM_MAX_POLL_INTERVAL_S="4",
        JOBSTREAM_SESSION_TIMEOUT_S="6",
    )
    await worker.wait_assigned()
    before = await members(kafka_bootstrap, prefix)
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        job_id = await client.submit("sleep", {"seconds": 0, "fail_attempts": 1})

        async def held() -> bool:  # the first attempt failed: the retry is in the tier now
            status = await pg_pool.fetchval("SELECT status FROM jobs WHERE job_id = $1", job_id)
            return bool(status == "retrying")

        await wait_for(held, timeout=30, what="the first attempt to fail")
        # other work keeps flowing on the main topic while the tier holds the retry
        other = await client.submit("echo", {"during": "hold"})
    await wait_terminal(pg_pool, [other], timeout=10)
    assert await pg_pool.fetchval("SELECT status FROM jobs WHERE job_id = $1", job_id) == (
        "retrying"
    )

    await wait_terminal(pg_pool, [job_id], timeout=HOLD_S * 3)
    row = await pg_pool.fetchrow("SELECT status, attempt FROM jobs WHERE job_id = $1", job_id)
    assert row is not None
    assert (row["status"], row["attempt"]) == ("succeeded", 2)
    assert await members(kafka_bootstrap, prefix) == before
    assert worker.log_text().count("Joined group") == 1, worker.tail()
