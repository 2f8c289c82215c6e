"""The dispatcher: publishes scheduled jobs when they fall due and fires recurring schedules.

Every replica runs one; the one holding the ``dispatcher`` lease (a row, renewed; see
:mod:`jobstream.streams.pg.leases`) does the work, the others wait to take it over. Nothing
waits in memory: a due job's row is its outbox. The dispatcher takes a batch of due rows
(marking them dispatched as it reads them), publishes them to the main topic (``not_before``
cleared); a worker's claim takes the row when the record arrives. A publish that is repeated (a
new holder publishes again what its predecessor took and nobody claimed, a lost record is
published again after ``REDISPATCH_S``) is absorbed by the claims, and a schedule's tick is a
job id derived from the schedule and the tick, so a tick fired twice is one job.

Every replica also samples how many due jobs wait and how many schedules are behind, so an
alert fires even when no replica holds the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from jobstream.agents.fitting import wire
from jobstream.models.job import JobEvent
from jobstream.models.schedules import MISFIRE_GRACE_S, ScheduleSpec, due, tick_job_id
from jobstream.streams.failures import RecordTooLargeError, describe
from jobstream.streams.kafka.publisher import Publisher
from jobstream.streams.metrics import Metrics
from jobstream.streams.pg import leases, scheduled, schedules
from jobstream.streams.topics import TopicNames

log = logging.getLogger(__name__)

LEASE = "dispatcher"
"""The lease's name, with the main topic it serves after a colon."""
LEASE_TTL_S = 5.0
"""A SIGKILLed holder's due jobs wait this long (and up to a third more) for another replica;
a holder stalled longer than this loses the lease, and the two publishing at once for a moment
costs duplicate records only (the claims absorb them)."""
POLL_S = 0.2
"""How often the holder looks for due jobs and ticks when there was nothing to do."""
BATCH = 1000
PUBLISHING = 4
"""Batches queued to Kafka and not yet acknowledged, at most."""
"""Due jobs published per round; a full round goes again at once."""
SAMPLE_S = 5.0


class Dispatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: Publisher,
        *,
        topics: TopicNames,
        metrics: Metrics,
        worker: str,
        app_schedules: Sequence[ScheduleSpec] = (),
    ) -> None:
        self.pool = pool
        self.publisher = publisher
        self.topics = topics
        self.metrics = metrics
        self.app_schedules = list(app_schedules)
        self.topic = topics.main
        self.lease = f"{LEASE}:{topics.main}"
        # a restarted replica is a new holder: it waits out its predecessor's lease
        self.holder = f"{worker}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.holding = False
        self._synced = False
        self._task: asyncio.Task[None] | None = None
        self._renewed = 0.0
        self._sampled = 0.0
        self._failing = False
        self._publishing: deque[asyncio.Task[None]] = deque()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="dispatcher")

    async def stop(self) -> None:
        """Stop, and give the lease back so another replica takes over at once (the batches
        being published are acknowledged, or given back, first)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        pending, self._publishing = list(self._publishing), deque()
        for failed in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(failed, Exception):
                log.warning("dispatcher: a batch was not published: %s", describe(failed))
        if self.holding:
            self.holding = False
            self.metrics.dispatcher_leader.set(0)
            with contextlib.suppress(Exception):
                await leases.give_back(self.pool, self.lease, self.holder)

    async def _loop(self) -> None:
        while True:
            busy = False
            try:
                await self._hold()
                if self.holding:
                    busy = await self.round()
                await self._sample()
                if self._failing:
                    self._failing = False
                    log.info("dispatcher: working again")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next round tries again; said once
                if not self._failing:
                    self._failing = True
                    log.warning("dispatcher: round failed, retrying: %s", describe(exc))
                await asyncio.sleep(1.0)
                continue
            await asyncio.sleep(0 if busy else POLL_S if self.holding else LEASE_TTL_S / 3)

    async def _hold(self) -> None:
        """Take the lease, or renew it three times per its life."""
        now = time.monotonic()
        if self.holding and now - self._renewed < LEASE_TTL_S / 3:
            return
        held = await leases.take(self.pool, self.lease, self.holder, LEASE_TTL_S)
        if held and not self.holding:
            again = await scheduled.in_doubt(self.pool, self.topic)
            log.info(
                "dispatcher: this replica dispatches scheduled jobs now (%d taken before and"
                " not claimed go again)",
                again,
            )
        self.holding = held
        self._renewed = now
        self.metrics.dispatcher_leader.set(1 if held else 0)

    async def round(self) -> bool:
        """One round of the holder's work; True when it left due jobs for the next one."""
        if not self._synced:
            removed = await schedules.sync_app(
                self.pool, self.topic, self.app_schedules, await self._db_now()
            )
            if removed:
                log.info("schedules no longer in the app, removed: %s", ", ".join(removed))
            self._synced = True
        full = await self._dispatch()
        await self._fire()
        return full

    async def _dispatch(self) -> bool:
        """Take a batch of due jobs and queue it to Kafka; its acknowledgement is awaited
        while the next batches are taken (at most ``PUBLISHING`` batches unacknowledged), so
        the rate is not one batch per broker round trip."""
        while len(self._publishing) >= PUBLISHING or (
            self._publishing and self._publishing[0].done()
        ):
            await self._publishing.popleft()  # raises what failed its publish
        found = await scheduled.due(self.pool, self.topic, BATCH)
        if not found:
            return False
        futures: list[asyncio.Future[Any]] = []
        try:
            for d in found:
                try:
                    futures.append(await self.publisher.send(self.topics.main, d.record, key=d.key))
                except RecordTooLargeError as exc:  # it stays taken: tried again in REDISPATCH_S
                    log.warning("scheduled job %s cannot be published: %s", d.job_id, exc)
        except BaseException:
            await self._give_back(found, futures)
            raise
        self._publishing.append(
            asyncio.create_task(self._acknowledged(found, futures), name="dispatcher-publish")
        )
        return len(found) == BATCH

    async def _acknowledged(
        self, found: Sequence[scheduled.Due], futures: Sequence[asyncio.Future[Any]]
    ) -> None:
        try:
            await asyncio.gather(*futures)
        except BaseException:
            await self._give_back(found, futures)
            raise
        for d in found:
            self.metrics.dispatch_lateness.observe(max(0.0, d.late_s))
        self.metrics.dispatched.inc(len(found))

    async def _give_back(
        self, found: Sequence[scheduled.Due], futures: Sequence[asyncio.Future[Any]]
    ) -> None:
        """Taken but not published: the next round takes them again (a record that did reach
        Kafka is a copy the claims absorb)."""
        for fut in futures:  # retrieved, so asyncio does not report them as never awaited
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        with contextlib.suppress(Exception):
            await asyncio.shield(scheduled.release(self.pool, [d.job_id for d in found]))

    async def _fire(self) -> None:
        for stored, now in await schedules.due(self.pool, self.topic):
            spec = stored.spec
            ticks, next_at = due(spec, stored.next_at, now)
            events = [
                JobEvent(
                    id=tick_job_id(spec.name, tick),
                    type=spec.job_type,
                    payload=spec.payload,
                    created_at=tick,
                    metadata={"schedule": spec.name},
                )
                for tick in ticks
            ]
            await self._publish(events)
            moved = await schedules.fired(
                self.pool,
                self.topic,
                spec.name,
                was=stored.next_at,
                next_at=next_at,
                last_at=ticks[-1] if ticks else None,
                last_job_id=events[-1].id if events else None,
                count=len(events),
            )
            self.metrics.schedule_ticks.inc(len(events))
            skipped = len(list(_between(spec, stored.next_at, now))) - len(ticks)
            if moved and skipped > 0:
                log.info(
                    "schedule %s: %d missed tick(s) not run (missed=%s)",
                    spec.name,
                    skipped,
                    spec.missed,
                )

    async def _publish(self, events: Sequence[JobEvent]) -> list[JobEvent]:
        """Publish ``events`` together; returns once Kafka has them (raises if it refuses)."""
        futures = [
            await self.publisher.send(self.topics.main, wire(e), key=e.key()) for e in events
        ]
        await asyncio.gather(*futures)
        return list(events)

    async def _sample(self) -> None:
        now = time.monotonic()
        if now - self._sampled < SAMPLE_S:
            return
        self._sampled = now
        count, oldest = await scheduled.waiting(self.pool, self.topic)
        self.metrics.scheduled_due.set(count)
        self.metrics.scheduled_oldest_due.set(oldest)
        self.metrics.schedules_behind.set(
            await schedules.behind(self.pool, self.topic, MISFIRE_GRACE_S)
        )

    async def _db_now(self) -> datetime:
        value: datetime = await self.pool.fetchval("SELECT now()")
        return value


def _between(spec: ScheduleSpec, next_at: datetime, now: datetime) -> list[datetime]:
    """The ticks due from ``next_at`` to ``now`` (at most a thousand, for the log line)."""
    out = [next_at] if next_at <= now else []
    for tick in spec.ticks_after(next_at):
        if tick > now or len(out) >= 1000:
            break
        out.append(tick)
    return out
