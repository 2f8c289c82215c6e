"""Bounded concurrency at 500 for I/O-bound jobs: it really runs 500 at once, never more."""

from __future__ import annotations

import asyncio

import asyncpg

from jobstream.streams.producer.client import JobClient
from tests.integration.harness import WorkerFactory, wait_terminal

CONCURRENCY = 500


async def test_500_io_bound_jobs_run_at_once_and_no_more(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    worker = workers.start(JOBSTREAM_CONCURRENCY=str(CONCURRENCY), JOBSTREAM_PARTITIONS="8")
    await worker.wait_assigned()
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        ids = await client.submit_many(
            [client.build("sleep", {"seconds": 2}) for _ in range(CONCURRENCY * 2)]
        )

    peak = 0
    done = asyncio.ensure_future(wait_terminal(pg_pool, ids, timeout=120))
    while not done.done():  # sampling until the jobs end (an event): the peak is measured
        peak = max(peak, await worker.running() or 0)
        await asyncio.sleep(0.05)
    await done

    assert peak >= CONCURRENCY * 0.9, peak
    assert peak <= CONCURRENCY, peak
    rows = await pg_pool.fetch("SELECT executions FROM jobs WHERE job_id = ANY($1)", ids)
    assert len(rows) == len(ids)
    assert {r["executions"] for r in rows} == {1}
