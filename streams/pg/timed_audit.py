"""The audit of what operators do to timed work: a scheduled job re-timed or run now, a
schedule added, paused, resumed, removed or run now.

Every action writes its audit row in the transaction that makes the change, so the log holds
exactly the changes that happened (an action refused, or rolled back, leaves none). ``by`` says
who, from where (``user@host`` for the CLI, the console's role and the client's address, the
API's client address); never a token.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

import asyncpg

from jobstream.streams.pg.pool import Connection

Kind = Literal["job", "schedule"]


async def record(
    conn: Connection,
    *,
    topic: str,
    action: str,
    kind: Kind,
    target: str,
    by: str,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO timed_audit (topic, action, kind, target, detail, by)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        topic,
        action,
        kind,
        target,
        json.loads(json.dumps(detail or {}, default=_text)),  # instants as ISO-8601
        by,
    )


def _text(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


async def entries(
    pool: asyncpg.Pool,
    topic: str,
    *,
    kind: Kind | None = None,
    target: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The newest entries first, of one job or schedule when ``target`` is given."""
    rows = await pool.fetch(
        "SELECT id, at, action, kind, target, detail, by FROM timed_audit"
        " WHERE topic = $1 AND ($2::text IS NULL OR kind = $2)"
        " AND ($3::text IS NULL OR target = $3)"
        " ORDER BY id DESC LIMIT $4",
        topic,
        kind,
        target,
        limit,
    )
    return [dict(r) for r in rows]
