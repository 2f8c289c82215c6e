"""jobstream: background jobs for other applications on Kafka and PostgreSQL.

What a team imports is here::

    from jobstream import JobApp, JobContext, FatalError, JobClient

    app = JobApp("acme")

    @app.job("thumb.make", timeout_s=30, fatal=(ValueError,))
    async def make_thumb(payload: Thumb, ctx: JobContext[None]) -> dict[str, str]: ...

and ``jobstream.testing`` runs those handlers in memory. Everything jobstream installs lives
under this one name; ``jobstream.agents``, ``jobstream.models`` and ``jobstream.streams`` are its
internals (see the README's "Layout").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobstream.agents.app import Job, JobApp, JobOptions
from jobstream.agents.registry import JobContext
from jobstream.models.control import (
    CancelAnswer,
    CancelResult,
    Dedupe,
    DedupeMode,
    JobResult,
    JobUpdate,
    Progress,
    Submission,
)
from jobstream.models.deadletter import DeadLetter, DeadLetterReason
from jobstream.models.errors import (
    ConfigurationError,
    FatalError,
    JobError,
    JobstreamError,
    JobTimeoutError,
    RateLimitedError,
    ResultTimeoutError,
    RetryableError,
    SubmitError,
)
from jobstream.models.job import JobEvent, JobOutcome, JobStatus
from jobstream.streams.settings import RateLimit, Settings

if TYPE_CHECKING:
    from jobstream.agents.builtin import builtin
    from jobstream.streams.producer.client import JobClient

__all__ = [
    "CancelAnswer",
    "CancelResult",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetterReason",
    "Dedupe",
    "DedupeMode",
    "FatalError",
    "Job",
    "JobApp",
    "JobClient",
    "JobContext",
    "JobError",
    "JobEvent",
    "JobOptions",
    "JobOutcome",
    "JobResult",
    "JobStatus",
    "JobTimeoutError",
    "JobUpdate",
    "JobstreamError",
    "Progress",
    "RateLimit",
    "RateLimitedError",
    "ResultTimeoutError",
    "RetryableError",
    "Settings",
    "Submission",
    "SubmitError",
    "builtin",
]


def __getattr__(name: str) -> Any:
    # loaded on first use: the client pulls in the Kafka producer, the built-in app its handlers
    if name == "JobClient":
        from jobstream.streams.producer.client import JobClient

        return JobClient
    if name == "builtin":
        from jobstream.agents.builtin import builtin

        return builtin
    raise AttributeError(f"module 'jobstream' has no attribute {name!r}")
