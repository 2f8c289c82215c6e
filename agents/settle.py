"""The settle stage: a batch of settled jobs made durable, in the one order that keeps a
redelivery right, before any of their records is acked.

1. the records that must exist before a row (retry events, dead letters), sent together;
2. the rows, in one statement (each fenced by its claim's token);
3. the outcomes, sent together, from what the table now holds.

Only errors that may pass by themselves are retried in place (:class:`DurableSteps`: a record
that failed is sent again, not the whole batch). What Kafka or PostgreSQL refuses for its
content takes another route in the next round of the same batch: a retry event too large for
its tier and a row PostgreSQL refuses become dead letters (``unpublishable``, ``unstorable``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from jobstream.agents.durable import DurableSteps
from jobstream.agents.ports import JobStore, RecordPublisher
from jobstream.agents.records import OutRecord, Records
from jobstream.agents.routes import dead_letter
from jobstream.agents.states import (
    DeadLettered,
    Finished,
    Outcome,
    Reemitted,
    Retrying,
    Scheduled,
    Settled,
    Stopped,
    Succeeded,
)
from jobstream.models.deadletter import DeadLetterReason
from jobstream.models.errors import JobstreamError
from jobstream.models.job import JobStatus
from jobstream.models.rows import JobRow, StoredState
from jobstream.streams import observability
from jobstream.streams.failures import RecordTooLargeError, describe
from jobstream.streams.metrics import Metrics
from jobstream.streams.settings import Settings

log = logging.getLogger(__name__)


class RowRefusedError(JobstreamError):
    """Raised when PostgreSQL refuses a job's row for what it holds (not for an outage)."""


class Settler:
    def __init__(
        self,
        *,
        settings: Settings,
        records: Records,
        store: JobStore,
        publisher: RecordPublisher,
        steps: DurableSteps,
        metrics: Metrics,
        clock: Callable[[], datetime],
    ) -> None:
        self.settings = settings
        self.records = records
        self.store = store
        self.publisher = publisher
        self.steps = steps
        self.metrics = metrics
        self.clock = clock

    async def settle(self, batch: Sequence[Settled]) -> list[Outcome]:
        """Make ``batch`` durable; returns how each ended, in order."""
        states: list[Settled] = list(batch)
        ended: list[Outcome | None] = [None] * len(states)
        todo = list(range(len(states)))
        while todo:
            todo = await self._round(states, ended, todo)
        return [o if o is not None else Outcome.UNROUTABLE for o in ended]

    async def _round(
        self, states: list[Settled], ended: list[Outcome | None], todo: list[int]
    ) -> list[int]:
        """One pass of the three steps over ``todo``; returns the jobs rerouted to another."""
        now = self.clock()
        again = await self._before_rows(states, todo, now)
        todo = [i for i in todo if i not in again]
        stored, parked, rerouted = await self._rows(states, todo, now)
        again += rerouted
        todo = [i for i in todo if i not in rerouted]
        await self._outcomes(states, ended, todo, stored, parked, now)
        return again

    async def _before_rows(
        self, states: list[Settled], todo: list[int], now: datetime
    ) -> list[int]:
        """Retry events and dead letters, sent together; returns the jobs rerouted."""
        again: list[int] = []
        before: list[tuple[int, OutRecord]] = []
        for i in todo:
            s = states[i]
            if isinstance(s, Retrying):
                record = self.records.retry_event(s)
                if record is None:
                    limit = self.publisher.limit(s.tier.topic)
                    too_big = RecordTooLargeError(
                        f"the retry event would exceed {s.tier.topic}'s limit of {limit} bytes"
                    )
                    states[i] = self._unpublishable(s, now, too_big)
                    again.append(i)
                else:
                    before.append((i, record))
            elif isinstance(s, DeadLettered):
                before.append((i, self.records.letter(s)))
        for k, refused in await self._send("records", [r for _, r in before]):
            i = before[k][0]
            s = states[i]
            if isinstance(s, Retrying):
                states[i] = self._unpublishable(s, now, refused)
                again.append(i)
            else:
                self.metrics.unroutable.inc()
                log.error(
                    "dead letter of %s refused by Kafka even when shrunk", s.src.rec.coordinates
                )
        for i, _ in before:
            s = states[i]
            if i not in again and isinstance(s, DeadLettered):
                self._report(s)
        return again

    async def _rows(
        self, states: list[Settled], todo: list[int], now: datetime
    ) -> tuple[
        dict[int, tuple[JobRow, StoredState | Exception]], dict[int, StoredState | None], list[int]
    ]:
        """The rows in one statement (and the scheduled rows of delayed jobs in one more); a
        refused success becomes a dead letter (rerouted), a refused retry or dead letter is
        written again without its error text."""
        rerouted: list[int] = []
        written: list[tuple[int, JobRow]] = []
        parked: list[tuple[int, Scheduled]] = []
        for i in todo:
            s = states[i]
            if isinstance(s, Scheduled):
                parked.append((i, s))
            elif isinstance(s, Succeeded | Retrying | DeadLettered | Stopped):
                row = self.records.row(s, now)
                if row is not None:
                    written.append((i, row))
        found: dict[int, StoredState | None] = {}
        if parked:
            rows = [p.row for _, p in parked]
            kept = await self.steps.run("park", lambda: self.store.park_many(rows))
            found = {i: existing for (i, _), existing in zip(parked, kept, strict=True)}
        results = await self._write([row for _, row in written])
        stored = {i: (row, got) for (i, row), got in zip(written, results, strict=True)}
        fallbacks: list[tuple[int, JobRow]] = []
        for i, (_, got) in stored.items():
            s = states[i]
            if not isinstance(got, Exception):
                continue
            if isinstance(s, Succeeded):
                refused = RowRefusedError(f"PostgreSQL refused the row: {describe(got)}")
                states[i] = dead_letter(
                    s.src, refused, DeadLetterReason.UNSTORABLE, now, token=s.token
                )
                rerouted.append(i)
            elif isinstance(s, Retrying | DeadLettered):
                fallback = self.records.fallback_row(s)
                if fallback is not None:
                    fallbacks.append((i, fallback))
        again = await self._write([row for _, row in fallbacks])
        for (i, row), got in zip(fallbacks, again, strict=True):
            stored[i] = (row, got)
        return stored, found, rerouted

    async def _outcomes(
        self,
        states: list[Settled],
        ended: list[Outcome | None],
        todo: list[int],
        stored: dict[int, tuple[JobRow, StoredState | Exception]],
        parked: dict[int, StoredState | None],
        now: datetime,
    ) -> None:
        """How each job ended, and its outcome record from what the table now holds."""
        records: list[OutRecord] = []
        for i in todo:
            s = states[i]
            if isinstance(s, Finished):
                ended[i] = s.outcome
            elif isinstance(s, Reemitted):
                records.append(self.records.outcome(s.src, s.stored, reemitted=True, at=now))
                ended[i] = Outcome.REEMITTED
            elif isinstance(s, DeadLettered) and s.token is None:
                ended[i] = Outcome.DEAD_LETTERED  # the letter alone: the row is another's
            elif isinstance(s, Scheduled):
                existing = parked[i]
                if existing is None:
                    ended[i] = Outcome.SCHEDULED
                elif existing.status.terminal:  # its id ran already: say so again
                    records.append(self.records.outcome(s.src, existing, reemitted=True, at=now))
                    ended[i] = Outcome.REEMITTED
                else:  # a copy of one that waits or runs already
                    ended[i] = Outcome.DUPLICATE
            else:
                row, got = stored[i]
                ended[i] = self._ended(s, row, got, records, now)
        for k, _ in await self._send("outcome", records):
            # even without its result: nothing more to drop; the row holds the whole state
            self.metrics.unroutable.inc()
            log.error(
                "outcome of job %s refused by Kafka even without its result", _key(records[k])
            )

    def _ended(
        self,
        s: Settled,
        row: JobRow,
        got: StoredState | Exception,
        records: list[OutRecord],
        now: datetime,
    ) -> Outcome:
        if isinstance(got, Exception):
            self.metrics.unroutable.inc()
            log.error(
                "row of job %s refused by PostgreSQL even without its error text", s.src.job_id
            )
            return Outcome.UNROUTABLE
        if got.status is JobStatus.RUNNING:
            # our lease lapsed and another execution took the job over: its result counts
            log.warning("job %s: claim lost to another execution; result discarded", s.src.job_id)
            return Outcome.CLAIM_LOST
        if isinstance(s, Retrying):
            self.metrics.retries.labels(tier=s.tier.label).inc()
            return Outcome.RETRIED
        reemitted = got.finished_at != row.finished_at
        duration = s.elapsed * 1000 if isinstance(s, Succeeded | Stopped) and s.elapsed else None
        records.append(
            self.records.outcome(s.src, got, reemitted=reemitted, at=now, duration_ms=duration)
        )
        if isinstance(s, Stopped):
            return Outcome.REEMITTED if reemitted else s.outcome
        if not isinstance(s, Succeeded):
            return Outcome.DEAD_LETTERED
        if s.src.created_at is not None:
            latency = (now - s.src.created_at).total_seconds()
            self.metrics.for_type(s.job_type.name).latency.observe(latency)
        return Outcome.REEMITTED if reemitted else Outcome.SUCCEEDED

    # -- the durable steps ---------------------------------------------------------------------

    async def _send(
        self, what: str, records: Sequence[OutRecord]
    ) -> list[tuple[int, RecordTooLargeError]]:
        """Send ``records`` together and wait until Kafka has them all; returns the indexes of
        those refused as too large. A record that failed otherwise is sent again (only it)."""
        if not records:
            return []
        refused: list[tuple[int, RecordTooLargeError]] = []
        pending = list(range(len(records)))

        async def attempt() -> None:
            nonlocal pending
            queued: list[tuple[int, asyncio.Future[object]]] = []
            for k in pending:
                r = records[k]
                try:
                    future = await self.publisher.send(
                        r.topic, r.value, key=r.key, headers=r.headers
                    )
                except RecordTooLargeError as exc:
                    refused.append((k, exc))
                    continue
                queued.append((k, future))
            results = await asyncio.gather(*(f for _, f in queued), return_exceptions=True)
            failed: list[int] = []
            first: BaseException | None = None
            for (k, _), result in zip(queued, results, strict=True):
                if isinstance(result, RecordTooLargeError):
                    refused.append((k, result))
                elif isinstance(result, BaseException):
                    failed.append(k)
                    first = first or result
            pending = failed
            if first is not None:
                raise first

        await self.steps.run(what, attempt)
        return refused

    async def _write(self, rows: Sequence[JobRow]) -> list[StoredState | Exception]:
        """The rows in one statement; a row PostgreSQL refuses gets its error in its place."""
        if not rows:
            return []
        try:
            return await self.steps.run("write", lambda: self.store.write_many(rows))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - not transient: each row alone, so only a bad one fails
            if len(rows) == 1:
                return [exc]
            log.warning("batch write failed (%s), writing one by one", type(exc).__name__)
        out: list[StoredState | Exception] = []
        for row in rows:
            try:
                out.extend(
                    await self.steps.run("write", functools.partial(self.store.write_many, [row]))
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - this row's own refusal
                out.append(exc)
        return out

    # -- helpers ---------------------------------------------------------------------------------

    def _unpublishable(self, s: Retrying, now: datetime, too_big: Exception) -> DeadLettered:
        return dead_letter(s.src, too_big, DeadLetterReason.UNPUBLISHABLE, now, token=s.token)

    def _report(self, s: DeadLettered) -> None:
        """One error report per dead letter (scrubbed of the job's payload) and its metrics."""
        src = s.src
        rec = src.rec
        with observability.job_scope(
            job_id=src.job_id,
            job_type=src.job_type,
            attempt=src.attempt,
            tier=src.tier,
            worker=self.settings.worker_name,
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            payload=src.payload,
        ):
            observability.report_dead_letter(
                s.error, reason=s.reason.value, job_type=src.type_label
            )
        self.metrics.dead_letters.labels(reason=s.reason.value).inc()


def _key(record: OutRecord) -> str:
    return (record.key or b"").decode(errors="replace")
