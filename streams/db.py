"""PostgreSQL: the connection pool and the schema migrations (run by the worker or `migrate`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

import asyncpg

JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id        text PRIMARY KEY,
    type          text,
    status        text NOT NULL CHECK (status IN ('retrying', 'succeeded', 'dead_lettered')),
    attempt       integer NOT NULL,
    result        jsonb,
    error         text,
    error_class   text,
    source        text,
    replay_of     text,
    worker        text,
    executions    integer NOT NULL DEFAULT 1,
    created_at    timestamptz,
    finished_at   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS jobs_status_idx ON jobs (status);
CREATE INDEX IF NOT EXISTS jobs_type_finished_idx ON jobs (type, finished_at);
"""

CLAIMS_SCHEMA = """
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('running', 'retrying', 'succeeded', 'dead_lettered'));
ALTER TABLE jobs
    ADD COLUMN IF NOT EXISTS claim_token text,
    ADD COLUMN IF NOT EXISTS lease_until timestamptz,
    ADD COLUMN IF NOT EXISTS takeovers  integer NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS jobs_running_lease_idx ON jobs (lease_until) WHERE status = 'running';
"""


def _migrations() -> Sequence[tuple[str, str]]:
    # imported here so that each module keeps its own schema next to the code that uses it
    from streams.console.queries import SCHEMA_SQL as CONSOLE_SCHEMA
    from streams.console.rollup import SCHEMA_SQL as CONSOLE_MINUTES_SCHEMA
    from streams.dlq_audit import SCHEMA_SQL as DLQ_SCHEMA
    from streams.ratelimit import SCHEMA_SQL as RATELIMIT_SCHEMA
    from streams.retention import SCHEMA_SQL as RETENTION_SCHEMA

    return (
        ("0001_jobs", JOBS_SCHEMA),
        ("0002_rate_limits", RATELIMIT_SCHEMA),
        ("0003_dlq_replays", DLQ_SCHEMA),
        ("0004_jobs_retention_index", RETENTION_SCHEMA),
        ("0005_execution_claims", CLAIMS_SCHEMA),
        ("0010_console_indexes", CONSOLE_SCHEMA),
        ("0011_console_minutes", CONSOLE_MINUTES_SCHEMA),
    )


_MIGRATION_LOCK = 0x6A6F6273  # "jobs": one advisory lock so replicas do not migrate at once


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations not yet applied; safe to run from every replica at start-up.

    One transaction holds a transaction-level advisory lock: it is released at commit or
    rollback by the server itself, so it also works behind a transaction-mode pooler (where a
    session lock would stay on a server connection other clients then use) and cannot leak
    when the client dies. All pending migrations commit together, or none does.
    """
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for name, sql in _migrations():
            if name in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            applied.append(name)
    return applied


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


PoolerMode = Literal["none", "transaction"]


async def create_pool(
    dsn: str, *, min_size: int = 2, max_size: int = 10, pooler_mode: PoolerMode = "none"
) -> asyncpg.Pool:
    """``pooler_mode="transaction"``: the server connection may change between transactions
    (PgBouncer, Supabase's pooler), so a statement prepared under a name on one would be
    missing on the next; asyncpg then prepares only unnamed statements."""
    extra: dict[str, Any] = {}
    if pooler_mode == "transaction":
        extra["statement_cache_size"] = 0
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        command_timeout=30,
        **extra,
    )
    assert pool is not None
    return pool
