"""Claims: a job runs only while its execution holds the claim on its row.

A run's claim is taken once the job has a handler slot, so the claim is the start of the run: it
counts the run in ``executions`` in the same statement (``ClaimRequest.run``). What a claim that
is not won means is decided here: the job is done (re-emit its outcome), this is a redelivery of
an attempt whose retry is durable (a duplicate), or another live execution holds it (wait for
it, then claim again).
"""

from __future__ import annotations

import itertools
import os
import uuid
from datetime import datetime
from enum import Enum

from jobstream.agents.routes import dead_letter, failure_record
from jobstream.agents.states import (
    Claimed,
    DeadLettered,
    Decoded,
    Finished,
    Outcome,
    Reemitted,
    Stopped,
    Unrunnable,
)
from jobstream.models.deadletter import DeadLetterReason
from jobstream.models.errors import InvalidJobError, JobTimeoutError
from jobstream.models.job import JobStatus
from jobstream.models.rows import ClaimRequest, ClaimResult

_token_prefix = uuid.uuid4().hex[:16]
_token_serial = itertools.count()


def _new_token_prefix() -> None:
    global _token_prefix, _token_serial
    _token_prefix, _token_serial = uuid.uuid4().hex[:16], itertools.count()


os.register_at_fork(after_in_child=_new_token_prefix)  # a forked child must not reuse them


def new_token() -> str:
    """A claim token unique to one execution: a random prefix per process and a counter.

    Not ``uuid4()`` per job: that reads ``os.urandom`` (a system call) for every job, and the
    token only has to differ from every other execution's, not be unguessable."""
    return f"{_token_prefix}{next(_token_serial):x}"


class Blocked(Enum):
    """A claim not won that decides nothing yet."""

    AGAIN = "again"
    """The row was inserted after the statement's snapshot: claim again at once."""
    HELD = "held"
    """Another live execution holds the claim: wait for it, then claim again."""


def expired(state: Decoded, now: datetime) -> bool:
    """Not started by its ``expires_at``: it ends expired instead of running."""
    expires = state.job.expires_at
    return expires is not None and expires <= now


def request(
    state: Decoded | Unrunnable, token: str, now: datetime, topic: str | None = None
) -> ClaimRequest:
    """The claim of ``state`` by the workers of the main topic ``topic``: a runnable job's
    claim starts its run (and counts it)."""
    src = state.src
    if isinstance(state, Unrunnable):
        return ClaimRequest(
            job_id=src.job_id,
            type=src.job_type,
            attempt=src.attempt,
            token=token,
            created_at=src.created_at,
            topic=topic,
        )
    run = state.runnable and not expired(state, now)
    return ClaimRequest(
        job_id=src.job_id,
        type=src.job_type,
        attempt=src.attempt,
        token=token,
        created_at=src.created_at,
        replay=src.replay_of is not None,
        run=run,
        max_takeovers=state.job_type.policy.max_attempts if state.job_type and run else 0,
        topic=topic,
    )


def after_claim(
    state: Decoded, token: str, claim: ClaimResult, now: datetime
) -> Claimed | DeadLettered | Reemitted | Stopped | Finished | Blocked:
    """A decoded job's claim: it runs, ends without a run, or waits."""
    src = state.src
    if claim.won:
        if claim.cancel_requested:
            return Stopped(src, token, Outcome.CANCELLED)
        if expired(state, now):
            return Stopped(src, token, Outcome.EXPIRED)
        if isinstance(state.payload, InvalidJobError) or state.job_type is None:
            error = state.payload if isinstance(state.payload, InvalidJobError) else None
            assert error is not None
            return dead_letter(src, error, DeadLetterReason(error.reason), now, token=token)
        max_attempts = state.job_type.policy.max_attempts
        if claim.takeovers >= max_attempts:  # the claim counted no run for this
            stalled = JobTimeoutError(
                f"its claim expired {claim.takeovers} times (max_attempts {max_attempts}):"
                " every execution died or stalled"
            )
            failure = failure_record(src.attempt, stalled, True, now)
            return DeadLettered(src, stalled, DeadLetterReason.STALLED, failure, token)
        return Claimed(src, state.job, state.job_type, state.payload, token, claim.takeovers)
    existing = claim.existing
    if existing is None:
        return Blocked.AGAIN
    if existing.status.terminal:
        return Reemitted(src, existing)
    if existing.status is JobStatus.SCHEDULED:
        # not due (a copy that came early, or a job re-timed later): the dispatcher sends it
        return Finished(src, Outcome.DUPLICATE)
    if existing.attempt > src.attempt or (
        existing.status is JobStatus.RETRYING and existing.attempt == src.attempt
    ):
        # a redelivery of an attempt whose failure (and retry event) is already durable
        return Finished(src, Outcome.DUPLICATE)
    return Blocked.HELD


def after_end_claim(
    state: Unrunnable, token: str, claim: ClaimResult, now: datetime
) -> DeadLettered | Reemitted:
    """Input that ends without a run: its dead letter, with its row when the claim was won; a
    redelivery of the same record whose row is terminal re-emits that instead."""
    existing = claim.existing
    if (
        not claim.won
        and state.redelivered_reemits
        and existing is not None
        and existing.status.terminal
        and existing.source == state.src.rec.coordinates
    ):
        return Reemitted(state.src, existing)
    owner = token if claim.won else None  # else the row is another record's
    return dead_letter(state.src, state.error, state.reason, now, token=owner)
