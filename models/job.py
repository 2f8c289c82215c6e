"""Wire models: what producers publish and what the workers emit.

Everything on the wire is JSON. ``v`` is the schema version: a worker refuses (dead-letters)
versions it does not know instead of guessing.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return uuid.uuid4().hex


_ID_NAMESPACE = uuid.UUID("5b0c1f8e-6a43-4d1c-9a57-3f1e2d7c9b10")


def derived_job_id(coordinates: str) -> str:
    """The id of an event published without one: the same for every delivery of that record."""
    return uuid.uuid5(_ID_NAMESPACE, coordinates).hex


class FailureRecord(BaseModel):
    """One failed attempt, carried along with the job through retries into the dead letter."""

    model_config = ConfigDict(frozen=True)

    attempt: int
    error_class: str
    message: str
    at: datetime
    retryable: bool = True


class JobEvent(BaseModel):
    """A job as published on the main topic (and on retry topics, with ``not_before`` set)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: int = SCHEMA_VERSION
    id: str = Field(default_factory=new_job_id, min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=100)
    payload: dict[str, Any] = Field(default_factory=dict)
    attempt: int = Field(default=1, ge=1)
    created_at: datetime = Field(default_factory=utcnow)
    metadata: dict[str, str] = Field(default_factory=dict)
    partition_key: str | None = None
    not_before: datetime | None = None
    """Not run before this: a delayed job (its first worker keeps it as a scheduled row until
    then) or a retry waiting on its tier."""
    expires_at: datetime | None = None
    """Not started by then: never run, ends ``expired``."""
    history: list[FailureRecord] = Field(default_factory=list)

    def key(self) -> bytes:
        return (self.partition_key or self.id).encode()

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class JobStatus(StrEnum):
    SCHEDULED = "scheduled"
    """Waiting for its time (``run_at``); the dispatcher publishes it then."""
    RUNNING = "running"
    """Claimed: an execution holds a lease on the job (``claim_token``, ``lease_until``)."""
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    """It had not started by its ``expires_at``: never run."""

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.DEAD_LETTERED, JobStatus.CANCELLED, JobStatus.EXPIRED}
)
TERMINAL_STATUSES = tuple(sorted(s.value for s in _TERMINAL))


class JobOutcome(BaseModel):
    """What happened to a job, on the outcome topic; one per terminal write or re-emission."""

    model_config = ConfigDict(frozen=True)

    v: int = SCHEMA_VERSION
    job_id: str
    type: str | None
    status: JobStatus
    attempt: int
    result: Any = None
    error: str | None = None
    error_class: str | None = None
    finished_at: datetime = Field(default_factory=utcnow)
    duration_ms: float | None = None
    worker: str | None = None
    reemitted: bool = False
    """True when the job was already terminal and this outcome repeats the stored one."""
    result_truncated: bool = False
    """True when ``result`` was left out because the record would exceed the topic's limit;
    the whole result is in the job's row."""

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()
