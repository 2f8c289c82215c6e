"""What the console reads from PostgreSQL: throughput and latency, job pages, audits, limits.

Job pages use keyset pagination on ``(updated_at, job_id)`` (newest first): each page is an
index range scan that starts where the previous one stopped, so page 1,000 costs what page 1
costs. The indexes are in :data:`SCHEMA_SQL`, one per filter the page offers; a filter that
combines several of them uses one index and checks the rest on the rows it reads. SQL is built
from the filters present (never ``$1 IS NULL OR ...``), so each shape gets a plan that uses
its index.

Columns the jobs table may or may not have yet (claims, leases) are found at start-up from
the catalog, and the console shows what exists.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

"""The console's migration: indexes only, so it can be applied on a live table."""

LIST_COLUMNS = (
    "job_id, type, status, attempt, worker, error_class, executions, replay_of, "
    "created_at, finished_at, updated_at"
)
MAX_PAGE = 200


BAD_CURSOR = "cursor is not one this console made (take it from next_cursor)"


class CursorError(ValueError):
    """Raised when a pagination cursor was not made by this console."""


@dataclass(frozen=True)
class JobFilter:
    status: str | None = None
    type: str | None = None
    worker: str | None = None
    since: datetime | None = None
    """Inclusive, on ``updated_at`` (the row's last change: its finish for a finished job)."""
    until: datetime | None = None
    """Exclusive, on ``updated_at``."""
    prefix: str | None = None
    """Leave out rows that came from another prefix's topics (see :func:`source_topic_sql`)."""
    cancel_requested: bool = False
    """Only jobs someone asked to cancel (running ones being stopped, and those it stopped)."""


def source_topic_sql(prefix: str, arg: Callable[[Any], str]) -> str:
    """The condition "the row is not another prefix's": its ``topic`` (set by the claims and
    the scheduled rows of the workers of that main topic) is ``prefix``; a row without one
    (written before the column existed) is told by its ``source``, a record of a topic of
    ``prefix`` (``<topic>:<partition>:<offset>``, its main topic or a retry tier), or, naming no
    topic at all, shown to every console."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    topic = "split_part(source, ':', 1)"
    return (
        f"(topic = {arg(prefix)} OR (topic IS NULL AND (source IS NULL"
        f" OR source NOT LIKE '%:%:%' OR {topic} = {arg(prefix)}"
        f" OR {topic} LIKE {arg(escaped + '.retry.%')})))"
    )


def encode_cursor(updated_at: datetime, job_id: str) -> str:
    raw = f"{updated_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, job_id = raw.split("|", 1)
        when = datetime.fromisoformat(at)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise CursorError(
            "cursor is not one this console made (take it from next_cursor)"
        ) from None
    if when.tzinfo is None:
        raise CursorError("cursor is not one this console made (take it from next_cursor)")
    return when, job_id


def jobs_page_sql(
    flt: JobFilter, after: tuple[datetime, str] | None, limit: int
) -> tuple[str, list[Any]]:
    """The page query for these filters: one row more than ``limit`` tells if a next page exists."""
    where: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    for column in ("status", "type", "worker"):
        value = getattr(flt, column)
        if value is not None:
            where.append(f"{column} = {arg(value)}")
    if flt.prefix is not None:
        where.append(source_topic_sql(flt.prefix, arg))
    if flt.cancel_requested:
        where.append("cancel_requested_at IS NOT NULL")
    if flt.since is not None:
        where.append(f"updated_at >= {arg(flt.since)}")
    if flt.until is not None:
        where.append(f"updated_at < {arg(flt.until)}")
    if after is not None:
        where.append(f"(updated_at, job_id) < ({arg(after[0])}, {arg(after[1])})")
    sql = f"SELECT {LIST_COLUMNS} FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY updated_at DESC, job_id DESC LIMIT {int(limit) + 1}"
    return sql, args


async def jobs_page(
    pool: asyncpg.Pool, flt: JobFilter, after: tuple[datetime, str] | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    sql, args = jobs_page_sql(flt, after, limit)
    rows = [dict(r) for r in await pool.fetch(sql, *args)]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor(last["updated_at"], last["job_id"])
    return rows, next_cursor


async def job_row(
    pool: asyncpg.Pool, job_id: str, *, prefix: str | None = None
) -> dict[str, Any] | None:
    """The row of ``job_id``; with ``prefix``, only when it came from one of its topics."""
    args: list[Any] = [job_id]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    sql = "SELECT * FROM jobs WHERE job_id = $1"
    if prefix is not None:
        sql += " AND " + source_topic_sql(prefix, arg)
    row = await pool.fetchrow(sql, *args)
    return dict(row) if row is not None else None


async def rows_replayed_from(
    pool: asyncpg.Pool, dead_letter_ids: list[str]
) -> list[dict[str, Any]]:
    """Job rows whose run came from one of these dead letters (lineage, forwards)."""
    if not dead_letter_ids:
        return []
    rows = await pool.fetch(
        "SELECT job_id, status, replay_of, updated_at FROM jobs"
        " WHERE replay_of = ANY($1::text[]) ORDER BY updated_at",
        dead_letter_ids,
    )
    return [dict(r) for r in rows]


async def replay_log(
    pool: asyncpg.Pool, *, dead_letter_ids: list[str] | None = None, job_id: str | None = None
) -> list[dict[str, Any]]:
    """Every publish of a replay (the audit trail), oldest first."""
    if not await _exists(pool, "dlq_replay_log"):
        return []
    if job_id is not None:
        rows = await pool.fetch(
            "SELECT * FROM dlq_replay_log WHERE job_id = $1 ORDER BY id", job_id
        )
    else:
        rows = await pool.fetch(
            "SELECT * FROM dlq_replay_log WHERE dead_letter_id = ANY($1::text[]) ORDER BY id",
            dead_letter_ids or [],
        )
    return [dict(r) for r in rows]


async def replay_counts(pool: asyncpg.Pool, dead_letter_ids: list[str]) -> dict[str, int]:
    if not dead_letter_ids or not await _exists(pool, "dlq_replays"):
        return {}
    rows = await pool.fetch(
        "SELECT dead_letter_id, replay_count FROM dlq_replays"
        " WHERE dead_letter_id = ANY($1::text[])",
        dead_letter_ids,
    )
    return {r["dead_letter_id"]: r["replay_count"] for r in rows}


async def _exists(pool: asyncpg.Pool, table: str) -> bool:
    return bool(await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", table))


# --- schema discovery and claims -----------------------------------------------------------


@dataclass(frozen=True)
class JobsSchema:
    """What the jobs table has here; the console never names a column not in ``columns``."""

    columns: frozenset[str]
    statuses: tuple[str, ...]


_QUOTED = re.compile(r"'([a-z_]+)'")


async def discover(pool: asyncpg.Pool) -> JobsSchema:
    cols = await pool.fetch(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = 'jobs'"
    )
    checks = await pool.fetch(
        "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint"
        " WHERE conrelid = to_regclass('jobs') AND contype = 'c'"
    )
    statuses: list[str] = []
    for c in checks:
        if "status" in c["def"]:
            statuses.extend(s for s in _QUOTED.findall(c["def"]) if s not in statuses)
    return JobsSchema(
        columns=frozenset(r["column_name"] for r in cols),
        statuses=tuple(statuses) or ("retrying", "succeeded", "dead_lettered"),
    )


async def claims_by_worker(pool: asyncpg.Pool, schema: JobsSchema) -> list[dict[str, Any]] | None:
    """Jobs running under a live lease, per worker; None when the table has no leases.

    A ``running`` row whose lease has run out belongs to a dead worker and is not counted:
    another worker will take it over.
    """
    if "lease_until" not in schema.columns or "running" not in schema.statuses:
        return None
    holder = "claimed_by" if "claimed_by" in schema.columns else "worker"
    rows = await pool.fetch(
        f"SELECT {holder} AS worker, count(*) AS in_flight FROM jobs"
        " WHERE status = 'running' AND lease_until > now()"
        f" GROUP BY {holder} ORDER BY {holder}"
    )
    return [dict(r) for r in rows]


# --- rate limits ---------------------------------------------------------------------------


async def rate_limits(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Every key's bucket with its tokens refilled up to now (the row keeps the last level)."""
    if not await _exists(pool, "rate_limit_buckets"):
        return []
    rows = await pool.fetch("SELECT * FROM rate_limit_buckets ORDER BY key")
    now: datetime = await pool.fetchval("SELECT clock_timestamp()")
    out = []
    for r in rows:
        row = dict(r)
        item: dict[str, Any] = {
            "key": row["key"],
            "rate_per_s": row.get("refill_per_s"),
            "capacity": row.get("capacity"),
        }
        updated = row.get("updated_at")
        tokens = row.get("tokens")
        paused_until = row.get("paused_until")
        active = paused_until is not None and paused_until > now
        if tokens is not None and updated is not None and row.get("refill_per_s"):
            # as streams.pg.ratelimit refills: never before the pause ends
            since = max(updated, paused_until) if paused_until is not None else updated
            elapsed = max((now - since).total_seconds(), 0.0)
            tokens = min(row["capacity"], tokens + elapsed * row["refill_per_s"])
        # the only thing that pauses a key is an upstream's rate-limit answer (429 and its
        # Retry-After, see agents/pipeline.py); the table keeps no other reason
        item.update(
            tokens=tokens,
            paused_until=paused_until.isoformat() if paused_until is not None and active else None,
            pause_reason="upstream answered 429 (Retry-After)" if active else None,
        )
        if row.get("tpm_capacity"):
            tpm = row.get("tpm_tokens") or 0.0
            if updated is not None and row.get("tpm_per_s"):
                elapsed = max((now - updated).total_seconds(), 0.0)
                tpm = min(row["tpm_capacity"], tpm + elapsed * row["tpm_per_s"])
            item.update(tokens_per_minute=row["tpm_capacity"], tpm_tokens_left=tpm)
        out.append(item)
    return out
