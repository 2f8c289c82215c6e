r"""The states of a record in the job lifecycle, as types.

Every record of the main topic (and every record a retry tier cannot pass on) goes through one
machine (:mod:`jobstream.agents.machine`)::

    record --read--> Read --classify--> Decoded --slot, claim won--> Claimed --handler--> settled
           \--> Unrunnable (undecodable) --claim, no run--> settled (a dead letter)
    Decoded --claim not won--> settled (re-emit, duplicate) | waits for the holder, claims again
    Decoded (unknown type, payload refused) --claim, no run--> settled (a dead letter)
    Decoded (not_before ahead) --> Scheduled (a row; the dispatcher publishes it when due)
    Decoded (past expires_at) / claim of a job asked to cancel --claim, no run--> Stopped
    Claimed --handler interrupted by a cancel request--> Stopped (cancelled)

A settled state says what must become durable: :class:`Succeeded`, :class:`Retrying`,
:class:`DeadLettered`, :class:`Reemitted`, :class:`Scheduled` (a delayed job kept as a row),
:class:`Stopped` (cancelled or expired), or :class:`Finished` (nothing to write). The settle
stage (:mod:`jobstream.agents.settle`) makes a batch of them durable (records that must exist
before the row, the rows in one statement, the outcomes) and only then acks their records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from jobstream.agents.registry import JobType
from jobstream.models.deadletter import DeadLetterReason
from jobstream.models.errors import InvalidJobError
from jobstream.models.job import FailureRecord, JobEvent
from jobstream.models.rows import ScheduledRow, StoredState
from jobstream.streams.kafka.record import Record
from jobstream.streams.topics import RetryTier


class Outcome(StrEnum):
    """How a record ended: the metric label ``outcome`` and what the runtime acks on."""

    SUCCEEDED = "succeeded"
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"
    REEMITTED = "reemitted"
    """The job was already done: its stored outcome was published again."""
    DUPLICATE = "duplicate"
    """A redelivery of an attempt whose result (a retry) is already durable."""
    CLAIM_LOST = "claim_lost"
    """The execution's lease lapsed and another took the job over: its result was dropped."""
    ABANDONED = "abandoned"
    """Left at a drain before it started: not acked, the partition's next owner runs it."""
    UNROUTABLE = "unroutable"
    """Even the dead-letter route failed (logged and counted); acked so nothing stalls."""
    SCHEDULED = "scheduled"
    """A delayed job, kept as a scheduled row until its time (the dispatcher publishes it)."""
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def acked(self) -> bool:
        return self is not Outcome.ABANDONED


@dataclass(slots=True)
class Source:
    """What is known of the record and its job: enough to dead-letter it from anywhere."""

    rec: Record
    job_id: str
    job_type: str | None = None
    attempt: int = 1
    created_at: datetime | None = None
    replay_of: str | None = None
    history: tuple[FailureRecord, ...] = ()
    tier: str | None = None
    """The retry tier the record came through (its header), for error reports."""
    payload: Any = None
    """The job's payload (or the raw value of undecodable input): error reports are scrubbed
    of it, never sent it."""
    type_label: str = "unknown"
    """The metrics' ``type`` label: a registered type's name, else ``unknown`` (a producer's
    typo must not grow the label set)."""


# -- before the settle stage ----------------------------------------------------------------


@dataclass(slots=True)
class Read:
    """A record that decoded into a job event; its type is not looked up yet."""

    src: Source
    job: JobEvent


@dataclass(slots=True)
class Decoded:
    """A job read from its record. It runs when its type is known and its model accepts its
    payload (``runnable``: it waits for a handler slot); else its claim ends it as a dead
    letter (counting no run)."""

    src: Source
    job: JobEvent
    job_type: JobType | None
    payload: BaseModel | InvalidJobError

    @property
    def runnable(self) -> bool:
        return not isinstance(self.payload, InvalidJobError)


@dataclass(slots=True)
class Unrunnable:
    """A record that ends as a dead letter without a run: undecodable input, an unknown type,
    a payload its model refuses, or a retry event its tier could not pass on. It is claimed
    (counting no run) so that its dead-lettered row is written under a claim."""

    src: Source
    error: BaseException
    reason: DeadLetterReason
    redelivered_reemits: bool = True
    """A terminal row this same record left (same coordinates) means it was handled already:
    re-emit instead of a second letter."""


@dataclass(slots=True)
class Claimed:
    """A job that won its claim: its handler runs under ``token`` (the run is counted)."""

    src: Source
    job: JobEvent
    job_type: JobType
    payload: BaseModel
    token: str
    takeovers: int


@dataclass(slots=True)
class Ran:
    """A handler that returned: its result and how long it took (seconds)."""

    result: Any
    elapsed: float


@dataclass(slots=True)
class Failed:
    """A handler that raised (or ran past its timeout, or returned what cannot be stored)."""

    error: BaseException
    retryable: bool
    at: datetime
    elapsed: float


# -- settled: what must become durable -----------------------------------------------------


@dataclass(slots=True)
class Succeeded:
    src: Source
    job: JobEvent
    job_type: JobType
    token: str
    result: Any
    elapsed: float


@dataclass(slots=True)
class Retrying:
    """The failure of ``src.attempt``: its retry event on ``tier`` before its row."""

    src: Source
    job_type: JobType
    token: str
    event: JobEvent
    """The next attempt, due at ``event.not_before``."""
    tier: RetryTier
    failure: FailureRecord


@dataclass(slots=True)
class DeadLettered:
    """A dead letter before its row (when ``token`` holds the job's claim) and its outcome."""

    src: Source
    error: BaseException
    reason: DeadLetterReason
    failure: FailureRecord
    token: str | None
    """The claim the row is written under; None: another execution owns the row, the letter
    goes alone."""


@dataclass(slots=True)
class Reemitted:
    """The job is done already: its stored outcome goes out again, nothing else."""

    src: Source
    stored: StoredState


@dataclass(slots=True)
class Scheduled:
    """A delayed job: its scheduled row is made (unless its id has one), nothing runs now."""

    src: Source
    row: ScheduledRow


@dataclass(slots=True)
class Stopped:
    """A job that ends without (more of) a run: ``cancelled`` (asked to; ``ran`` when its
    handler was interrupted) or ``expired`` (not started by its ``expires_at``)."""

    src: Source
    token: str
    outcome: Outcome
    ran: bool = False
    elapsed: float = 0.0


@dataclass(slots=True)
class Finished:
    """Nothing to make durable: a duplicate, or a record abandoned at a drain."""

    src: Source
    outcome: Outcome


Settled = Succeeded | Retrying | DeadLettered | Reemitted | Scheduled | Stopped | Finished
