"""The walking skeleton against real Kafka and PostgreSQL: submit, process, record, emit."""

from __future__ import annotations

import asyncpg

from jobstream.models.job import JobOutcome
from jobstream.streams.producer.client import JobClient
from jobstream.streams.topics import topic_names
from tests.integration.harness import WorkerFactory, topic_reader, wait_terminal


async def test_echo_job_ends_as_one_row_and_one_outcome(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    worker = workers.start()
    await worker.wait_assigned()
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        job_id = await client.submit("echo", {"greeting": "hello"})

    await wait_terminal(pg_pool, [job_id], timeout=60)
    rows = await pg_pool.fetch("SELECT * FROM jobs WHERE job_id = $1", job_id)
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "succeeded"
    assert row["result"]["echo"] == {"greeting": "hello"}
    assert row["executions"] == 1

    async with topic_reader(kafka_bootstrap, topic_names(prefix).outcomes) as outcomes:
        await outcomes.wait_count(1)
        await outcomes.poll()
        events = [JobOutcome.model_validate_json(r.value) for r in outcomes.records]
    assert [(e.job_id, e.status.value, e.reemitted) for e in events] == [
        (job_id, "succeeded", False)
    ]
    assert events[0].result == row["result"]


async def test_two_workers_split_partitions_and_process_each_job_once(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    first, second = workers.start("alpha"), workers.start("beta")
    await first.wait_assigned()
    await second.wait_assigned()
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        ids = await client.submit_many(
            [client.build("echo", {"n": i}, partition_key=f"k{i}") for i in range(400)]
        )

    await wait_terminal(pg_pool, ids, timeout=120)
    rows = await pg_pool.fetch(
        "SELECT worker, count(*) AS n, max(executions) AS most FROM jobs"
        " WHERE job_id = ANY($1::text[]) GROUP BY worker",
        ids,
    )
    by_worker = {r["worker"]: r["n"] for r in rows}
    assert sum(by_worker.values()) == 400
    assert set(by_worker) == {"alpha", "beta"}, by_worker  # both replicas got partitions
    assert max(r["most"] for r in rows) == 1  # no job ran twice

    async with topic_reader(kafka_bootstrap, topic_names(prefix).outcomes) as outcomes:
        await outcomes.wait_count(400)
        await outcomes.poll()
        seen = [JobOutcome.model_validate_json(r.value).job_id for r in outcomes.records]
    assert sorted(seen) == sorted(ids)
