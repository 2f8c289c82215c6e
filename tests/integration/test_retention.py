"""Retention against a real PostgreSQL (a database of the test's own) and a real Kafka DLQ."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from jobstream.models.job import JobStatus
from jobstream.models.rows import ClaimRequest, JobRow
from jobstream.streams.metrics import Metrics
from jobstream.streams.pg.migrations import migrate
from jobstream.streams.pg.pool import create_pool
from jobstream.streams.pg.results import ResultStore
from jobstream.streams.pg.retention import (
    SWEEP_LOCK,
    RetentionPolicy,
    StatusRule,
    Sweeper,
    dead_letter_horizon,
)
from jobstream.streams.settings import Settings
from tests.integration.harness import run_cli
from tests.integration.pgtools import fresh_database

DAY = 86_400.0


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    async with fresh_database(database_url, "ret") as dsn:
        pool = await create_pool(dsn, min_size=1, max_size=8)
        async with pool.acquire() as conn:
            await migrate(conn)
        try:
            yield dsn, pool
        finally:
            await pool.close()


async def insert(pool: asyncpg.Pool, ids: list[str], status: str, finished_at: Any) -> None:
    await pool.execute(
        "INSERT INTO jobs (job_id, type, status, attempt, finished_at)"
        " SELECT id, 'echo', $2, 1, $3 FROM unnest($1::text[]) AS id",
        ids,
        status,
        finished_at,
    )


async def remaining(pool: asyncpg.Pool) -> dict[str, str]:
    return {r["job_id"]: r["status"] for r in await pool.fetch("SELECT job_id, status FROM jobs")}


async def dlq_with_letters_since(bootstrap: str, topic: str, ages_s: list[float]) -> None:
    """A dead-letter topic (retention unlimited) whose partition i starts with a record
    ``ages_s[i]`` seconds old."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, len(ages_s), 1, topic_configs={"retention.ms": "-1"})]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        now_ms = datetime.now(UTC).timestamp() * 1000
        for partition, age in enumerate(ages_s):
            await producer.send_and_wait(
                topic, b"{}", partition=partition, timestamp_ms=int(now_ms - age * 1000)
            )
    finally:
        await producer.stop()


def rows(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


async def test_sweep_deletes_exactly_the_due_rows_under_concurrent_writes(
    db: tuple[str, asyncpg.Pool], kafka_bootstrap: str, prefix: str
) -> None:
    _, pool = db
    now: datetime = await pool.fetchval("SELECT clock_timestamp()")

    def ago(s: float) -> datetime:
        return now - timedelta(seconds=s)

    s_old, s_new = rows("s-old", 3000), rows("s-new", 500)
    r_old = rows("r-old", 500)
    d_gone, d_kept, d_new = rows("d-gone", 300), rows("d-kept", 300), rows("d-new", 300)
    await insert(pool, s_old, "succeeded", ago(2 * 3600))
    await insert(pool, s_new, "succeeded", ago(600))
    await insert(pool, r_old, "retrying", ago(30 * DAY))  # never pruned, whatever its age
    claimed = rows("claimed", 50)  # an execution holds these now: never pruned either
    await insert(pool, claimed, "running", ago(30 * DAY))
    await insert(pool, d_gone, "dead_lettered", ago(20 * DAY))  # its letter is gone
    await insert(pool, d_kept, "dead_lettered", ago(9 * DAY))  # past 7 d, letter still kept
    await insert(pool, d_new, "dead_lettered", ago(1 * DAY))

    dlq = f"{prefix}.dlq"
    await dlq_with_letters_since(kafka_bootstrap, dlq, [10 * DAY, 5 * DAY])
    policy = RetentionPolicy(
        rules=(
            StatusRule(JobStatus.SUCCEEDED, 3600, None),
            StatusRule(JobStatus.DEAD_LETTERED, 7 * DAY, None),
        ),
        batch_size=100,
    )
    sweeper = Sweeper(pool, policy, dead_letters=partial(dead_letter_horizon, kafka_bootstrap, dlq))

    # Writers run for the whole sweep, as executions do: claim the row, then write it. New
    # jobs; retrying rows taking their next attempt; replays of dead-lettered rows the sweep is
    # deleting (each either claimed before the sweep reaches it, and then no longer due, or
    # inserted again after it is deleted); and replays claimed but still running.
    store = ResultStore(pool, max_size=50, max_delay_s=0.001, worker="w")
    store.start()
    sweep_done = asyncio.Event()
    written_new: list[str] = []
    promote, replay, running = r_old[:200], d_gone[:100], d_gone[100:120]
    started = asyncio.Event()

    async def run(job_id: str, attempt: int, *, replay_of: str | None = None) -> None:
        token = uuid.uuid4().hex
        claim = await store.claim(
            ClaimRequest(job_id, "echo", attempt, token, replay=replay_of is not None)
        )
        assert claim.won, job_id
        if job_id in running:
            return  # still running when the sweep ends
        await store.write(
            JobRow(
                job_id, "echo", JobStatus.SUCCEEDED, attempt, replay_of=replay_of,
                finished_at=datetime.now(UTC), claim_token=token,
            )
        )  # fmt: skip

    async def writer() -> None:
        i = 0
        pending_running = list(running)
        while not sweep_done.is_set() or promote or replay or pending_running:
            jobs = [run(f"w-new-{i}-{k}", 1) for k in range(20)]
            jobs += [run(promote.pop(), 2) for _ in range(min(10, len(promote)))]
            jobs += [run(replay.pop(), 1, replay_of="dl") for _ in range(min(5, len(replay)))]
            jobs += [
                run(pending_running.pop(), 1, replay_of="dl")
                for _ in range(min(2, len(pending_running)))
            ]
            await asyncio.gather(*jobs)
            written_new.extend(f"w-new-{i}-{k}" for k in range(20))
            started.set()
            i += 1

    task = asyncio.create_task(writer())
    await started.wait()
    try:
        report = await sweeper.sweep()
    finally:
        sweep_done.set()
        await task
        await store.close()

    assert report.ran
    assert len(report.batches) > 30  # many short transactions, not one long one
    assert len(written_new) > 20, "the writers did not run alongside the sweep"
    expected = set(s_new) | set(r_old) | set(d_kept) | set(d_new) | set(written_new)
    expected |= set(d_gone[:120]) | set(claimed)
    left = await remaining(pool)
    assert set(left) == expected
    assert all(left[j] == "succeeded" for j in r_old[:200] + d_gone[:100])
    assert all(left[j] == "retrying" for j in r_old[200:])
    by_status = {s.status: s.rows for s in report.statuses}
    assert by_status["succeeded"] == len(s_old)
    assert len(d_gone) - 120 <= by_status["dead_lettered"] <= len(d_gone)
    assert report.dead_letter_horizon is not None
    assert report.dead_letter_horizon < ago(10 * DAY)


async def test_count_limits_keep_the_newest_rows(db: tuple[str, asyncpg.Pool]) -> None:
    _, pool = db
    now: datetime = await pool.fetchval("SELECT clock_timestamp()")
    for i in range(50):
        await insert(pool, [f"s-{i:02}"], "succeeded", now - timedelta(minutes=i))
        await insert(pool, [f"d-{i:02}"], "dead_lettered", now - timedelta(minutes=i))
    policy = RetentionPolicy(
        rules=(
            StatusRule(JobStatus.SUCCEEDED, None, 20),
            StatusRule(JobStatus.DEAD_LETTERED, 30 * DAY, 5),
        ),
        batch_size=7,
        include_unexpired_dead_letters=True,
    )
    metrics = Metrics()
    sweeper = Sweeper(pool, policy, metrics=metrics)
    report = await sweeper.sweep()
    assert report.total == 45 + 30
    left = await remaining(pool)
    assert set(left) == {f"s-{i:02}" for i in range(20)} | {f"d-{i:02}" for i in range(5)}

    pruned = "jobstream_retention_pruned_rows_total"
    sample = metrics.registry.get_sample_value
    assert sample(pruned, {"status": "succeeded"}) == 30
    assert sample(pruned, {"status": "dead_lettered"}) == 45
    _, size = await sweeper.observe_table()
    assert size == await pool.fetchval("SELECT pg_total_relation_size('jobs')") > 0
    assert sample("jobstream_jobs_table_bytes") == size
    assert sample("jobstream_jobs_table_rows") is not None


async def test_without_the_dead_letter_topic_no_dead_lettered_row_goes(
    db: tuple[str, asyncpg.Pool], kafka_bootstrap: str, prefix: str
) -> None:
    _, pool = db
    now: datetime = await pool.fetchval("SELECT clock_timestamp()")
    await insert(pool, rows("d", 10), "dead_lettered", now - timedelta(days=60))
    policy = RetentionPolicy(rules=(StatusRule(JobStatus.DEAD_LETTERED, DAY, None),))
    missing = partial(dead_letter_horizon, kafka_bootstrap, f"{prefix}.missing", timeout_s=5)
    report = await Sweeper(pool, policy, dead_letters=missing).sweep()
    assert report.total == 0
    assert "unreadable" in report.statuses[0].note
    assert len(await remaining(pool)) == 10


async def test_two_sweepers_never_run_at_once(
    db: tuple[str, asyncpg.Pool], database_url: str
) -> None:
    dsn, pool = db
    now: datetime = await pool.fetchval("SELECT clock_timestamp()")
    await insert(pool, rows("old", 6000), "succeeded", now - timedelta(days=2))
    policy = RetentionPolicy(rules=(StatusRule(JobStatus.SUCCEEDED, DAY, None),), batch_size=150)
    other = await create_pool(dsn, min_size=1, max_size=2)
    try:
        # one replica is inside a batch: the other's sweep does nothing
        async with pool.acquire() as conn, conn.transaction():
            assert await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SWEEP_LOCK)
            blocked = await Sweeper(other, policy).sweep()
        assert not blocked.ran
        assert blocked.total == 0
        assert not blocked.batches

        a, b = await asyncio.gather(Sweeper(pool, policy).sweep(), Sweeper(other, policy).sweep())
    finally:
        await other.close()
    assert a.total + b.total == 6000
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 0
    spans = sorted(a.batches + b.batches, key=lambda x: x.started)
    for first, second in itertools.pairwise(spans):
        assert first.ended < second.started, "two sweepers held batches at the same time"


async def test_prune_command_dry_run_then_for_real(
    db: tuple[str, asyncpg.Pool], kafka_bootstrap: str, prefix: str
) -> None:
    dsn, pool = db
    now: datetime = await pool.fetchval("SELECT clock_timestamp()")
    await insert(pool, rows("s-old", 40), "succeeded", now - timedelta(days=2))
    await insert(pool, rows("s-new", 7), "succeeded", now)
    await insert(pool, rows("d-old", 5), "dead_lettered", now - timedelta(days=8))
    await insert(pool, rows("r-old", 3), "retrying", now - timedelta(days=8))
    # letters as old as the rows are still in the topic: those rows are kept unless told
    await dlq_with_letters_since(kafka_bootstrap, f"{prefix}.dlq", [9 * DAY])
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSTREAM_")}
    env |= {
        "JOBSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "JOBSTREAM_DATABASE_URL": dsn,
        "JOBSTREAM_TOPIC_PREFIX": prefix,
    }

    code, out = await run_cli("prune", "--dry-run", "--json", env=env)
    assert code == 0, out
    report = json.loads(out)
    counts = {s["status"]: s["rows"] for s in report["statuses"]}
    assert report["dry_run"]
    assert counts == {"succeeded": 40, "dead_lettered": 0, "cancelled": 0, "expired": 0}
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 55

    code, out = await run_cli("prune", env=env)
    assert code == 0, out
    assert "deleted" in out
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 15

    code, out = await run_cli("prune", "--include-unexpired-dead-letters", "--json", env=env)
    assert code == 0, out
    assert json.loads(out)["total"] == 5
    left = await remaining(pool)
    assert set(left) == set(rows("s-new", 7)) | set(rows("r-old", 3))


async def test_cancelled_and_expired_rows_go_like_the_others_and_scheduled_rows_never(
    db: tuple[str, asyncpg.Pool],
) -> None:
    _, pool = db
    now: datetime = await pool.fetchval("SELECT clock_timestamp()")
    old, recent = now - timedelta(days=3), now - timedelta(hours=1)
    for status in ("succeeded", "cancelled", "expired"):
        await insert(pool, [f"{status}-old"], status, old)
        await insert(pool, [f"{status}-new"], status, recent)
    # a job scheduled long ago for a time far ahead (no finished_at), and one with a stray
    # finished_at: neither is a finished job
    await pool.execute(
        "INSERT INTO jobs (job_id, type, status, attempt, created_at, run_at, finished_at, event)"
        " VALUES ('later', 'echo', 'scheduled', 1, $1, $2, NULL, '{}'),"
        "        ('stray', 'echo', 'scheduled', 1, $1, $2, $1, '{}')",
        now - timedelta(days=30),
        now + timedelta(days=30),
    )
    settings = Settings(retention_succeeded_age_s=DAY, retention_succeeded_max_rows=None)
    report = await Sweeper(pool, RetentionPolicy.from_settings(settings)).sweep()
    assert {s.status: s.rows for s in report.statuses if s.rows} == {
        "succeeded": 1,
        "cancelled": 1,
        "expired": 1,
    }
    assert set(await remaining(pool)) == {
        "succeeded-new", "cancelled-new", "expired-new", "later", "stray",
    }  # fmt: skip
    with pytest.raises(ValueError, match="never pruned"):
        await Sweeper(
            pool, RetentionPolicy(rules=(StatusRule(JobStatus.SCHEDULED, 1.0, None),))
        ).sweep()
