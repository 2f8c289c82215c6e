"""Retention of dedupe keys against a real PostgreSQL: exactly the keys that decide nothing any
more are deleted (past their TTL; simple with a finished or vanished job; debounce whose job no
longer waits), and a key a submit holds is left for the next sweep."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from jobstream.streams.pg.migrations import migrate
from jobstream.streams.pg.pool import create_pool
from jobstream.streams.pg.retention import RetentionPolicy, Sweeper
from tests.integration.pgtools import fresh_database

KEYS = [
    # key, mode, expires in (s; None: never), job status (None: no row), kept
    ("t-live", "throttle", 600, "succeeded", True),
    ("t-old", "throttle", -1, "scheduled", False),
    ("s-run", "simple", None, "running", True),
    ("s-retry", "simple", 600, "retrying", True),
    ("s-done", "simple", None, "succeeded", False),
    ("s-cancelled", "simple", None, "cancelled", False),
    ("s-gone", "simple", None, None, False),
    ("s-expired", "simple", -1, "running", False),
    ("d-wait", "debounce", 600, "scheduled", True),
    ("d-ran", "debounce", 600, "running", False),
    ("locked", "throttle", -1, "succeeded", True),  # a submit holds it during the sweep
]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with fresh_database(database_url, "dkeys") as dsn:
        p = await create_pool(dsn, min_size=1, max_size=4)
        async with p.acquire() as conn:
            await migrate(conn)
        try:
            yield p
        finally:
            await p.close()


async def test_only_keys_that_decide_nothing_go(pool: asyncpg.Pool) -> None:
    for key, mode, expires_s, status, _ in KEYS:
        job_id = f"job-{key}"
        if status is not None:
            await pool.execute(
                "INSERT INTO jobs (job_id, type, status, attempt, dedupe_key)"
                " VALUES ($1, 'echo', $2, 1, $3)",
                job_id, status, key,
            )  # fmt: skip
        await pool.execute(
            "INSERT INTO dedupe_keys (key, job_id, mode, expires_at) VALUES ($1, $2, $3,"
            " CASE WHEN $4::float8 IS NULL THEN 'infinity'::timestamptz"
            " ELSE now() + make_interval(secs => $4::float8) END)",
            key, job_id, mode, expires_s,
        )  # fmt: skip
    sweeper = Sweeper(pool, RetentionPolicy(rules=(), batch_size=2))
    stale = {k for k, *_, kept in KEYS if not kept}

    dry = await sweeper.sweep(dry_run=True)
    assert dry.dedupe_keys == len(stale) + 1  # the locked one is due too
    assert await pool.fetchval("SELECT count(*) FROM dedupe_keys") == len(KEYS)

    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM dedupe_keys WHERE key = 'locked' FOR UPDATE")
        report = await sweeper.sweep()
    assert report.ran
    assert report.dedupe_keys == len(stale)
    assert report.as_dict()["dedupe_keys"] == len(stale)
    left = {r["key"] for r in await pool.fetch("SELECT key FROM dedupe_keys")}
    assert left == {k for k, *_, kept in KEYS if kept}
    assert (await sweeper.sweep()).dedupe_keys == 1  # released: the next sweep takes it
