"""The vocabulary of job control: deduplication specs, cancel answers, awaited results and
progress, shared by the client, the HTTP API, the CLI and the console."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from jobstream.models.job import JobStatus

MAX_DEDUPE_KEY = 200
"""Characters of a dedupe key (as of a job id)."""
MAX_DEDUPE_TTL_S = 10 * 365 * 86400.0


class DedupeMode(StrEnum):
    """BullMQ's three modes, for what a submit does when its key has a standing job."""

    SIMPLE = "simple"
    """Keep the first job while it is unfinished (and the key not expired): later submits are
    answered with its id; once it finished, the next submit makes a new job."""
    THROTTLE = "throttle"
    """Keep the first job for the TTL, finished or not: at most one job per key per TTL."""
    DEBOUNCE = "debounce"
    """While the standing job still waits for its time, a submit replaces its payload and moves
    its time to the new submit's delay (and extends the key): it runs once, after the last
    submit of a burst, with the last payload. Needs a delay."""


@dataclass(frozen=True)
class Dedupe:
    """A deduplication key for a submit.

    :param key: the key (1 to 200 characters); one job stands for it at a time, across every
        producer and API replica (a primary key in PostgreSQL decides).
    :param mode: ``simple`` (default), ``throttle`` or ``debounce`` (see :class:`DedupeMode`).
    :param ttl: how long the key holds, in seconds or a timedelta: required for ``throttle``;
        for ``simple`` it is optional (without it the key holds while the job is unfinished);
        for ``debounce`` it defaults to the job's delay and is extended by every submit.
    """

    key: str
    mode: DedupeMode | str = DedupeMode.SIMPLE
    ttl: float | timedelta | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key.strip():
            raise ValueError("a dedupe key is a non-empty string")
        if len(self.key) > MAX_DEDUPE_KEY:
            raise ValueError(f"a dedupe key has at most {MAX_DEDUPE_KEY} characters")
        if "\x00" in self.key or any(0xD800 <= ord(c) <= 0xDFFF for c in self.key):
            raise ValueError("a dedupe key cannot hold U+0000 or a lone surrogate")
        try:
            object.__setattr__(self, "mode", DedupeMode(self.mode))
        except ValueError:
            modes = ", ".join(m.value for m in DedupeMode)
            raise ValueError(f"dedupe mode must be one of {modes}, not {self.mode!r}") from None
        ttl = self.ttl_s
        if ttl is not None and not 0 < ttl <= MAX_DEDUPE_TTL_S:
            raise ValueError("a dedupe ttl is more than 0 and at most 10 years")
        if self.mode is DedupeMode.THROTTLE and ttl is None:
            raise ValueError("throttle needs a ttl: how long new submits are ignored")

    @property
    def ttl_s(self) -> float | None:
        if self.ttl is None:
            return None
        if isinstance(self.ttl, timedelta):
            return self.ttl.total_seconds()
        if isinstance(self.ttl, bool) or not isinstance(self.ttl, int | float):
            raise ValueError("a dedupe ttl is a number of seconds or a timedelta")
        return float(self.ttl)


@dataclass(frozen=True)
class Submission:
    """What a submit with a dedupe key answers."""

    job_id: str
    """The job that stands for the key: the new one, or the one the submit was folded into."""
    deduplicated: bool
    """True when no new job was made (the payload of a debounced job was replaced)."""


class CancelAnswer(StrEnum):
    CANCELLED = "cancelled"
    """It had not started (queued, scheduled, waiting to retry, or an id never seen): its row is
    ``cancelled`` now and no delivery of it will run."""
    REQUESTED = "requested"
    """It is running: its worker cancels the handler within about a second, and the job ends
    ``cancelled`` (unless it finished first)."""
    FINISHED = "finished"
    """It had finished already; ``status`` says how."""


@dataclass(frozen=True)
class CancelResult:
    job_id: str
    answer: CancelAnswer
    status: JobStatus
    """The row's status after the cancel (``running`` for a requested one)."""
    was: JobStatus | None
    """The status before; None when the job had no row (queued in Kafka, or unknown)."""


@dataclass(frozen=True)
class Progress:
    """What a running job last reported with ``ctx.progress``."""

    job_id: str
    fraction: float
    detail: str | None
    at: datetime | None


@dataclass(frozen=True)
class JobResult:
    """How a job ended, as its row holds it."""

    job_id: str
    status: JobStatus
    result: Any = None
    """The handler's return value (JSON), for a succeeded job."""
    error: str | None = None
    error_class: str | None = None
    attempt: int = 1
    finished_at: datetime | None = None

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.SUCCEEDED


JobUpdate = Progress | JobResult
"""What :meth:`JobClient.watch` yields: progress while the job runs, then its result."""
