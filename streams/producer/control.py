"""Job control on the producer side, shared by :class:`JobClient`, the HTTP API and the CLI:
cancels (and the outcome records of jobs cancelled before they started), deduplicated
submits through the outbox, and awaited results.

Each needs PostgreSQL; a producer without it gets :class:`ConfigurationError` naming the
setting (:func:`require`).
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import socket
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

import asyncpg

from jobstream.models.control import CancelResult, Dedupe, Submission
from jobstream.models.errors import ConfigurationError
from jobstream.models.job import JobEvent
from jobstream.streams.failures import describe
from jobstream.streams.pg import control, dedupe
from jobstream.streams.pg.control import Cancel
from jobstream.streams.producer.waiter import ResultWaiter
from jobstream.streams.topics import TopicNames

log = logging.getLogger(__name__)

NEEDS_DATABASE = (
    "job control (cancel, dedupe keys, awaiting results) needs PostgreSQL: give JobClient a"
    " database_url (or pool), or set JOBSTREAM_DATABASE_URL for JobClient.from_settings"
)


class Sender(Protocol):
    async def send(
        self, topic: str, value: bytes | None, *, key: bytes | None = None
    ) -> Awaitable[Any]: ...


def require(pool: asyncpg.Pool | None) -> asyncpg.Pool:
    if pool is None:
        raise ConfigurationError(NEEDS_DATABASE)
    return pool


def who(role: str) -> str:
    """``role:user@host`` for the audit: enough to find who to ask, no credential."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        user = "unknown"
    return f"{role}:{user}@{socket.gethostname()}"


async def cancel_jobs(
    pool: asyncpg.Pool, sender: Sender, topics: TopicNames, job_ids: Sequence[str], *, by: str
) -> list[CancelResult]:
    """Cancel each job and publish the outcome records of those cancelled before they started
    (together, after their commits). A failed publish is logged, not raised: the rows are
    cancelled, any record of those jobs re-emits their outcome, and waiters read rows too."""
    done = await control.cancel_many(pool, job_ids, topic=topics.main, by=by)
    await publish_outcomes(sender, topics, done)
    by_id = {c.result.job_id: c.result for c in done}
    return [by_id[j] for j in job_ids]


async def publish_outcomes(sender: Sender, topics: TopicNames, done: Sequence[Cancel]) -> None:
    records = [r for c in done if (r := control.outcome_of(c)) is not None]
    if not records:
        return
    try:
        futures = [await sender.send(topics.outcomes, value, key=key) for key, value in records]
        await asyncio.gather(*futures)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the rows are durable; see cancel_jobs
        log.warning(
            "publishing the outcome of %d cancelled job(s) failed: %s", len(records), describe(exc)
        )


async def submit_unique(
    pool: asyncpg.Pool, sender: Sender, topic: str, event: JobEvent, spec: Dedupe
) -> Submission:
    """One deduplicated submit (:func:`jobstream.streams.pg.dedupe.submit`), then the publish of
    a new job that is due now. A failed publish leaves the job to the dispatcher (it is
    durable in its row): logged, not raised."""
    async with pool.acquire() as conn:
        taken = await dedupe.submit(conn, event, spec, topic=topic)
    if taken.publish is not None:
        try:
            await (await sender.send(topic, taken.publish.to_bytes(), key=taken.publish.key()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the dispatcher publishes it instead
            log.warning(
                "publishing job %s failed (%s); the dispatcher publishes it from its row",
                taken.job_id,
                describe(exc),
            )
            try:
                await dedupe.mark_undispatched(pool, taken.job_id)
            except Exception as again:  # noqa: BLE001 - then the dispatcher waits REDISPATCH_S
                log.warning("marking job %s for the dispatcher failed: %s", taken.job_id, again)
    return Submission(taken.job_id, taken.deduplicated)


def row_waiter(pool: asyncpg.Pool, interval_s: float = 0.25) -> ResultWaiter:
    """A waiter fed by the rows alone (the HTTP API's long poll)."""
    return ResultWaiter(pool, reread_s=interval_s, progress_s=interval_s)
