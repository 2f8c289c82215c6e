"""``jobstream backup`` while a worker writes, ``jobstream restore`` into a fresh database."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from jobstream.streams.ops.backup import find_tool
from jobstream.streams.pg.migrations import migrate
from jobstream.streams.pg.pool import create_pool
from jobstream.streams.producer.client import JobClient
from tests.integration.harness import WorkerFactory, run_cli, wait_for
from tests.integration.pgtools import fresh_database

BATCH = 100
"""Jobs submitted every 50 ms for as long as the backup runs (a load that ends while the dump is
taken, as a fixed batch did once the worker got faster, proves nothing about writes meanwhile)."""


def cli_env(bootstrap: str, dsn: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSTREAM_")}
    return env | {
        "JOBSTREAM_KAFKA_BOOTSTRAP": bootstrap,
        "JOBSTREAM_DATABASE_URL": dsn,
        "JOBSTREAM_TOPIC_PREFIX": prefix,
        "JOBSTREAM_GROUP_ID": prefix,
    }


async def job_ids_below(bootstrap: str, topic: str, offsets: dict[str, int]) -> list[str]:
    """The keys (job ids) of the records of ``topic`` below the given offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = {TopicPartition(topic, int(p)): o for p, o in offsets.items() if o > 0}
        consumer.assign(list(tps))
        for tp in tps:
            consumer.seek(tp, 0)
        ids: list[str] = []
        done: set[TopicPartition] = set()
        while len(done) < len(tps):
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset < tps[tp]:
                        ids.append(r.key.decode())
                if records and records[-1].offset >= tps[tp] - 1:
                    done.add(tp)
                    consumer.pause(tp)
        return ids
    finally:
        await consumer.stop()


def rows_by_id(records: list[asyncpg.Record]) -> dict[str, dict[str, Any]]:
    return {r["job_id"]: dict(r) for r in records}


async def test_backup_under_load_then_restore_into_a_fresh_database(
    kafka_bootstrap: str, database_url: str, prefix: str, tmp_path: Path
) -> None:
    async with (
        fresh_database(database_url, "bk") as source,
        fresh_database(database_url, "rs") as target,
    ):
        factory = WorkerFactory(bootstrap=kafka_bootstrap, dsn=source, prefix=prefix, tmp=tmp_path)
        pool = await create_pool(source, min_size=1, max_size=2)
        submitted: list[str] = []
        stop = asyncio.Event()

        async def keep_submitting(client: JobClient) -> None:
            while not stop.is_set():
                n = len(submitted)
                batch = [client.build("echo", {"n": n + i}) for i in range(BATCH)]
                submitted.extend(await client.submit_many(batch))
                await asyncio.sleep(0.05)

        async def rows() -> int:
            return int(await pool.fetchval("SELECT count(*) FROM jobs"))

        client = JobClient(kafka_bootstrap, topic_prefix=prefix)
        producer: asyncio.Task[None] | None = None
        try:
            worker = factory.start()
            await worker.wait_assigned()
            await client.start()
            producer = asyncio.create_task(keep_submitting(client))

            async def finished() -> int:
                return int(
                    await pool.fetchval("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
                )

            await wait_for(lambda: _at_least(finished, 300), timeout=120, what="300 jobs done")
            rows_before = await rows()
            code, out = await run_cli(
                "backup",
                f"{tmp_path}/backups/",
                "--json",
                env=cli_env(kafka_bootstrap, source, prefix),
            )
            assert code == 0, out
            manifest = json.loads(out)
            in_dump = manifest["rows"]["public.jobs"]
            # the load goes on: rows written after the snapshot come
            await wait_for(lambda: _at_least(rows, in_dump + 1), timeout=60, what="rows after")
            rows_after = await rows()
            stop.set()
            await producer
            dump = Path(manifest["path"])
            assert manifest["dump"]["file"] == dump.name
            assert manifest["dump"]["bytes"] > 0

            # the worker kept writing while the dump was taken
            assert rows_before < in_dump < rows_after, (rows_before, in_dump, rows_after)
            assert "0005_execution_claims" in manifest["schema_migrations"]
            assert manifest["jobstream_version"]
            offsets = manifest["kafka"]["committed_offsets"]
            assert offsets, manifest["kafka"]
            assert offsets[prefix], manifest["kafka"]

            # every job below the manifest's offsets has its finished row in the dump
            code, out = await run_cli(
                "restore", str(dump), env=cli_env(kafka_bootstrap, target, prefix)
            )
            assert code == 0, out
            restored = await create_pool(target, min_size=1, max_size=1)
            try:
                copy = rows_by_id(await restored.fetch("SELECT * FROM jobs"))
                migrations = await restored.fetch(
                    "SELECT name FROM schema_migrations ORDER BY name"
                )
            finally:
                await restored.close()
            below = await job_ids_below(kafka_bootstrap, prefix, offsets[prefix])
            assert below, "the group had committed nothing at backup time"
            assert all(copy[j]["status"] == "succeeded" for j in below)

            # the rows at backup time are all there, and as they were
            await wait_for(
                lambda: _at_least(finished, len(submitted)), timeout=180, what="all jobs done"
            )
            now = rows_by_id(await pool.fetch("SELECT * FROM jobs"))
            assert len(copy) == in_dump
            for job_id, row in copy.items():
                if row["status"] == "succeeded":
                    assert now[job_id] == row, job_id
                else:  # claimed at backup time; finished since
                    assert row["status"] == "running"
                    assert now[job_id]["status"] == "succeeded"
            assert [m["name"] for m in migrations] == manifest["schema_migrations"]
        finally:
            stop.set()
            if producer is not None and not producer.done():
                producer.cancel()
            await client.stop()
            factory.close()
            await pool.close()

        env = cli_env(kafka_bootstrap, target, prefix)
        code, out = await run_cli("restore", str(dump), env=env)
        assert code == 1, out
        assert "not empty" in out, out
        code, out = await run_cli("restore", str(dump), "--force", env=env)
        assert code == 0, out


async def _at_least(count: Any, n: int) -> bool:
    return int(await count()) >= n


async def test_the_password_reaches_pg_dump_only_through_its_environment(
    kafka_bootstrap: str, database_url: str, prefix: str, tmp_path: Path
) -> None:
    """pg_dump and pg_restore run through wrappers that record their argv and PGPASSWORD."""
    real = find_tool("pg_dump", 15).parent
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("pg_dump", "pg_restore"):
        wrapper = bin_dir / name
        wrapper.write_text(
            "#!/bin/sh\n"
            f'echo "argv: $*" >> {tmp_path}/calls.log\n'
            f'echo "password: $PGPASSWORD" >> {tmp_path}/calls.log\n'
            f'exec {real}/{name} "$@"\n'
        )
        wrapper.chmod(0o755)
    secret = "s3cr3t-pw"  # the local server trusts 127.0.0.1, so any password is accepted
    async with (
        fresh_database(database_url, "pw") as source,
        fresh_database(database_url, "pw") as target,
    ):
        pool = await create_pool(source, min_size=1, max_size=1)
        async with pool.acquire() as conn:
            await migrate(conn)
        await pool.close()
        with_password = source.replace("postgres@", f"postgres:{secret}@")
        env = cli_env(kafka_bootstrap, with_password, prefix) | {
            "JOBSTREAM_PG_BIN_DIR": str(bin_dir)
        }
        code, out = await run_cli("backup", str(tmp_path / "x.dump"), env=env)
        assert code == 0, out
        env["JOBSTREAM_DATABASE_URL"] = target.replace("postgres@", f"postgres:{secret}@")
        code, restored = await run_cli("restore", str(tmp_path / "x.dump"), env=env)
        assert code == 0, restored
    calls = (tmp_path / "calls.log").read_text().splitlines()
    argv = [c for c in calls if c.startswith("argv:") and "--version" not in c]
    assert len(argv) == 2, argv
    assert all(secret not in c for c in argv), argv
    assert f"password: {secret}" in calls
    assert secret not in out + restored


async def test_scheduled_jobs_schedules_and_their_audit_survive_a_backup_and_restore(
    kafka_bootstrap: str, database_url: str, prefix: str, tmp_path: Path
) -> None:
    """A delayed job waits as a row, a schedule is a row: a restore brings both back, and a
    worker on the restored database runs the job when it is due."""
    from datetime import timedelta

    from jobstream.models.schedules import ScheduleSpec
    from jobstream.streams.pg import scheduled, schedules

    async with (
        fresh_database(database_url, "bk") as source,
        fresh_database(database_url, "rs") as target,
    ):
        pool = await create_pool(source, min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
                job_id = await client.submit("echo", {"n": 1}, job_id=f"{prefix}-d", delay=3600)
            factory = WorkerFactory(
                bootstrap=kafka_bootstrap, dsn=source, prefix=prefix, tmp=tmp_path / "source"
            )
            try:
                await factory.start().wait_assigned()  # parks the delayed job as its row

                async def parked() -> bool:
                    status = await pool.fetchval(
                        "SELECT status FROM jobs WHERE job_id = $1", job_id
                    )
                    return bool(status == "scheduled")

                await wait_for(parked, timeout=60, what="the scheduled row")
            finally:
                factory.close()
            db_now = await pool.fetchval("SELECT now()")
            spec = ScheduleSpec(name="nightly", job_type="echo", cron="0 3 * * *")
            assert await schedules.add(pool, prefix, spec, db_now, by="test")
            # due in a few seconds now: the restored copy must run it
            await scheduled.move(pool, prefix, job_id, db_now + timedelta(seconds=3), by="test")
            before = {
                "jobs": rows_by_id(await pool.fetch("SELECT * FROM jobs")),
                "schedules": [dict(r) for r in await pool.fetch("SELECT * FROM schedules")],
                "audit": [dict(r) for r in await pool.fetch("SELECT * FROM timed_audit")],
            }
        finally:
            await pool.close()
        env = cli_env(kafka_bootstrap, source, prefix)
        code, out = await run_cli("backup", f"{tmp_path}/backups/", "--json", env=env)
        assert code == 0, out
        manifest = json.loads(out)
        assert manifest["rows"]["public.schedules"] == 1
        assert manifest["rows"]["public.timed_audit"] == 2
        code, out = await run_cli(
            "restore", manifest["path"], env=cli_env(kafka_bootstrap, target, prefix)
        )
        assert code == 0, out

        restored = await create_pool(target, min_size=1, max_size=2)
        try:
            assert rows_by_id(await restored.fetch("SELECT * FROM jobs")) == before["jobs"]
            assert [dict(r) for r in await restored.fetch("SELECT * FROM schedules")] == before[
                "schedules"
            ]
            assert [dict(r) for r in await restored.fetch("SELECT * FROM timed_audit")] == before[
                "audit"
            ]
            factory = WorkerFactory(
                bootstrap=kafka_bootstrap, dsn=target, prefix=prefix, tmp=tmp_path / "target"
            )
            try:
                factory.start()

                async def ran() -> bool:
                    row = await restored.fetchrow(
                        "SELECT status, executions FROM jobs WHERE job_id = $1", job_id
                    )
                    return row is not None and row["status"] == "succeeded"

                await wait_for(ran, timeout=120, what="the restored scheduled job ran")
                executions = await restored.fetchval(
                    "SELECT executions FROM jobs WHERE job_id = $1", job_id
                )
                assert executions == 1
            finally:
                factory.close()
        finally:
            await restored.close()
