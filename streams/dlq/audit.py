"""The replay audit in PostgreSQL: which dead letters were republished, when, by whom.

Two tables. ``dlq_replays`` holds one row per dead letter and is what makes replay
idempotent: a dead letter with a row here is not republished again unless forced.
``dlq_replay_log`` keeps one row per publish, so a forced replay does not erase the record of
the earlier ones.

Ordering against the broker (see :func:`claim` and :func:`record`): every replay runs in one
transaction that first takes a per-dead-letter advisory lock and reads the row, then the
caller publishes and awaits the broker's acknowledgement, and only then the row is written and
the transaction commits. A crash after the publish but before the commit leaves no row, so the
next run publishes that dead letter once more: at most one extra publish per crash, never a
dead letter marked replayed that never reached the topic. A duplicate is a job delivered
twice, which the workers must tolerate anyway (Kafka delivers at least once); a replay that
is recorded but never published would be lost silently. The lock makes two operators
replaying at the same time wait for each other instead of both publishing.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from jobstream.streams.pg.pool import Connection


def replayed_by() -> str:
    """``user@host``: enough to find who to ask about a replay, without any credential."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers; the host still identifies it
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Published:
    """Where the broker put a replayed record, kept in the audit for tracing."""

    topic: str
    partition: int
    offset: int


async def replayed_ids(conn: Connection, ids: Iterable[str]) -> set[str]:
    """The subset of ``ids`` already replayed; read-only, so a dry run can use it."""
    exists = await conn.fetchval("SELECT to_regclass('dlq_replays') IS NOT NULL")
    if not exists:
        return set()
    rows = await conn.fetch(
        "SELECT dead_letter_id FROM dlq_replays WHERE dead_letter_id = ANY($1::text[])",
        list(ids),
    )
    return {r["dead_letter_id"] for r in rows}


async def claim(conn: Connection, dead_letter_id: str) -> int:
    """Lock one dead letter for this transaction; returns how often it was replayed before.

    Must run inside the transaction that later calls :func:`record`: the lock is what makes
    a concurrent replay of the same dead letter wait and then see this one's row.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", dead_letter_id)
    count = await conn.fetchval(
        "SELECT replay_count FROM dlq_replays WHERE dead_letter_id = $1", dead_letter_id
    )
    return int(count or 0)


async def record(
    conn: Connection,
    *,
    dead_letter_id: str,
    job_id: str,
    job_type: str | None,
    published: Published,
    forced: bool,
    reset_attempts: bool,
    by: str,
) -> None:
    """Write the audit after the broker acknowledged the publish (same transaction as claim)."""
    await conn.execute(
        """
        INSERT INTO dlq_replays AS r (
            dead_letter_id, job_id, job_type, target_topic, last_replayed_by,
            forced, reset_attempts, published_partition, published_offset)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ON CONFLICT (dead_letter_id) DO UPDATE SET
            replayed_at = now(),
            replay_count = r.replay_count + 1,
            target_topic = EXCLUDED.target_topic,
            last_replayed_by = EXCLUDED.last_replayed_by,
            forced = EXCLUDED.forced,
            reset_attempts = EXCLUDED.reset_attempts,
            published_partition = EXCLUDED.published_partition,
            published_offset = EXCLUDED.published_offset
        """,
        dead_letter_id,
        job_id,
        job_type,
        published.topic,
        by,
        forced,
        reset_attempts,
        published.partition,
        published.offset,
    )
    await conn.execute(
        """
        INSERT INTO dlq_replay_log (
            dead_letter_id, job_id, replayed_by, forced, reset_attempts,
            target_topic, published_partition, published_offset)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        """,
        dead_letter_id,
        job_id,
        by,
        forced,
        reset_attempts,
        published.topic,
        published.partition,
        published.offset,
    )
