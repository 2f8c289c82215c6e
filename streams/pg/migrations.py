"""PostgreSQL: every table and index jobstream uses, and the migrations that apply them
(run by the worker or ``jobstream migrate``)."""

from __future__ import annotations

from collections.abc import Sequence

from jobstream.streams.pg.pool import Connection

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


RATELIMIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_limit_buckets (
    key           text PRIMARY KEY,
    tokens        double precision NOT NULL,
    capacity      double precision NOT NULL CHECK (capacity >= 1),
    refill_per_s  double precision NOT NULL CHECK (refill_per_s > 0),
    tpm_tokens    double precision,
    tpm_capacity  double precision CHECK (tpm_capacity > 0),
    tpm_per_s     double precision CHECK (tpm_per_s > 0),
    paused_until  timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp()
) WITH (fillfactor = 50);
COMMENT ON TABLE rate_limit_buckets IS
    'Global token buckets per upstream key, shared by all replicas (streams/ratelimit.py)';
"""


DLQ_SCHEMA = """
CREATE TABLE IF NOT EXISTS dlq_replays (
    dead_letter_id      text PRIMARY KEY,
    job_id              text NOT NULL,
    job_type            text,
    target_topic        text NOT NULL,
    first_replayed_at   timestamptz NOT NULL DEFAULT now(),
    replayed_at         timestamptz NOT NULL DEFAULT now(),
    replay_count        integer NOT NULL DEFAULT 1,
    last_replayed_by    text NOT NULL,
    forced              boolean NOT NULL DEFAULT false,
    reset_attempts      boolean NOT NULL DEFAULT false,
    published_partition integer,
    published_offset    bigint
);
CREATE INDEX IF NOT EXISTS dlq_replays_job_id_idx ON dlq_replays (job_id);
CREATE TABLE IF NOT EXISTS dlq_replay_log (
    id                  bigserial PRIMARY KEY,
    dead_letter_id      text NOT NULL,
    job_id              text NOT NULL,
    replayed_at         timestamptz NOT NULL DEFAULT now(),
    replayed_by         text NOT NULL,
    forced              boolean NOT NULL,
    reset_attempts      boolean NOT NULL,
    target_topic        text NOT NULL,
    published_partition integer,
    published_offset    bigint
);
CREATE INDEX IF NOT EXISTS dlq_replay_log_dead_letter_idx ON dlq_replay_log (dead_letter_id);
"""


RETENTION_SCHEMA = """
CREATE INDEX IF NOT EXISTS jobs_status_finished_idx ON jobs (status, finished_at);
"""


CONSOLE_SCHEMA = """
CREATE INDEX IF NOT EXISTS jobs_console_updated_idx ON jobs (updated_at DESC, job_id DESC);
CREATE INDEX IF NOT EXISTS jobs_console_status_idx ON jobs (status, updated_at DESC, job_id DESC);
CREATE INDEX IF NOT EXISTS jobs_console_type_idx ON jobs (type, updated_at DESC, job_id DESC);
CREATE INDEX IF NOT EXISTS jobs_console_worker_idx ON jobs (worker, updated_at DESC, job_id DESC);
CREATE INDEX IF NOT EXISTS jobs_console_finished_idx ON jobs (finished_at)
    INCLUDE (status, attempt, created_at);
CREATE INDEX IF NOT EXISTS jobs_console_replay_of_idx ON jobs (replay_of)
    WHERE replay_of IS NOT NULL;
"""


CONSOLE_MINUTES_SCHEMA = """
CREATE TABLE IF NOT EXISTS console_minutes (
    minute         timestamptz PRIMARY KEY,
    succeeded      integer NOT NULL,
    dead_lettered  integer NOT NULL,
    retried        integer NOT NULL,
    latency_hist   integer[] NOT NULL
);
COMMENT ON TABLE console_minutes IS
    'Per-minute job counts and latency histograms for the console (streams/console/rollup.py)';
"""


LEAN_INDEXES_SCHEMA = """
DROP INDEX IF EXISTS jobs_status_idx;
"""
"""Every row write updates every index of ``jobs`` (its status changes, so no update is HOT):
an index that another one already serves is pure cost. ``jobs_status_finished_idx`` starts
with ``status``, so it serves everything ``jobs_status_idx`` did."""


def _migrations() -> Sequence[tuple[str, str]]:
    return (
        ("0001_jobs", JOBS_SCHEMA),
        ("0002_rate_limits", RATELIMIT_SCHEMA),
        ("0003_dlq_replays", DLQ_SCHEMA),
        ("0004_jobs_retention_index", RETENTION_SCHEMA),
        ("0005_execution_claims", CLAIMS_SCHEMA),
        ("0010_console_indexes", CONSOLE_SCHEMA),
        ("0011_console_minutes", CONSOLE_MINUTES_SCHEMA),
        ("0012_drop_redundant_status_index", LEAN_INDEXES_SCHEMA),
    )


_MIGRATION_LOCK = 0x6A6F6273  # "jobs": one advisory lock so replicas do not migrate at once


async def migrate(conn: Connection) -> list[str]:
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
