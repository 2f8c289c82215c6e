"""``jobstream doctor`` against real Kafka and PostgreSQL: healthy, and each broken case.

Each test gets its own topic prefix and group, and the healthy and schema cases a database of
their own (``CREATE DATABASE`` on the local server), so rate-limit rows or migrations of other
tests never change the verdict. The doctor runs as the operator runs it: a process with only the
``JOBSTREAM_*`` variables it is given.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from jobstream.streams.dev.replicas import free_port
from jobstream.streams.kafka.admin import ensure_topics
from jobstream.streams.pg.migrations import _migrations
from jobstream.streams.producer.client import JobClient
from jobstream.streams.settings import Settings
from jobstream.streams.topics import topic_configs, topic_names
from tests.integration.harness import WorkerFactory, run_cli

TIERS = "[1, 2, 3]"
PARTITIONS = 4


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
async def fresh_dsn(database_url: str) -> AsyncIterator[str]:
    """A throw-away database on the same server, dropped afterwards."""
    name = f"doctor_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(database_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def doctor_env(bootstrap: str | None, dsn: str | None, prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSTREAM_")}
    env |= {
        "JOBSTREAM_TOPIC_PREFIX": prefix,
        "JOBSTREAM_GROUP_ID": prefix,
        "JOBSTREAM_PARTITIONS": str(PARTITIONS),
        "JOBSTREAM_RETRY_TIERS_S": TIERS,
        **extra,
    }
    if bootstrap:
        env["JOBSTREAM_KAFKA_BOOTSTRAP"] = bootstrap
    if dsn:
        env["JOBSTREAM_DATABASE_URL"] = dsn
    return env


async def doctor(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out = await run_cli("doctor", "--json", *args, env=env)
    report = json.loads(out)
    assert report["exit_code"] == code
    return code, report


def rows(report: dict[str, Any], status: str | None = None) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in report["checks"] if status is None or c["status"] == status}


def settings_for(prefix: str) -> Settings:
    return Settings(
        topic_prefix=prefix, group_id=prefix, partitions=PARTITIONS, retry_tiers_s=(1, 2, 3)
    )


async def create_topics(bootstrap: str, prefix: str) -> None:
    s = settings_for(prefix)
    names = topic_names(prefix, s.retry_tiers_s)
    await ensure_topics(
        bootstrap, names.all(), partitions=PARTITIONS, configs=topic_configs(s, names)
    )


async def migrate_fully(dsn: str) -> None:
    from jobstream.streams.pg.migrations import migrate

    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()


async def test_healthy_setup_exits_0_and_the_probe_too(
    tmp_path: Any, kafka_bootstrap: str, fresh_dsn: str, prefix: str
) -> None:
    factory = WorkerFactory(bootstrap=kafka_bootstrap, dsn=fresh_dsn, prefix=prefix, tmp=tmp_path)
    try:
        worker = factory.start()  # creates the topics with their configs, migrates, joins
        await worker.wait_assigned()
        env = doctor_env(kafka_bootstrap, fresh_dsn, prefix)
        code, report = await doctor(env)
        assert code == 0, json.dumps(report, indent=1)
        checks = rows(report)
        names = topic_names(prefix, (1, 2, 3))
        for topic in names.all():
            assert checks[f"topic {topic}"]["detail"] == "4 partitions, configs as set"
        assert "1 member(s)" in checks[f"group {prefix}"]["detail"]
        assert checks["schema"]["detail"].startswith("up to date")

        code, out = await run_cli("doctor", "--probe", env=env)
        assert (code, out) == (0, "")

        code, out = await run_cli("doctor", env=env)  # the table, for people
        assert code == 0
        assert "jobstream doctor" in out
        assert f"group {prefix}" in out
    finally:
        factory.close()


async def test_missing_topics_fail(kafka_bootstrap: str, database_url: str, prefix: str) -> None:
    code, report = await doctor(doctor_env(kafka_bootstrap, database_url, prefix))
    assert code == 2
    failed = rows(report, "fail")
    for topic in topic_names(prefix, (1, 2, 3)).all():
        assert failed[f"topic {topic}"]["detail"] == "missing"
    assert "TOPIC_PREFIX" in failed[f"topic {prefix}"]["fix"]

    code, out = await run_cli("doctor", "--probe", env=doctor_env(kafka_bootstrap, None, prefix))
    assert code == 2
    assert f"topic {prefix}: missing" in out


async def test_topic_config_drift_is_reported(
    kafka_bootstrap: str, database_url: str, prefix: str
) -> None:
    await create_topics(kafka_bootstrap, prefix)
    names = topic_names(prefix, (1, 2, 3))
    dlq = names.dlq
    # AlterConfigs replaces a topic's whole config: keep the others as jobstream set them
    changed = topic_configs(settings_for(prefix), names)[dlq] | {"retention.ms": "3600000"}
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, dlq, changed)])
    finally:
        await admin.close()
    code, report = await doctor(doctor_env(kafka_bootstrap, database_url, prefix))
    assert code == 1, json.dumps(report, indent=1)
    row = rows(report)[f"topic {dlq}"]
    assert row["status"] == "warn"
    expected = str(30 * 86_400_000)
    assert row["detail"] == f"retention.ms=3600000 (expected {expected})"
    assert f"--entity-name {dlq} --add-config retention.ms={expected}" in row["fix"]


async def test_old_schema_fails(kafka_bootstrap: str, fresh_dsn: str, prefix: str) -> None:
    await create_topics(kafka_bootstrap, prefix)
    first, *rest = _migrations()
    conn = await asyncpg.connect(fresh_dsn)
    try:  # a database migrated by an older version: only the first migration applied
        await conn.execute(
            "CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_at timestamptz"
            " NOT NULL DEFAULT now())"
        )
        await conn.execute(first[1])
        await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", first[0])
    finally:
        await conn.close()
    code, report = await doctor(doctor_env(kafka_bootstrap, fresh_dsn, prefix))
    assert code == 2
    schema = rows(report)["schema"]
    assert schema["status"] == "fail"
    assert all(name in schema["detail"] for name, _ in rest)
    assert "jobstream migrate" in schema["fix"]

    code, out = await run_cli(
        "doctor", "--probe", env=doctor_env(kafka_bootstrap, fresh_dsn, prefix)
    )
    assert code == 2
    assert "schema: behind" in out


async def test_empty_group_warns_then_fails_once_events_wait_and_pauses_show(
    kafka_bootstrap: str, fresh_dsn: str, prefix: str
) -> None:
    await create_topics(kafka_bootstrap, prefix)
    await migrate_fully(fresh_dsn)
    env = doctor_env(kafka_bootstrap, fresh_dsn, prefix)
    code, report = await doctor(env)
    assert code == 1, json.dumps(report, indent=1)
    group = rows(report)[f"group {prefix}"]
    assert group["status"] == "warn"
    assert "no members; lag 0" in group["detail"]
    assert set(rows(report, "warn")) == {f"group {prefix}"}

    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        await client.submit("echo", {"waiting": True})
    # and an upstream that asked every replica to back off (a 429's Retry-After)
    conn = await asyncpg.connect(fresh_dsn)
    try:
        await conn.execute(
            "INSERT INTO rate_limit_buckets (key, tokens, capacity, refill_per_s, paused_until)"
            " VALUES ('openrouter', 0, 50, 50, now() + interval '2 minutes')"
        )
    finally:
        await conn.close()
    code, report = await doctor(env)
    assert code == 2
    checks = rows(report)
    group = checks[f"group {prefix}"]
    assert group["status"] == "fail"
    assert "lag 1" in group["detail"]
    pause = checks["rate limit openrouter"]
    assert pause["status"] == "warn"
    assert "paused for 1" in pause["detail"]


async def test_postgresql_down_fails_without_leaking_the_password(
    kafka_bootstrap: str, prefix: str
) -> None:
    await create_topics(kafka_bootstrap, prefix)
    dsn = f"postgresql://jobstream:s3cret-pw@127.0.0.1:{free_port()}/jobstream"
    code, out = await run_cli("doctor", "--json", env=doctor_env(kafka_bootstrap, dsn, prefix))
    assert code == 2
    assert "s3cret-pw" not in out
    pg = rows(json.loads(out))["postgresql"]
    assert pg["status"] == "fail"
    assert pg["detail"].startswith("unreachable")
    assert "JOBSTREAM_DATABASE_URL" in pg["fix"]


async def test_unset_services_name_the_variable(prefix: str) -> None:
    code, report = await doctor(doctor_env(None, None, prefix))
    assert code == 2
    failed = rows(report, "fail")
    assert failed["kafka"]["detail"] == "JOBSTREAM_KAFKA_BOOTSTRAP is not set"
    assert failed["postgresql"]["detail"] == "JOBSTREAM_DATABASE_URL is not set"
