"""jobstream behind PgBouncer in transaction mode (like Supabase's pooler).

A pgbouncer of the test's own (``pool_mode = transaction``) sits in front of the shared
PostgreSQL; each test uses a database of its own through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from streams.client import JobClient
from streams.db import create_pool, migrate
from streams.ratelimit import PgRateLimiter
from streams.settings import RateLimit
from tests.integration.harness import WorkerFactory, wait_for, wait_terminal
from tests.integration.pgtools import PgBouncer, fresh_database, with_database


@pytest.fixture
async def bouncer(database_url: str) -> AsyncIterator[PgBouncer]:
    bouncer = PgBouncer(database_url).start()
    try:
        await bouncer.wait_ready()
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
async def pooled(database_url: str, bouncer: PgBouncer) -> AsyncIterator[tuple[str, str]]:
    """(direct DSN, DSN through pgbouncer) of a fresh database."""
    async with fresh_database(database_url, "pool") as direct:
        yield direct, with_database(bouncer.dsn(), direct.rsplit("/", 1)[1])


@pytest.fixture
def factory(
    kafka_bootstrap: str, pooled: tuple[str, str], prefix: str, tmp_path: Path
) -> Iterator[WorkerFactory]:
    f = WorkerFactory(bootstrap=kafka_bootstrap, dsn=pooled[1], prefix=prefix, tmp=tmp_path)
    yield f
    f.close()


async def test_asyncpg_defaults_fail_behind_a_transaction_pooler(
    pooled: tuple[str, str],
) -> None:
    """Why the setting exists: named prepared statements do not survive the pooler."""
    pool = await create_pool(pooled[1], min_size=2, max_size=4)
    try:
        results = await asyncio.gather(
            *(pool.fetchval("SELECT $1::int + 1", i) for i in range(100)), return_exceptions=True
        )
    finally:
        await pool.close()
    errors = {type(r).__name__ for r in results if isinstance(r, BaseException)}
    assert errors & {"InvalidSQLStatementNameError", "DuplicatePreparedStatementError"}, errors


async def test_jobs_pauses_and_retention_through_pgbouncer(
    factory: WorkerFactory, pooled: tuple[str, str], kafka_bootstrap: str, prefix: str
) -> None:
    _, via_pooler = pooled
    pool = await create_pool(via_pooler, min_size=1, max_size=4, pooler_mode="transaction")
    other = await create_pool(via_pooler, min_size=1, max_size=4, pooler_mode="transaction")
    try:
        async with pool.acquire() as conn:
            await migrate(conn)  # transaction-level lock: works through the pooler
        old = [f"old-{i}" for i in range(3000)]
        await pool.execute(
            "INSERT INTO jobs (job_id, type, status, attempt, finished_at)"
            " SELECT id, 'echo', 'succeeded', 1, now() - interval '2 days'"
            " FROM unnest($1::text[]) AS id",
            old,
        )

        worker = factory.start(
            JOBSTREAM_DB_POOLER_MODE="transaction",
            JOBSTREAM_RETENTION_ENABLED="true",
            JOBSTREAM_RETENTION_INTERVAL_S="1",
            JOBSTREAM_RETENTION_BATCH_SIZE="500",
        )
        await worker.wait_assigned()
        async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
            ids = await client.submit_many([client.build("echo", {"n": i}) for i in range(1000)])
        await wait_terminal(pool, ids, timeout=120)
        succeeded = await pool.fetchval(
            "SELECT count(*) FROM jobs WHERE job_id = ANY($1::text[]) AND status = 'succeeded'",
            ids,
        )
        assert succeeded == len(ids)

        # the worker's sweeper deleted the old rows, through the pooler, and nothing else
        async def swept() -> bool:
            return not await pool.fetchval(
                "SELECT count(*) FROM jobs WHERE job_id = ANY($1::text[])", old
            )

        await wait_for(swept, timeout=60, what="the old rows pruned by the worker")
        assert await pool.fetchval("SELECT count(*) FROM jobs") == len(ids)

        # a pause set by one replica holds back another that never heard of it (no LISTEN)
        limits = {"upstream": RateLimit(rate=100)}
        first = PgRateLimiter(pool, limits, listen=False)
        second = PgRateLimiter(other, limits, listen=False)
        await first.pause("upstream", 1.5)
        await second.acquire("upstream")
        row = await pool.fetchrow(
            "SELECT paused_until, clock_timestamp() AS now FROM rate_limit_buckets WHERE key = $1",
            "upstream",
        )
        assert row["now"] >= row["paused_until"] - timedelta(milliseconds=20)
        await first.close()
        await second.close()
    finally:
        await pool.close()
        await other.close()

    log = worker.log_path.read_text(errors="replace")
    assert "prepared statement" not in log
    assert "retention: pruned" in log
