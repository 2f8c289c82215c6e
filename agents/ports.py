"""What the pipeline needs from the services around it, as protocols.

The pipeline and the retry forwarder are written against these, not against the PostgreSQL
store, the Kafka publisher and the PostgreSQL rate limiter themselves: the worker's runtime hands
them the real ones (``streams.pg.results.ResultStore``, ``streams.kafka.publisher.Publisher``,
``streams.pg.ratelimit.PgRateLimiter``), the unit tests in-memory fakes (``tests/fakes.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from jobstream.models.rows import ClaimRequest, ClaimResult, JobRow, ScheduledRow, StoredState
from jobstream.streams.kafka.publisher import Headers


class JobStore(Protocol):
    """The job rows: execution claims and fenced writes (see ``streams.pg.results``)."""

    async def claim(self, request: ClaimRequest) -> ClaimResult:
        """Take the job for this execution, or learn the row as it was (not won)."""
        ...

    async def write(self, row: JobRow) -> StoredState:
        """Once committed; the state the table now holds (unchanged unless ``row`` holds the
        claim). Raises when the row cannot be stored."""
        ...

    def release(self, job_id: str, token: str) -> None:
        """The claim ``token`` took on ``job_id`` is done with: stop renewing it."""
        ...

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> list[ClaimResult]:
        """``claim`` for a whole batch in one round trip, results in request order."""
        ...

    async def park_many(self, rows: Sequence[ScheduledRow]) -> list[StoredState | None]:
        """Delayed jobs as ``scheduled`` rows: None where the row was made, else the row the
        job id already has (left as it is)."""
        ...

    async def cancel_requested(self, held: Mapping[str, str]) -> list[str]:
        """Of the running jobs held under these tokens (job id -> token), those asked to be
        cancelled."""
        ...

    async def progress_many(self, updates: Sequence[tuple[str, str, float, str | None]]) -> None:
        """Progress (job id, token, fraction, detail) of running jobs, in one statement."""
        ...

    async def write_many(self, rows: Sequence[JobRow]) -> list[StoredState | Exception]:
        """``write`` for a whole batch in one statement, in row order; a row PostgreSQL refuses
        for its content gets its exception in its place, the others are still written. Raises
        only for what fails the whole batch (an outage)."""
        ...


class RecordPublisher(Protocol):
    """Durable sends, and each topic's size limit (see ``streams.kafka.publisher``)."""

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> object:
        """Once the record is durable. Raises ``RecordTooLargeError`` for a record the topic
        refuses for its size, and a transient error for one that may go through later."""
        ...

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[Any]:
        """Once the record is queued; the future resolves once it is durable. Raises like
        ``send_and_wait`` for a record the topic refuses for its size."""
        ...

    def limit(self, topic: str) -> int:
        """The largest record the broker accepts on ``topic``."""
        ...

    def record_size(self, value: bytes | None, key: bytes | None, headers: Headers | None) -> int:
        """A record's size as the limit counts it."""
        ...


class Limiter(Protocol):
    """Upstream rate limits shared by every replica, keyed by upstream."""

    async def acquire(self, key: str | None) -> None: ...
    async def pause(self, key: str, seconds: float) -> None: ...
    async def charge_tokens(self, key: str, tokens: float) -> None: ...
