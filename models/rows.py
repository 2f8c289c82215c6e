"""The job row's shapes: what a write stores, what a lookup finds, and the execution claim."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from jobstream.models.job import JobStatus


class Columns(Protocol):
    """A database row read by column name: an ``asyncpg.Record``, or a dict in tests."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(slots=True)
class JobRow:
    job_id: str
    type: str | None
    status: JobStatus
    attempt: int
    result: Any = None
    error: str | None = None
    error_class: str | None = None
    source: str | None = None
    replay_of: str | None = None
    worker: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    claim_token: str | None = None
    """The execution writing the row: the write changes the row only while it holds the claim."""


@dataclass(slots=True)
class StoredState:
    """The row as stored after a write or found by a lookup."""

    job_id: str
    status: JobStatus
    attempt: int
    result: Any
    error: str | None
    error_class: str | None
    worker: str | None
    finished_at: datetime | None
    claim_token: str | None = None
    lease_until: datetime | None = None
    source: str | None = None
    """Where the row's state came from: ``worker``, or a dead letter's source coordinates."""
    run_at: datetime | None = None
    """When a scheduled job is due."""

    @classmethod
    def from_record(cls, r: Columns) -> StoredState:
        return cls(
            job_id=r["job_id"],
            status=JobStatus(r["status"]),
            attempt=r["attempt"],
            result=r["result"],
            error=r["error"],
            error_class=r["error_class"],
            worker=r["worker"],
            finished_at=r["finished_at"],
            claim_token=r["claim_token"],
            lease_until=r["lease_until"],
            source=r["source"],
            run_at=r["run_at"],
        )


@dataclass(slots=True)
class ClaimRequest:
    job_id: str
    type: str | None
    attempt: int
    token: str
    """A fresh id of this execution; the row carries it while the claim is held."""
    created_at: datetime | None = None
    replay: bool = False
    """A replay of a dead letter may take a ``dead_lettered`` row."""
    run: bool = False
    """The claim starts a handler run: a won claim counts it in ``executions`` before the
    handler is called, so a run whose process dies before writing the row is still counted.
    A claim that only ends the job (a dead letter of bad input) counts nothing."""
    max_takeovers: int = 0
    """With ``run``: a takeover that brings the row's ``takeovers`` to this is not run (the
    job is dead-lettered as stalled) and so not counted. 0: no such limit."""
    topic: str | None = None
    """The main topic of the workers claiming it: the row's ``topic`` (whose job it is when
    prefixes share a database)."""


@dataclass(slots=True)
class ClaimResult:
    won: bool
    takeovers: int = 0
    """With ``won``: how many times the job's claim was taken over from an expired lease."""
    cancel_requested: bool = False
    """With ``won``: the job was asked to be cancelled; it ends cancelled, unrun."""
    existing: StoredState | None = None
    """The row before the claim (None for a new job); what to act on when not won."""

    @property
    def takeover(self) -> bool:
        return self.won and self.existing is not None and self.existing.status is JobStatus.RUNNING


@dataclass(slots=True)
class ScheduledRow:
    """A delayed job's row: the dispatcher publishes ``event`` at ``run_at``."""

    job_id: str
    type: str
    attempt: int
    created_at: datetime | None
    run_at: datetime
    expires_at: datetime | None
    event: dict[str, Any]
    """The job's event as JSON (the outbox the dispatcher publishes)."""
    topic: str
    """The main topic the dispatcher publishes it to (prefixes may share a database)."""
    source: str = "worker"
