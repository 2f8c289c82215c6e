"""jobstream behind PgBouncer in transaction mode (like Supabase's pooler).

A pgbouncer of the test's own (``pool_mode = transaction``) sits in front of the shared
PostgreSQL; each test uses a database of its own through it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobstream.streams.pg.migrations import migrate
from jobstream.streams.pg.pool import PoolerMode, create_pool
from jobstream.streams.pg.ratelimit import PgRateLimiter
from jobstream.streams.producer.client import JobClient
from jobstream.streams.settings import RateLimit
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


@pytest.mark.parametrize("mode", ["none", "transaction"])
async def test_only_the_pooler_setting_survives_a_change_of_server_connection(
    pooled: tuple[str, str], mode: PoolerMode
) -> None:
    """Why the setting exists: a named prepared statement (asyncpg's default) stays on the
    server connection that prepared it, and the pooler hands the next transaction another."""
    pool = await create_pool(pooled[1], min_size=1, max_size=1, pooler_mode=mode)
    other = await create_pool(pooled[1], min_size=1, max_size=1, pooler_mode="transaction")
    try:
        assert await pool.fetchval("SELECT $1::int + 1", 1) == 2
        async with other.acquire() as conn, conn.transaction():
            await conn.fetchval("SELECT 1")  # holds the server connection used so far
            if mode == "none":
                with pytest.raises(asyncpg.InvalidSQLStatementNameError):
                    await pool.fetchval("SELECT $1::int + 1", 2)
            else:
                assert await pool.fetchval("SELECT $1::int + 1", 2) == 3
    finally:
        await pool.close()
        await other.close()


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

        async def exported() -> dict[str, float] | None:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{worker.web_port}/metrics") as resp,
            ):
                families = text_string_to_metric_families(await resp.text())
                found = {s.name + str(s.labels): s.value for f in families for s in f.samples}
            key = "jobstream_retention_pruned_rows_total{'status': 'succeeded'}"
            return (
                found
                if found.get(key) == len(old) and found.get("jobstream_jobs_table_bytes{}")
                else None
            )

        await wait_for(exported, timeout=30, what="the sweep's metrics")

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
        assert row is not None
        assert row["now"] >= row["paused_until"] - timedelta(milliseconds=20)
        await first.close()
        await second.close()
    finally:
        await pool.close()
        await other.close()

    log = worker.log_path.read_text(errors="replace")
    assert "prepared statement" not in log
    assert "retention: pruned" in log


async def test_a_worker_not_told_of_the_pooler_heals_on_its_first_error_and_says_so_once(
    factory: WorkerFactory, pooled: tuple[str, str], kafka_bootstrap: str, prefix: str
) -> None:
    """JOBSTREAM_DB_POOLER_MODE left at none behind a transaction-mode pooler: the first
    vanished prepared statement switches every pool to unnamed statements; no job is lost,
    none is dead-lettered, and one line names the setting. ``jobstream doctor`` says it too."""
    _, via_pooler = pooled
    pool = await create_pool(via_pooler, min_size=1, max_size=2, pooler_mode="transaction")
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        worker = factory.start(JOBSTREAM_DB_POOLER_MODE="none", JOBSTREAM_CONCURRENCY="50")
        await worker.wait_assigned()
        async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
            ids = await client.submit_many([client.build("echo", {"n": i}) for i in range(2000)])
        await wait_terminal(pool, ids, timeout=120)
        statuses = await pool.fetch(
            "SELECT status, count(*) AS n FROM jobs WHERE job_id = ANY($1::text[]) GROUP BY 1",
            ids,
        )
        assert {r["status"]: r["n"] for r in statuses} == {"succeeded": len(ids)}
        _, out = await factory.cli("doctor")
        assert "answers through a transaction-mode pooler" in out, out
    finally:
        await pool.close()
    log = worker.log_path.read_text(errors="replace")
    assert log.count("JOBSTREAM_DB_POOLER_MODE=transaction") == 1, log[-3000:]
    assert "could not be routed" not in log
    assert "internal error" not in log
