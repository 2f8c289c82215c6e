"""The rows and records a settled job makes durable, each fitted to where it goes.

A retry event or a dead letter must exist before the row that says so (a redelivery that finds
the row trusts it); an outcome repeats what the row holds, so it goes after the row.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from jobstream.agents.fitting import fit_dead_letter, fit_event, original_facts, outcome_bytes
from jobstream.agents.intake import TIER_HEADER
from jobstream.agents.states import DeadLettered, Outcome, Retrying, Source, Stopped, Succeeded
from jobstream.models.deadletter import DeadLetter, b64
from jobstream.models.job import JobStatus
from jobstream.models.rows import JobRow, StoredState
from jobstream.streams.topics import TopicNames

TRACEBACK_LIMIT = 4000
HEADERS_KEPT_BYTES = 64 * 1024
"""Original headers larger than this are not copied onto the dead-letter record (the letter
still lists them, base64, as long as it fits)."""
REFUSED_TEXT = "the row's error text was refused by PostgreSQL"


class Limits(Protocol):
    """Each topic's size limit, as the publisher knows it."""

    def limit(self, topic: str) -> int: ...

    def record_size(
        self, value: bytes | None, key: bytes | None, headers: Sequence[tuple[str, bytes]] | None
    ) -> int: ...


@dataclass(slots=True)
class OutRecord:
    topic: str
    value: bytes | None
    key: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


class Records:
    def __init__(self, topics: TopicNames, limits: Limits, *, worker: str) -> None:
        self.topics = topics
        self.limits = limits
        self.worker = worker
        self._outcome_budget: dict[int, int] = {}
        """The outcome topic's room for a value, by key length (the same for every job)."""

    def _budget(self, topic: str, key: bytes | None, headers: Sequence[tuple[str, bytes]]) -> int:
        """Room for a record's value on ``topic`` once its key and headers are counted."""
        return self.limits.limit(topic) - self.limits.record_size(b"", key, headers)

    # -- records before the row -----------------------------------------------------------------

    def retry_event(self, s: Retrying) -> OutRecord | None:
        """The next attempt on its tier; None when it cannot fit there (the payload alone
        fills the tier topic's limit)."""
        rec = s.src.rec
        topic = s.tier.topic
        headers = [(k, v) for k, v in rec.headers if k != TIER_HEADER]
        headers.append((TIER_HEADER, topic.encode()))
        value = fit_event(s.event, self._budget(topic, rec.key, headers))
        return None if value is None else OutRecord(topic, value, rec.key, headers)

    def letter(self, s: DeadLettered) -> OutRecord:
        src = s.src
        rec = src.rec
        key = src.job_id.encode()
        headers = rec.headers if _headers_size(rec.headers) <= HEADERS_KEPT_BYTES else ()
        history = [*src.history, s.failure]
        letter = DeadLetter(
            id=rec.coordinates,
            job_id=src.job_id,
            job_type=src.job_type,
            reason=s.reason,
            error_class=type(s.error).__name__,
            error_message=str(s.error)[:2000],
            traceback=_traceback(s.error),
            attempt=src.attempt,
            history=history,
            source_topic=rec.topic,
            source_partition=rec.partition,
            source_offset=rec.offset,
            first_failure_at=history[0].at,
            last_failure_at=history[-1].at,
            original_key=b64(rec.key),
            original_value=b64(rec.value),
            original_headers=[(k, b64(v)) for k, v in rec.headers],
            **original_facts(rec.value),
        )
        topic = self.topics.dlq
        return OutRecord(
            topic,
            fit_dead_letter(letter, rec.value, self._budget(topic, key, headers)),
            key,
            headers,
        )

    # -- rows --------------------------------------------------------------------------------------

    def row(
        self, s: Succeeded | Retrying | DeadLettered | Stopped, finished_at: datetime
    ) -> JobRow | None:
        """The row ``s`` writes under its claim (None: a dead letter of a job another record
        owns)."""
        if isinstance(s, Stopped):
            why = "cancelled on request" if s.outcome is Outcome.CANCELLED else "expired"
            if s.outcome is Outcome.CANCELLED and s.ran:
                why = "cancelled on request while it ran"
            status = JobStatus.CANCELLED if s.outcome is Outcome.CANCELLED else JobStatus.EXPIRED
            return self._row(s.src, s.token, status, error=why, finished_at=finished_at)
        if isinstance(s, Succeeded):
            return self._row(
                s.src, s.token, JobStatus.SUCCEEDED, result=s.result, finished_at=finished_at
            )
        if isinstance(s, Retrying):
            return self._row(
                s.src, s.token, JobStatus.RETRYING, error=s.failure.message,
                error_class=s.failure.error_class,
            )  # fmt: skip
        if s.token is None:
            return None
        return self._dead_row(s, _dead_error(s))

    def fallback_row(self, s: Retrying | DeadLettered) -> JobRow | None:
        """A row PostgreSQL refused for its error text, without that text."""
        if isinstance(s, Retrying):
            return self._row(s.src, s.token, JobStatus.RETRYING, error="(refused)")
        if s.token is None:
            return None
        return self._dead_row(s, f"{s.reason.value}: {REFUSED_TEXT}")

    def _dead_row(self, s: DeadLettered, error: str) -> JobRow:
        assert s.token is not None
        return self._row(
            s.src, s.token, JobStatus.DEAD_LETTERED, error=error,
            error_class=s.failure.error_class, source=s.src.rec.coordinates,
            finished_at=s.failure.at,
        )  # fmt: skip

    def _row(self, src: Source, token: str, status: JobStatus, **fields: Any) -> JobRow:
        fields.setdefault("source", "worker")
        return JobRow(
            job_id=src.job_id,
            type=src.job_type,
            status=status,
            attempt=src.attempt,
            worker=self.worker,
            created_at=src.created_at,
            claim_token=token,
            replay_of=src.replay_of,
            **fields,
        )

    # -- after the row ----------------------------------------------------------------------------

    def outcome(
        self,
        src: Source,
        stored: StoredState,
        *,
        reemitted: bool,
        at: datetime,
        duration_ms: float | None = None,
    ) -> OutRecord:
        """The job's outcome record (a :class:`JobOutcome`) as the table holds it, fitted to
        the topic's limit."""
        fields = {
            "job_id": src.job_id,
            "type": src.job_type,
            "status": stored.status.value,
            "attempt": stored.attempt,
            "result": stored.result,
            "error": stored.error,
            "error_class": stored.error_class,
            "finished_at": (stored.finished_at or at).isoformat(),
            "duration_ms": None if reemitted else duration_ms,
            "worker": stored.worker,
            "reemitted": reemitted,
        }
        key = src.job_id.encode()
        topic = self.topics.outcomes
        budget = self._outcome_budget.get(len(key))
        if budget is None:
            budget = self._outcome_budget[len(key)] = self._budget(topic, key, ())
        return OutRecord(topic, outcome_bytes(fields, budget), key)


def _dead_error(s: DeadLettered) -> str:
    message = s.failure.message
    return f"{s.reason.value}: {message}" if s.reason.undecodable else message


def _traceback(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc))
    return text if len(text) <= TRACEBACK_LIMIT else "...\n" + text[-TRACEBACK_LIMIT:]


def _headers_size(headers: Sequence[tuple[str, bytes]]) -> int:
    return sum(len(k) + len(v or b"") for k, v in headers)
