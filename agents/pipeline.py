"""What happens to one record of the main topic, from raw bytes to durable results.

``Pipeline.handle`` never raises for a bad record, a failing handler or a bug of its own: every
input ends as a succeeded row + outcome, a retry event, or a dead letter + dead_lettered row +
outcome. It returns only once all of that is durable, because the caller acks (and so lets faust
commit) the offset when it returns.

A job runs only while its execution holds the claim on its row (``JobStore.claim``): a copy
that finds the claim held by another live execution waits for that one's result and re-emits
it, and a claim whose lease expired (its worker died) is taken over.

Only infrastructure errors that may pass by themselves are retried in place (``DurableSteps``);
a record Kafka refuses, a row PostgreSQL refuses or an error in the pipeline itself ends the
record on the dead-letter route (``unpublishable``, ``unstorable``, ``internal_error``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from jobstream.agents.decode import decode_event, payload_error, readable_id, storable
from jobstream.agents.durable import DurableSteps
from jobstream.agents.fitting import fit_dead_letter, fit_event, fit_outcome, original_facts
from jobstream.agents.policy import compute_backoff
from jobstream.agents.ports import JobStore, Limiter, RecordPublisher
from jobstream.agents.registry import JobContext, JobType, Registry
from jobstream.models.deadletter import REPLAY_HEADER, DeadLetter, DeadLetterReason, b64
from jobstream.models.errors import (
    FatalError,
    InvalidJobError,
    JobstreamError,
    JobTimeoutError,
    RateLimitedError,
)
from jobstream.models.job import FailureRecord, JobEvent, JobOutcome, JobStatus
from jobstream.models.job import utcnow as now
from jobstream.models.rows import ClaimRequest, ClaimResult, JobRow, StoredState
from jobstream.streams import observability
from jobstream.streams.failures import RecordTooLargeError, describe, is_transient
from jobstream.streams.kafka.record import Record
from jobstream.streams.metrics import Metrics
from jobstream.streams.settings import Settings
from jobstream.streams.topics import TopicNames

log = logging.getLogger(__name__)

TIER_HEADER = "jobstream-retry-tier"
TRACEBACK_LIMIT = 4000
HEADERS_KEPT_BYTES = 64 * 1024
"""Original headers larger than this are not copied onto the dead-letter record (the letter
still lists them, base64, as long as it fits)."""
T = TypeVar("T")


@dataclass
class _Failure:
    exc: BaseException
    retryable: bool
    at: datetime


class RowRefusedError(JobstreamError):
    """Raised when PostgreSQL refuses a job's row for what it holds (not for an outage)."""


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


@dataclass(frozen=True, slots=True)
class Ran:
    """A handler that returned: its result, and how long it took (seconds)."""

    result: Any
    elapsed: float


@dataclass
class Attempt:
    """What is known of the record being handled: enough to dead-letter it from anywhere."""

    rec: Record
    job_id: str
    job_type: str | None = None
    attempt: int = 1
    created_at: datetime | None = None
    replay_of: str | None = None
    token: str = field(default_factory=lambda: new_token())
    claimed: bool = False
    takeovers: int = 0
    history: list[FailureRecord] = field(default_factory=list)


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
        store: JobStore,
        publisher: RecordPublisher,
        limiter: Limiter,
        metrics: Metrics,
        http: aiohttp.ClientSession,
        steps: DurableSteps | None = None,
        resources: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.registry = registry
        self.store = store
        self.publisher = publisher
        self.limiter = limiter
        self.metrics = metrics
        self.http = http
        self.resources: Mapping[str, Any] = resources or {}
        """What each app's lifespan yielded, by app name: its handlers' ``ctx.resources``."""
        self.steps = steps or DurableSteps(
            metrics=metrics,
            attempt_timeout_s=settings.durable_step_timeout_s,
            deadline_s=settings.durable_step_deadline_s,
        )
        # job id -> resolved when the execution in this process that claimed it is done, so a
        # local copy waits on it instead of polling PostgreSQL
        self._running: dict[str, asyncio.Future[None]] = {}

    async def durably(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        """Retry ``step`` in place while its error may pass by itself (see DurableSteps)."""
        return await self.steps.run(what, step)

    # -- entry point -------------------------------------------------------------------------

    async def handle(self, rec: Record) -> str:
        """Process one record; returns the outcome label (for metrics and tests)."""
        self.metrics.in_flight.inc()
        att = Attempt(rec=rec, job_id=f"invalid:{rec.coordinates}")
        try:
            return await self._handle(att)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug of the pipeline's own: the record still ends
            return await self.internal_error(att, exc)
        finally:
            self.metrics.in_flight.dec()
            self.release(att)

    async def dead_letter_input(self, rec: Record, exc: InvalidJobError) -> str:
        """Undecodable input (also from a retry topic): a dead letter under its readable id."""
        att = Attempt(rec=rec, job_id=f"invalid:{rec.coordinates}")
        try:
            return await self._invalid_input(att, exc)
        finally:
            self.release(att)

    async def fail_record(
        self, rec: Record, exc: BaseException, reason: DeadLetterReason, job: JobEvent | None
    ) -> str:
        """End a record another stage could not pass on (the retry forwarder's republish):
        a dead letter, and the terminal row when the job's claim can be taken."""
        att = Attempt(rec=rec, job_id=job.id if job else f"invalid:{rec.coordinates}")
        if job is not None:
            att.job_type, att.attempt = job.type, job.attempt
            att.created_at, att.history = job.created_at, list(job.history)
        try:
            await self._claim_once(att)
            return await self.dead_letter(att, exc, reason, write_row=att.claimed)
        finally:
            self.release(att)

    async def _handle(self, att: Attempt) -> str:
        try:
            job = self.decode(att)
        except InvalidJobError as exc:
            return await self._invalid_input(att, exc)
        job_type = self.registry.get(job.type)
        type_label = job_type.name if job_type else "unknown"
        self.metrics.for_type(type_label).received.inc()
        payload = self.payload(job, job_type)
        with self.scope(att, job):
            waited = await self._claim(att, type_label, self.claim_request(att, job_type, payload))
            if waited is not None:
                return waited
            return await self._run(att, job, job_type, payload)

    @staticmethod
    def payload(job: JobEvent, job_type: JobType | None) -> Any:
        """The job's payload as its type's model, or the ``InvalidJobError`` that dead-letters
        it; known before the claim, so a job that cannot run never counts as a run."""
        if job_type is None:
            return InvalidJobError(DeadLetterReason.UNKNOWN_TYPE, f"unknown job type {job.type!r}")
        try:
            return job_type.payload_model.model_validate(job.payload)
        except ValidationError as exc:
            return InvalidJobError(DeadLetterReason.INVALID_PAYLOAD, payload_error(exc))

    def decode(self, att: Attempt) -> JobEvent:
        """The record's job, its facts copied onto ``att``; raises InvalidJobError."""
        rec = att.rec
        att.replay_of = rec.header(REPLAY_HEADER)
        job = decode_event(
            rec.value,
            max_bytes=self.settings.max_event_bytes,
            # a replayed copy of an id-less event gets the id of the one it replays
            id_source=att.replay_of or rec.coordinates,
        )
        att.job_id, att.job_type, att.attempt = job.id, job.type, job.attempt
        att.created_at, att.history = job.created_at, list(job.history)
        return job

    def scope(self, att: Attempt, job: JobEvent) -> AbstractContextManager[None]:
        """What an error report raised while the job runs is tagged with (never its payload)."""
        rec = att.rec
        return observability.job_scope(
            job_id=job.id,
            job_type=job.type,
            attempt=job.attempt,
            tier=rec.header(TIER_HEADER),
            worker=self.settings.worker_name,
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            payload=job.payload,
        )

    # -- claims ------------------------------------------------------------------------------

    async def _claim(self, att: Attempt, type_label: str, request: ClaimRequest) -> str | None:
        """Hold the job's claim (None), or end this copy: its outcome label when the job is
        already done or this attempt is a redelivery of one whose result is durable."""
        waits = 0
        while True:
            claim = await self.durably("claim", lambda: self.store.claim(request))
            if claim.won:
                self.hold(att, claim, type_label)
                return None
            ended = await self._not_claimed(att, claim, type_label)
            if ended is not None:
                return ended
            if waits == 0:
                self.metrics.claim_waits.labels(type=type_label).inc()
            waits += 1
            await self._wait_for_holder(att.job_id, waits)

    @staticmethod
    def claim_request(att: Attempt, job_type: JobType | None, payload: Any) -> ClaimRequest:
        """The claim of a decoded job: one that will run its handler (a known type and a valid
        payload) counts the run when won, unless the claim stalled (see ``attempt``)."""
        run = job_type is not None and not isinstance(payload, InvalidJobError)
        return ClaimRequest(
            job_id=att.job_id,
            type=att.job_type,
            attempt=att.attempt,
            token=att.token,
            created_at=att.created_at,
            replay=att.replay_of is not None,
            run=run,
            max_takeovers=job_type.policy.max_attempts if job_type is not None else 0,
        )

    def hold(self, att: Attempt, claim: ClaimResult, type_label: str) -> None:
        """The claim was won: this execution runs the job (a local copy waits for it)."""
        att.claimed = True
        self._running[att.job_id] = asyncio.get_running_loop().create_future()
        if claim.takeover:
            self.metrics.claim_takeovers.labels(type=type_label).inc()
            log.warning(
                "job %s: took over an expired claim (takeover %d)", att.job_id, claim.takeovers
            )
        att.takeovers = claim.takeovers

    async def _not_claimed(self, att: Attempt, claim: ClaimResult, type_label: str) -> str | None:
        existing = claim.existing
        if existing is None:
            return None  # inserted by someone after this statement's snapshot: look again
        if existing.status.terminal:
            await self.durably("re-emit", lambda: self.emit_outcome(att, existing, True))
            self.metrics.jobs_completed.labels(type=type_label, outcome="reemitted").inc()
            return "reemitted"
        if existing.attempt > att.attempt or (
            existing.status is JobStatus.RETRYING and existing.attempt == att.attempt
        ):
            # a redelivery of an attempt whose failure (and retry event) is already durable
            self.metrics.jobs_completed.labels(type=type_label, outcome="duplicate").inc()
            return "duplicate"
        return None  # running under a live claim of another execution: wait for it

    async def _wait_for_holder(self, job_id: str, waits: int) -> None:
        local = self._running.get(job_id)
        if local is not None:
            await asyncio.wait([local])  # never cancels the holder's future
            return
        # another replica holds it: look again, backing off to a fraction of the lease
        cap = max(0.2, min(2.0, self.settings.claim_lease_s / 4))
        await asyncio.sleep(compute_backoff(waits, base_s=0.05, max_s=cap, jitter=0.2))

    def release(self, att: Attempt) -> None:
        if not att.claimed:
            return
        att.claimed = False
        self.store.release(att.job_id, att.token)
        done = self._running.pop(att.job_id, None)
        if done is not None and not done.done():
            done.set_result(None)

    # -- running the claimed job ---------------------------------------------------------------

    async def _run(
        self, att: Attempt, job: JobEvent, job_type: JobType | None, payload: Any
    ) -> str:
        ran = await self.attempt(att, job, job_type, payload)
        if isinstance(ran, str):
            return ran
        assert job_type is not None
        return await self.succeed(att, job, job_type, ran.result, ran.elapsed)

    async def attempt(
        self, att: Attempt, job: JobEvent, job_type: JobType | None, payload: Any
    ) -> str | Ran:
        """Run a claimed job's handler on its validated ``payload`` (see ``payload``). A
        failure is routed here (retry event or dead letter: its outcome label is returned); a
        success is returned to be written by the caller, alone (``succeed``) or with its batch
        (:mod:`jobstream.agents.batch`)."""
        if isinstance(payload, InvalidJobError):
            return await self.dead_letter(att, payload, DeadLetterReason(payload.reason))
        assert job_type is not None
        # the claim counted no run for this (``ClaimRequest.max_takeovers``)
        if att.takeovers >= job_type.policy.max_attempts:
            stalled = JobTimeoutError(
                f"its claim expired {att.takeovers} times (max_attempts"
                f" {job_type.policy.max_attempts}): every execution died or stalled"
            )
            return await self.dead_letter(att, stalled, DeadLetterReason.STALLED, retryable=True)

        started = time.perf_counter()
        result, failure = await self._execute(job, job_type, payload)
        elapsed = time.perf_counter() - started
        self.metrics.for_type(job_type.name).handler_duration.observe(elapsed)

        if failure is None:
            return Ran(result, elapsed)
        if failure.retryable and job.attempt < job_type.policy.max_attempts:
            return await self._retry(att, job, job_type, failure)
        reason = DeadLetterReason.EXHAUSTED if failure.retryable else DeadLetterReason.FATAL_ERROR
        return await self.dead_letter(att, failure.exc, reason, failure=failure)

    async def _execute(
        self, job: JobEvent, job_type: JobType, payload: Any
    ) -> tuple[Any, _Failure | None]:
        key = job_type.rate_limit_key
        ctx = JobContext(
            job=job,
            settings=self.settings,
            http=self.http,
            resources=self.resources.get(job_type.app),
        )
        timeout = job_type.timeout_s or self.settings.default_timeout_s
        if key is not None:
            # an unreachable database is not the job's failure: wait for it like every step
            await self.durably("rate-limit", lambda: self.limiter.acquire(key))
        try:
            try:
                async with asyncio.timeout(timeout) as cm:
                    result = await job_type.handler(payload, ctx)
                if isinstance(result, BaseModel):
                    result = result.model_dump(mode="json")
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
            return None, _Failure(exc, job_type.policy.retryable(exc), now())
        except Exception as exc:  # noqa: BLE001 - routed by policy below; nothing escapes the pipeline
            return None, _Failure(exc, job_type.policy.retryable(exc), now())
        finally:
            tokens = ctx.usage.get("tokens")
            if key is not None and tokens:
                self.metrics.upstream_tokens.labels(key=key).inc(tokens)
                await self.durably("charge", lambda: self.limiter.charge_tokens(key, tokens))
        return result, None

    # -- routing -----------------------------------------------------------------------------

    async def succeed(
        self, att: Attempt, job: JobEvent, job_type: JobType, result: Any, elapsed: float
    ) -> str:
        row = self.success_row(att, result, now())
        try:
            stored = await self._write(row)
        except RowRefusedError as exc:
            return await self.dead_letter(att, exc, DeadLetterReason.UNSTORABLE)
        if stored.status is JobStatus.RUNNING:
            return self.claim_lost(att, job_type.name)
        reemitted = stored.finished_at != row.finished_at
        await self.durably(
            "outcome",
            lambda: self.emit_outcome(att, stored, reemitted, duration_ms=elapsed * 1000),
        )
        return self.count_success(job, job_type, reemitted, now())

    def count_success(self, job: JobEvent, job_type: JobType, reemitted: bool, at: datetime) -> str:
        counted = self.metrics.for_type(job_type.name)
        counted.latency.observe((at - job.created_at).total_seconds())
        if reemitted:
            counted.reemitted.inc()
            return "reemitted"
        counted.succeeded.inc()
        return "succeeded"

    async def _retry(
        self, att: Attempt, job: JobEvent, job_type: JobType, failure: _Failure
    ) -> str:
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
        rec = att.rec
        headers = [(k, v) for k, v in rec.headers if k != TIER_HEADER]
        headers.append((TIER_HEADER, tier.topic.encode()))
        value = fit_event(retry_event, self._budget(tier.topic, rec.key, headers))
        if value is None:
            too_big = RecordTooLargeError(
                f"the retry event would exceed {tier.topic}'s limit of"
                f" {self.publisher.limit(tier.topic)} bytes"
            )
            return await self.dead_letter(att, too_big, DeadLetterReason.UNPUBLISHABLE)
        # Publish first: a "retrying" row at attempt k tells a redelivery of attempt k that its
        # retry is already durable, so it must never exist without that retry event.
        try:
            await self.durably(
                "retry-publish",
                lambda: self.publisher.send_and_wait(
                    tier.topic, value, key=rec.key, headers=headers
                ),
            )
        except RecordTooLargeError as exc:
            return await self.dead_letter(att, exc, DeadLetterReason.UNPUBLISHABLE)
        row = self._row(
            att, JobStatus.RETRYING, error=record.message, error_class=record.error_class
        )
        try:
            stored = await self._write(row)
        except RowRefusedError:
            stored = await self._write(self._row(att, JobStatus.RETRYING, error="(refused)"))
        if stored.status is JobStatus.RUNNING:
            return self.claim_lost(att, job_type.name)
        self.metrics.retries.labels(tier=tier.label).inc()
        self.metrics.jobs_completed.labels(type=job_type.name, outcome="retried").inc()
        return "retried"

    async def _invalid_input(self, att: Attempt, exc: InvalidJobError) -> str:
        """Undecodable input. It keeps the id it carries when one can be read; else its
        source coordinates are its id, the same for every delivery of the record."""
        rec = att.rec
        reason = DeadLetterReason(exc.reason)
        if reason is not DeadLetterReason.OVERSIZE:
            att.job_id = readable_id(rec.value, max_bytes=self.settings.max_event_bytes) or (
                att.job_id
            )
        att.replay_of = rec.header(REPLAY_HEADER)
        with observability.job_scope(
            job_id=att.job_id,
            job_type=None,
            attempt=1,
            tier=rec.header(TIER_HEADER),
            worker=self.settings.worker_name,
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            payload=rec.value,  # whatever it holds, it never reaches an error report
        ):
            existing = await self._claim_once(att)
            redelivered = existing is not None and existing.source == rec.coordinates
            if existing is not None and existing.status.terminal and redelivered:
                await self.durably("re-emit", lambda: self.emit_outcome(att, existing, True))
                return "reemitted"
            # else the id is free (claimed now), or another record's: this one gets its letter
            return await self.dead_letter(att, exc, reason, write_row=att.claimed)

    async def _claim_once(self, att: Attempt) -> StoredState | None:
        """One claim try for a record that runs no handler; the row as it was when not won."""
        request = ClaimRequest(
            job_id=att.job_id,
            type=att.job_type,
            attempt=att.attempt,
            token=att.token,
            created_at=att.created_at,
        )
        claim = await self.durably("claim", lambda: self.store.claim(request))
        att.claimed = claim.won
        return None if claim.won else claim.existing

    async def internal_error(self, att: Attempt, exc: Exception) -> str:
        log.error(
            "internal error on %s (job %s): %s", att.rec.coordinates, att.job_id, describe(exc)
        )
        try:
            if not att.claimed:
                await self._claim_once(att)
            return await self.dead_letter(
                att, exc, DeadLetterReason.INTERNAL_ERROR, write_row=att.claimed
            )
        except asyncio.CancelledError:
            raise
        except Exception as again:  # noqa: BLE001 - even the dead-letter route failed: say so, then ack
            self.metrics.unroutable.inc()
            log.error(
                "record %s could not be routed at all: %s", att.rec.coordinates, describe(again)
            )
            return "unroutable"

    async def dead_letter(
        self,
        att: Attempt,
        exc: BaseException,
        reason: DeadLetterReason,
        *,
        failure: _Failure | None = None,
        retryable: bool = False,
        write_row: bool = True,
    ) -> str:
        failure = failure or _Failure(exc, retryable=retryable, at=now())
        record = self._failure_record(att.attempt, failure)
        history = [*att.history, record]
        letter = self._letter(att, reason=reason, exc=failure.exc, history=history)
        rec = att.rec
        key = att.job_id.encode()
        headers = rec.headers if _headers_size(rec.headers) <= HEADERS_KEPT_BYTES else ()
        value = fit_dead_letter(letter, rec.value, self._budget(self.topics.dlq, key, headers))
        # The dead letter before the terminal row: a redelivery that finds the row terminal
        # only re-emits the outcome, so the row must never exist without its dead letter.
        try:
            await self.durably(
                "dlq-publish",
                lambda: self.publisher.send_and_wait(
                    self.topics.dlq, value, key=key, headers=headers
                ),
            )
        except RecordTooLargeError:
            self.metrics.unroutable.inc()
            log.error("dead letter of %s refused by Kafka even when shrunk", rec.coordinates)
        known = self.registry.get(att.job_type) if att.job_type else None
        label = known.name if known else "unknown"
        observability.report_dead_letter(failure.exc, reason=reason.value, job_type=label)
        self.metrics.dead_letters.labels(reason=reason.value).inc()
        self.metrics.jobs_completed.labels(type=label, outcome="dead_lettered").inc()
        if not write_row:
            return "dead_lettered"
        row = self._row(
            att,
            JobStatus.DEAD_LETTERED,
            error=f"{reason.value}: {record.message}" if reason.undecodable else record.message,
            error_class=record.error_class,
            source=rec.coordinates,
            finished_at=failure.at,
        )
        try:
            stored = await self._write(row)
        except RowRefusedError:
            stored = await self._write(
                self._row(
                    att,
                    JobStatus.DEAD_LETTERED,
                    error=f"{reason.value}: the row's error text was refused by PostgreSQL",
                    error_class=record.error_class,
                    source=rec.coordinates,
                    finished_at=failure.at,
                )
            )
        if stored.status is JobStatus.RUNNING:
            return self.claim_lost(att, label)
        reemitted = stored.finished_at != row.finished_at
        await self.durably("outcome", lambda: self.emit_outcome(att, stored, reemitted))
        return "dead_lettered"

    def claim_lost(self, att: Attempt, type_label: str) -> str:
        """Our lease expired and another execution took the job over: its result counts."""
        self.metrics.jobs_completed.labels(type=type_label, outcome="claim_lost").inc()
        log.warning("job %s: claim lost to another execution; result discarded", att.job_id)
        return "claim_lost"

    # -- helpers -----------------------------------------------------------------------------

    async def _write(self, row: JobRow) -> StoredState:
        """A durable row write; a row PostgreSQL refuses for its content raises RowRefusedError."""
        try:
            return await self.durably("write", lambda: self.store.write(row))
        except RowRefusedError:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise
            raise RowRefusedError(f"PostgreSQL refused the row: {describe(exc)}") from exc

    def _budget(self, topic: str, key: bytes | None, headers: Sequence[tuple[str, bytes]]) -> int:
        """Room for a record's value on ``topic`` once its key and headers are counted."""
        return self.publisher.limit(topic) - self.publisher.record_size(b"", key, headers)

    def _letter(
        self,
        att: Attempt,
        *,
        reason: DeadLetterReason,
        exc: BaseException,
        history: list[FailureRecord],
    ) -> DeadLetter:
        rec = att.rec
        return DeadLetter(
            id=rec.coordinates,
            job_id=att.job_id,
            job_type=att.job_type,
            reason=reason,
            error_class=type(exc).__name__,
            error_message=str(exc)[:2000],
            traceback=trimmed_traceback(exc),
            attempt=att.attempt,
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

    def success_row(self, att: Attempt, result: Any, finished_at: datetime) -> JobRow:
        return self._row(att, JobStatus.SUCCEEDED, result=result, finished_at=finished_at)

    def _row(self, att: Attempt, status: JobStatus, **fields: Any) -> JobRow:
        fields.setdefault("source", "worker")
        fields.setdefault("replay_of", att.replay_of)
        return JobRow(
            job_id=att.job_id,
            type=att.job_type,
            status=status,
            attempt=att.attempt,
            worker=self.settings.worker_name,
            created_at=att.created_at,
            claim_token=att.token,
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

    async def emit_outcome(
        self,
        att: Attempt,
        stored: StoredState,
        reemitted: bool,
        *,
        duration_ms: float | None = None,
    ) -> None:
        key, value = self.outcome_record(att, stored, reemitted, duration_ms=duration_ms)
        try:
            await self.publisher.send_and_wait(self.topics.outcomes, value, key=key)
        except RecordTooLargeError:
            self.outcome_refused(att)

    def outcome_record(
        self,
        att: Attempt,
        stored: StoredState,
        reemitted: bool,
        *,
        duration_ms: float | None = None,
    ) -> tuple[bytes, bytes]:
        """The key and value of the job's outcome record, fitted to the topic's limit."""
        outcome = JobOutcome(
            job_id=att.job_id,
            type=att.job_type,
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
        key = att.job_id.encode()
        return key, fit_outcome(outcome, self._budget(self.topics.outcomes, key, ()))

    def outcome_refused(self, att: Attempt) -> None:
        # even without its result: nothing more to drop; the row holds the whole state
        self.metrics.unroutable.inc()
        log.error("outcome of job %s refused by Kafka even without its result", att.job_id)


def _headers_size(headers: Sequence[tuple[str, bytes]]) -> int:
    return sum(len(k) + len(v or b"") for k, v in headers)
