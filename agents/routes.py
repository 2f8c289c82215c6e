"""Where a handler's run leads: success, a retry on the next tier, or a dead letter.

Pure decisions; the settle stage makes them durable.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from jobstream.agents.policy import compute_backoff
from jobstream.agents.states import (
    Claimed,
    DeadLettered,
    Failed,
    Ran,
    Retrying,
    Source,
    Succeeded,
)
from jobstream.models.deadletter import DeadLetterReason
from jobstream.models.job import FailureRecord
from jobstream.streams.topics import TopicNames

MESSAGE_LIMIT = 2000


def failure_record(
    attempt: int, error: BaseException, retryable: bool, at: datetime
) -> FailureRecord:
    return FailureRecord(
        attempt=attempt,
        error_class=type(error).__name__,
        message=str(error)[:MESSAGE_LIMIT] or type(error).__name__,
        at=at,
        retryable=retryable,
    )


def dead_letter(
    src: Source,
    error: BaseException,
    reason: DeadLetterReason,
    at: datetime,
    *,
    token: str | None,
    retryable: bool = False,
) -> DeadLettered:
    return DeadLettered(
        src, error, reason, failure_record(src.attempt, error, retryable, at), token
    )


def after_run(
    claimed: Claimed, run: Ran | Failed, topics: TopicNames
) -> Succeeded | Retrying | DeadLettered:
    """A claimed job's run: its result, its next attempt, or its dead letter."""
    src, job_type = claimed.src, claimed.job_type
    if isinstance(run, Ran):
        return Succeeded(src, claimed.job, job_type, claimed.token, run.result, run.elapsed)
    failure = failure_record(src.attempt, run.error, run.retryable, run.at)
    if run.retryable and src.attempt < job_type.policy.max_attempts:
        tier = topics.tier_for_attempt(src.attempt)
        delay = compute_backoff(
            1, base_s=tier.delay_s, factor=1.0, max_s=tier.delay_s, jitter=job_type.policy.jitter
        )
        event = claimed.job.model_copy(
            update={
                "attempt": src.attempt + 1,
                "not_before": run.at + timedelta(seconds=delay),
                "history": [*src.history, failure],
            }
        )
        return Retrying(src, job_type, claimed.token, event, tier, failure)
    reason = DeadLetterReason.EXHAUSTED if run.retryable else DeadLetterReason.FATAL_ERROR
    return DeadLettered(src, run.error, reason, failure, claimed.token)
