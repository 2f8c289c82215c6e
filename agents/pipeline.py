"""What happens to one record of the main topic, from raw bytes to durable results.

``Pipeline.handle`` never raises for a bad record or a failing handler: every input ends as a
succeeded row + outcome, a retry event, or a dead letter + dead_lettered row + outcome. It
returns only once all of that is durable, because the caller acks (and so lets faust commit)
the offset when it returns. Infrastructure failures (PostgreSQL or Kafka unreachable) are
retried in place with backoff: the record is never acked before its routing is durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import aiohttp
from pydantic import ValidationError

from agents.decode import decode_event, payload_error, storable
from agents.policy import RetryPolicy
from agents.registry import JobContext, JobType, Registry
from models.deadletter import REPLAY_HEADER, DeadLetter, DeadLetterReason, b64
from models.errors import (
    FatalError,
    InvalidJobError,
    JobError,
    JobTimeoutError,
    RateLimitedError,
)
from models.job import FailureRecord, JobEvent, JobOutcome, JobStatus
from streams.kafka import Publisher
from streams.metrics import Metrics
from streams.results import JobRow, ResultStore, StoredState
from streams.settings import Settings
from streams.topics import TopicNames

log = logging.getLogger(__name__)

TIER_HEADER = "jobstream-retry-tier"
TRACEBACK_LIMIT = 4000
T = TypeVar("T")


class Limiter(Protocol):
    async def acquire(self, key: str | None) -> None: ...
    async def pause(self, key: str, seconds: float) -> None: ...
    async def charge_tokens(self, key: str, tokens: float) -> None: ...


@dataclass(frozen=True)
class Record:
    """A consumed Kafka record, independent of faust's types."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp_ms: int | None = None
    """The record's Kafka timestamp (create or log-append time), for time lag."""

    @property
    def coordinates(self) -> str:
        return DeadLetter.coordinates(self.topic, self.partition, self.offset)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name and v is not None:
                return v.decode("utf-8", "replace")
        return None


@dataclass
class _Failure:
    exc: BaseException
    retryable: bool
    at: datetime


def now() -> datetime:
    return datetime.now(UTC)


def classify(exc: BaseException, policy: RetryPolicy) -> bool:
    """True when the error may pass on a later attempt."""
    if type(exc).__name__ in policy.fatal_errors:
        return False
    if isinstance(exc, JobError):
        return exc.retryable
    return policy.retry_unexpected


def trimmed_traceback(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc))
    return text if len(text) <= TRACEBACK_LIMIT else "...\n" + text[-TRACEBACK_LIMIT:]


class Pipeline:
    def __init__(
        self,
        *,
        settings: Settings,
        topics: TopicNames,
        registry: Registry,
        store: ResultStore,
        publisher: Publisher,
        limiter: Limiter,
        metrics: Metrics,
        http: aiohttp.ClientSession,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.registry = registry
        self.store = store
        self.publisher = publisher
        self.limiter = limiter
        self.metrics = metrics
        self.http = http

    # -- entry point -------------------------------------------------------------------------

    async def handle(self, rec: Record) -> str:
        """Process one record; returns the outcome label (for metrics and tests)."""
        self.metrics.in_flight.inc()
        try:
            return await self._handle(rec)
        finally:
            self.metrics.in_flight.dec()

    async def _handle(self, rec: Record) -> str:
        try:
            job = decode_event(rec.value, max_bytes=self.settings.max_event_bytes)
        except InvalidJobError as exc:
            return await self.dead_letter_input(rec, exc)

        job_type = self.registry.get(job.type)
        type_label = job_type.name if job_type else "unknown"
        self.metrics.jobs_received.labels(type=type_label).inc()
        replay_of = rec.header(REPLAY_HEADER)

        existing = await self.durably("lookup", lambda: self.store.lookup(job.id))
        if existing is not None:
            replaying = replay_of is not None and existing.status is JobStatus.DEAD_LETTERED
            if existing.status.terminal and not replaying:
                await self.durably("re-emit", lambda: self._emit_outcome(job, existing, True))
                self.metrics.jobs_completed.labels(type=type_label, outcome="reemitted").inc()
                return "reemitted"
            if existing.status is JobStatus.RETRYING and job.attempt <= existing.attempt:
                # a redelivery of an attempt whose failure (and retry event) is already durable
                self.metrics.jobs_completed.labels(type=type_label, outcome="duplicate").inc()
                return "duplicate"

        if job_type is None:
            unknown = _Failure(
                InvalidJobError(DeadLetterReason.UNKNOWN_TYPE, f"unknown job type {job.type!r}"),
                retryable=False,
                at=now(),
            )
            return await self._dead_letter_job(
                rec, job, None, unknown, DeadLetterReason.UNKNOWN_TYPE, replay_of
            )
        try:
            payload = job_type.payload_model.model_validate(job.payload)
        except ValidationError as exc:
            invalid = _Failure(
                InvalidJobError(DeadLetterReason.INVALID_PAYLOAD, payload_error(exc)),
                retryable=False,
                at=now(),
            )
            return await self._dead_letter_job(
                rec, job, job_type, invalid, DeadLetterReason.INVALID_PAYLOAD, replay_of
            )

        started = time.perf_counter()
        result, failure = await self._execute(job, job_type, payload)
        elapsed = time.perf_counter() - started
        self.metrics.handler_duration.labels(type=type_label).observe(elapsed)

        if failure is None:
            return await self._succeed(job, job_type, result, elapsed, replay_of)
        if failure.retryable and job.attempt < job_type.policy.max_attempts:
            return await self._retry(rec, job, job_type, failure)
        reason = DeadLetterReason.EXHAUSTED if failure.retryable else DeadLetterReason.FATAL_ERROR
        return await self._dead_letter_job(rec, job, job_type, failure, reason, replay_of)

    # -- running the handler -----------------------------------------------------------------

    async def _execute(
        self, job: JobEvent, job_type: JobType, payload: Any
    ) -> tuple[Any, _Failure | None]:
        key = job_type.rate_limit_key
        ctx = JobContext(job=job, settings=self.settings, http=self.http)
        timeout = job_type.timeout_s or self.settings.default_timeout_s
        if key is not None:
            # an unreachable database is not the job's failure: wait for it like every step
            await self.durably("rate-limit", lambda: self.limiter.acquire(key))
        try:
            try:
                async with asyncio.timeout(timeout) as cm:
                    result = await job_type.handler(payload, ctx)
            except TimeoutError as exc:
                if not cm.expired():
                    raise  # the handler's own timeout error, not ours
                self.metrics.handler_timeouts.labels(type=job_type.name).inc()
                raise JobTimeoutError(f"handler ran past its {timeout:g}s timeout") from exc
            why = storable(result)  # refused here, before it could fail a whole batch
            if why is not None:
                raise FatalError(f"the handler's result cannot be stored: {why}")
        except asyncio.CancelledError:
            raise
        except RateLimitedError as exc:
            if key is not None:
                self.metrics.upstream_throttled.labels(key=key).inc()
                pause_s = exc.retry_after or 1.0
                await self.durably("pause", lambda: self.limiter.pause(key, pause_s))
            return None, _Failure(exc, classify(exc, job_type.policy), now())
        except Exception as exc:  # routed by policy below; nothing escapes the pipeline
            return None, _Failure(exc, classify(exc, job_type.policy), now())
        finally:
            tokens = ctx.usage.get("tokens")
            if key is not None and tokens:
                self.metrics.upstream_tokens.labels(key=key).inc(tokens)
                await self.durably("charge", lambda: self.limiter.charge_tokens(key, tokens))
        return result, None

    # -- routing -----------------------------------------------------------------------------

    async def _succeed(
        self, job: JobEvent, job_type: JobType, result: Any, elapsed: float, replay_of: str | None
    ) -> str:
        row = self._row(
            job, JobStatus.SUCCEEDED, result=result, replay_of=replay_of, finished_at=now()
        )
        stored = await self.durably("write", lambda: self.store.write(row))
        reemitted = stored.finished_at != row.finished_at
        await self.durably(
            "outcome",
            lambda: self._emit_outcome(job, stored, reemitted, duration_ms=elapsed * 1000),
        )
        outcome = "reemitted" if reemitted else "succeeded"
        self.metrics.jobs_completed.labels(type=job_type.name, outcome=outcome).inc()
        self.metrics.job_latency.labels(type=job_type.name).observe(
            (now() - job.created_at).total_seconds()
        )
        return outcome

    async def _retry(self, rec: Record, job: JobEvent, job_type: JobType, failure: _Failure) -> str:
        from agents.policy import compute_backoff

        tier = self.topics.tier_for_attempt(job.attempt)
        delay = compute_backoff(
            1, base_s=tier.delay_s, factor=1.0, max_s=tier.delay_s, jitter=job_type.policy.jitter
        )
        record = self._failure_record(job.attempt, failure)
        retry_event = job.model_copy(
            update={
                "attempt": job.attempt + 1,
                "not_before": failure.at + timedelta(seconds=delay),
                "history": [*job.history, record],
            }
        )
        headers = [(k, v) for k, v in rec.headers if k != TIER_HEADER]
        headers.append((TIER_HEADER, tier.topic.encode()))
        row = self._row(
            job, JobStatus.RETRYING, error=record.message, error_class=record.error_class
        )
        # Publish first: a "retrying" row at attempt k tells a redelivery of attempt k that its
        # retry is already durable, so it must never exist without that retry event.
        await self.durably(
            "retry-publish",
            lambda: self.publisher.send_and_wait(
                tier.topic, retry_event.to_bytes(), key=rec.key, headers=headers
            ),
        )
        await self.durably("write", lambda: self.store.write(row))
        self.metrics.retries.labels(tier=tier.topic.rsplit(".", 1)[-1]).inc()
        self.metrics.jobs_completed.labels(type=job_type.name, outcome="retried").inc()
        return "retried"

    async def _dead_letter_job(
        self,
        rec: Record,
        job: JobEvent,
        job_type: JobType | None,
        failure: _Failure,
        reason: DeadLetterReason,
        replay_of: str | None,
    ) -> str:
        record = self._failure_record(job.attempt, failure)
        history = [*job.history, record]
        letter = self._letter(
            rec,
            job_id=job.id,
            job_type=job.type,
            reason=reason,
            exc=failure.exc,
            attempt=job.attempt,
            history=history,
            first_failure_at=history[0].at,
        )
        row = self._row(
            job,
            JobStatus.DEAD_LETTERED,
            error=record.message,
            error_class=record.error_class,
            source=rec.coordinates,
            replay_of=replay_of,
            finished_at=failure.at,
        )
        # The dead letter before the terminal row: a redelivery that finds the row terminal
        # only re-emits the outcome, so the row must never exist without its dead letter.
        await self.durably(
            "dlq-publish",
            lambda: self.publisher.send_and_wait(
                self.topics.dlq, letter.to_bytes(), key=job.id.encode(), headers=rec.headers
            ),
        )
        stored = await self.durably("write", lambda: self.store.write(row))
        reemitted = stored.finished_at != row.finished_at
        await self.durably("outcome", lambda: self._emit_outcome(job, stored, reemitted))
        label = job_type.name if job_type else "unknown"
        self.metrics.dead_letters.labels(reason=reason.value).inc()
        self.metrics.jobs_completed.labels(type=label, outcome="dead_lettered").inc()
        return "dead_lettered"

    async def dead_letter_input(self, rec: Record, exc: InvalidJobError) -> str:
        """Undecodable input: no job id to key it by, so its source coordinates are the key."""
        job_id = f"invalid:{rec.coordinates}"
        existing = await self.durably("lookup", lambda: self.store.lookup(job_id))
        if existing is not None and existing.status.terminal:
            return "reemitted"  # an earlier delivery already dead-lettered this very record
        at = now()
        reason = DeadLetterReason(exc.reason)
        letter = self._letter(
            rec,
            job_id=job_id,
            job_type=None,
            reason=reason,
            exc=exc,
            attempt=1,
            history=[FailureRecord(attempt=1, error_class=type(exc).__name__,
                                   message=str(exc), at=at, retryable=False)],
            first_failure_at=at,
        )  # fmt: skip
        row = JobRow(
            job_id=job_id,
            type=None,
            status=JobStatus.DEAD_LETTERED,
            attempt=1,
            error=f"{reason.value}: {exc}",
            error_class=type(exc).__name__,
            source=rec.coordinates,
            worker=self.settings.worker_name,
            finished_at=at,
        )
        await self.durably(
            "dlq-publish",
            lambda: self.publisher.send_and_wait(
                self.topics.dlq, letter.to_bytes(), key=rec.key, headers=rec.headers
            ),
        )
        await self.durably("write", lambda: self.store.write(row))
        self.metrics.dead_letters.labels(reason=reason.value).inc()
        self.metrics.jobs_completed.labels(type="unknown", outcome="dead_lettered").inc()
        return "dead_lettered"

    # -- helpers -----------------------------------------------------------------------------

    def _letter(
        self,
        rec: Record,
        *,
        job_id: str,
        job_type: str | None,
        reason: DeadLetterReason,
        exc: BaseException,
        attempt: int,
        history: list[FailureRecord],
        first_failure_at: datetime,
    ) -> DeadLetter:
        return DeadLetter(
            id=rec.coordinates,
            job_id=job_id,
            job_type=job_type,
            reason=reason,
            error_class=type(exc).__name__,
            error_message=str(exc)[:2000],
            traceback=trimmed_traceback(exc),
            attempt=attempt,
            history=history,
            source_topic=rec.topic,
            source_partition=rec.partition,
            source_offset=rec.offset,
            first_failure_at=first_failure_at,
            last_failure_at=history[-1].at,
            original_key=b64(rec.key),
            original_value=b64(rec.value),
            original_headers=[(k, b64(v)) for k, v in rec.headers],
        )

    def _row(self, job: JobEvent, status: JobStatus, **fields: Any) -> JobRow:
        fields.setdefault("source", "worker")
        return JobRow(
            job_id=job.id,
            type=job.type,
            status=status,
            attempt=job.attempt,
            worker=self.settings.worker_name,
            created_at=job.created_at,
            **fields,
        )

    @staticmethod
    def _failure_record(attempt: int, failure: _Failure) -> FailureRecord:
        return FailureRecord(
            attempt=attempt,
            error_class=type(failure.exc).__name__,
            message=str(failure.exc)[:2000] or type(failure.exc).__name__,
            at=failure.at,
            retryable=failure.retryable,
        )

    async def _emit_outcome(
        self,
        job: JobEvent,
        stored: StoredState,
        reemitted: bool,
        *,
        duration_ms: float | None = None,
    ) -> None:
        outcome = JobOutcome(
            job_id=job.id,
            type=job.type,
            status=stored.status,
            attempt=stored.attempt,
            result=stored.result,
            error=stored.error,
            error_class=stored.error_class,
            finished_at=stored.finished_at or now(),
            duration_ms=None if reemitted else duration_ms,
            worker=stored.worker,
            reemitted=reemitted,
        )
        await self.publisher.send_and_wait(
            self.topics.outcomes, outcome.to_bytes(), key=job.id.encode()
        )

    async def durably(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        """Retry an infrastructure step until it succeeds: the record stays unacked meanwhile."""
        delay = 0.1
        while True:
            try:
                return await step()
            except asyncio.CancelledError:
                raise
            except Exception:  # PostgreSQL or Kafka trouble; the record must not be acked
                self.metrics.step_retries.labels(step=what).inc()
                log.exception("%s step failed; retrying in %.1fs", what, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
