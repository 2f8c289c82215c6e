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


TIMED_AND_CONTROL_SCHEMA = """
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('scheduled', 'running', 'retrying', 'succeeded', 'dead_lettered',
                      'cancelled', 'expired'));
ALTER TABLE jobs
    ADD COLUMN IF NOT EXISTS run_at              timestamptz,
    ADD COLUMN IF NOT EXISTS dispatched_at       timestamptz,
    ADD COLUMN IF NOT EXISTS event               jsonb,
    ADD COLUMN IF NOT EXISTS expires_at          timestamptz,
    ADD COLUMN IF NOT EXISTS started_at          timestamptz,
    ADD COLUMN IF NOT EXISTS cancel_requested_at timestamptz,
    ADD COLUMN IF NOT EXISTS progress            real,
    ADD COLUMN IF NOT EXISTS progress_detail     text,
    ADD COLUMN IF NOT EXISTS progress_at         timestamptz,
    ADD COLUMN IF NOT EXISTS dedupe_key          text;
CREATE INDEX IF NOT EXISTS jobs_scheduled_due_idx ON jobs (run_at) WHERE status = 'scheduled';

CREATE TABLE IF NOT EXISTS schedules (
    name          text PRIMARY KEY,
    job_type      text NOT NULL,
    payload       jsonb NOT NULL DEFAULT '{}',
    cron          text,
    every_s       double precision CHECK (every_s > 0),
    timezone      text NOT NULL DEFAULT 'UTC',
    missed        text NOT NULL DEFAULT 'skip' CHECK (missed IN ('skip', 'once', 'catch_up')),
    catch_up_max  integer NOT NULL DEFAULT 1 CHECK (catch_up_max >= 1),
    paused        boolean NOT NULL DEFAULT false,
    source        text NOT NULL DEFAULT 'runtime' CHECK (source IN ('app', 'runtime')),
    next_at       timestamptz NOT NULL,
    last_at       timestamptz,
    last_job_id   text,
    fired         bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((cron IS NULL) <> (every_s IS NULL))
);
CREATE INDEX IF NOT EXISTS schedules_due_idx ON schedules (next_at) WHERE NOT paused;
COMMENT ON TABLE schedules IS
    'Recurring jobs: one job per tick, its id derived from the schedule and the tick';

CREATE TABLE IF NOT EXISTS leases (
    name         text PRIMARY KEY,
    holder       text NOT NULL,
    until        timestamptz NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE leases IS
    'Work one replica at a time does (the dispatcher), held by a renewed lease: no session lock';

CREATE TABLE IF NOT EXISTS dedupe_keys (
    key         text PRIMARY KEY,
    job_id      text NOT NULL,
    mode        text NOT NULL CHECK (mode IN ('simple', 'throttle', 'debounce')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS dedupe_keys_expires_idx ON dedupe_keys (expires_at);
COMMENT ON TABLE dedupe_keys IS
    'The job that stands for a deduplication key until it expires (one per key: a constraint)';
"""
"""Timed jobs (scheduled rows are the dispatcher's outbox), recurring schedules, the
dispatcher's lease, cancellation marks, progress and deduplication keys."""


TIMED_PER_TOPIC_SCHEMA = """
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS topic text;
DROP INDEX IF EXISTS jobs_scheduled_due_idx;
CREATE INDEX IF NOT EXISTS jobs_scheduled_due_idx ON jobs (topic, run_at)
    WHERE status = 'scheduled';
ALTER TABLE schedules ADD COLUMN IF NOT EXISTS topic text NOT NULL DEFAULT 'jobs';
ALTER TABLE schedules DROP CONSTRAINT IF EXISTS schedules_pkey;
ALTER TABLE schedules ADD PRIMARY KEY (topic, name);
DROP INDEX IF EXISTS schedules_due_idx;
CREATE INDEX IF NOT EXISTS schedules_due_idx ON schedules (topic, next_at) WHERE NOT paused;
"""
"""Deployments with their own topic prefix may share a database: a scheduled job and a
schedule belong to the main topic they are published to, and each prefix's dispatcher (its own
lease) publishes only those."""


TIMED_AUDIT_SCHEMA = """
CREATE INDEX IF NOT EXISTS jobs_scheduled_fresh_idx ON jobs (topic, run_at)
    WHERE status = 'scheduled' AND dispatched_at IS NULL;
CREATE INDEX IF NOT EXISTS jobs_scheduled_dispatched_idx ON jobs (topic, dispatched_at)
    WHERE status = 'scheduled' AND dispatched_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS timed_audit (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    topic    text NOT NULL,
    action   text NOT NULL,
    kind     text NOT NULL CHECK (kind IN ('job', 'schedule')),
    target   text NOT NULL,
    detail   jsonb NOT NULL DEFAULT '{}',
    by       text NOT NULL
);
CREATE INDEX IF NOT EXISTS timed_audit_target_idx ON timed_audit (kind, target, id);
COMMENT ON TABLE timed_audit IS
    'What operators did to scheduled jobs and schedules (re-time, run now, pause, ...), by whom';
"""
"""The dispatcher's two reads each walk an index of their own: due rows not yet published (a
burst of due jobs that were published but not yet claimed is not scanned again every round),
and published rows not claimed for a while (published again). The audit of operator actions on
timed jobs, written in the transaction of the action."""


JOB_CONTROL_SCHEMA = """
CREATE TABLE IF NOT EXISTS control_audit (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    topic    text,
    action   text NOT NULL CHECK (action IN ('cancel', 'reopen')),
    job_id   text NOT NULL,
    was      text,
    answer   text NOT NULL,
    by       text NOT NULL
);
CREATE INDEX IF NOT EXISTS control_audit_job_idx ON control_audit (job_id, id);
COMMENT ON TABLE control_audit IS
    'Who cancelled which job (or reopened a cancelled one for a replay), and what it was then';
CREATE INDEX IF NOT EXISTS jobs_cancel_requested_idx ON jobs (updated_at DESC, job_id DESC)
    WHERE cancel_requested_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS dedupe_keys_job_idx ON dedupe_keys (job_id);
"""
"""Job control: the audit of cancels (written in the cancel's own transaction), the console's
"asked to cancel" filter, and the dedupe key of a job (the console's job page)."""


DEDUPE_PER_TOPIC_SCHEMA = """
ALTER TABLE dedupe_keys ADD COLUMN IF NOT EXISTS topic text NOT NULL DEFAULT '';
ALTER TABLE dedupe_keys DROP CONSTRAINT IF EXISTS dedupe_keys_pkey;
ALTER TABLE dedupe_keys ADD PRIMARY KEY (topic, key);
"""
"""Dedupe keys per main topic: deployments with their own prefix may share a database, and
each may use a key the other does."""


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
        ("0013_timed_jobs_and_control", TIMED_AND_CONTROL_SCHEMA),
        ("0014_timed_jobs_per_topic", TIMED_PER_TOPIC_SCHEMA),
        ("0015_timed_dispatch_and_audit", TIMED_AUDIT_SCHEMA),
        ("0016_job_control", JOB_CONTROL_SCHEMA),
        ("0017_dedupe_keys_per_topic", DEDUPE_PER_TOPIC_SCHEMA),
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
