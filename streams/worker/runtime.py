"""Everything a worker replica holds besides faust: pool, result store, publisher, limiter,
HTTP session, the job lifecycle's machine, and the drain logic that SIGTERM runs before faust
stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import asyncpg

from jobstream.agents.app import JobApp
from jobstream.agents.catalog import app_for
from jobstream.agents.machine import Machine
from jobstream.agents.retry import RetryForwarder
from jobstream.agents.states import Outcome
from jobstream.streams.kafka.publisher import Publisher
from jobstream.streams.kafka.record import Record
from jobstream.streams.kafka.security import client_options
from jobstream.streams.metrics import Metrics
from jobstream.streams.pg.pool import create_pool
from jobstream.streams.pg.results import ResultStore
from jobstream.streams.pg.retention import Sweeper, worker_sweeper
from jobstream.streams.producer.client import AppTypes, EventSubmitter
from jobstream.streams.settings import Settings
from jobstream.streams.setup import prepare
from jobstream.streams.topics import RetryTier, TopicNames, topic_names
from jobstream.streams.worker.dispatcher import Dispatcher

if TYPE_CHECKING:
    from aiohttp import web

    from jobstream.streams.pg.ratelimit import PgRateLimiter

log = logging.getLogger(__name__)
T = TypeVar("T")


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        bootstrap: str,
        dsn: str,
        app: JobApp[Any] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.dsn = dsn
        self.topics: TopicNames = topic_names(settings.topic_prefix, settings.retry_tiers_s)
        self.app = app or app_for(settings)
        self.registry = self.app.registry(settings)
        self.metrics = metrics or Metrics()
        self.publisher = Publisher(
            bootstrap,
            client_id=f"jobstream-{settings.worker_name}",
            options=client_options(settings),
        )
        self.pool: asyncpg.Pool | None = None
        self.store: ResultStore | None = None
        self.limiter: PgRateLimiter | None = None
        self.http: aiohttp.ClientSession | None = None
        self.machine: Machine | None = None
        self.forwarder: RetryForwarder | None = None
        self.dispatcher: Dispatcher | None = None
        self.finished_elsewhere: Callable[[str, int, int], bool] | None = None
        """Set by the worker once its consumer exists (see ``done_before``)."""
        self.sweeper: Sweeper | None = None
        self.web_runner: web.AppRunner | None = None
        self._teardown = contextlib.AsyncExitStack()
        self.ready = asyncio.Event()
        self.joined = asyncio.Event()
        self.draining = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._limit = settings.in_flight_limit
        self._paused: dict[Callable[[], None], None] = {}
        """Resume callbacks of the partitions paused at the in-flight limit (in pause order)."""
        self._pending: list[tuple[Record, Callable[[], object]]] = []
        """Records that arrived before the runtime was ready."""
        # (topic, partition) -> {offset: Kafka timestamp in ms} of the records being worked on;
        # the lag monitor reads it for the age of the oldest unfinished event
        self.in_flight_records: dict[tuple[str, int], dict[int, int | None]] = {}

    async def start(self) -> None:
        from jobstream.streams.pg.ratelimit import PgRateLimiter
        from jobstream.streams.worker.health import start_web

        s = self.settings
        # each resource is handed to the teardown as soon as it exists: stop() releases them in
        # reverse (web, sweeper, result store, limiter, publisher, HTTP session, pool), and a
        # start that failed half-way releases what it had
        teardown = self._teardown
        self.pool = await prepare(
            s, bootstrap=self.bootstrap, dsn=self.dsn, topics=self.topics, pool_min=s.db_pool_min
        )
        teardown.push_async_callback(self.pool.close)
        # Webhooks share this session: never carry cookies from one receiver to another.
        # aiohttp's default pool of 100 connections would cap concurrency below the setting.
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(limit=s.concurrency, limit_per_host=s.concurrency),
        )
        teardown.push_async_callback(self.http.close)
        teardown.push_async_callback(self.publisher.stop)  # safe on one that did not start
        await self.publisher.start()
        # every record is checked against its topic's limit before Kafka sees it
        await self.publisher.load_limits(self.topics.all())
        self.limiter = PgRateLimiter(
            self.pool,
            self.registry.rate_limits,
            lease=s.rate_limit_lease,
            metrics=self.metrics,
            listen=s.db_pooler_mode == "none",  # a pooler does not keep LISTEN between queries
        )
        teardown.push_async_callback(self.limiter.close)
        # the result store's batches on connections of their own, never reset on release
        batch_pool = await create_pool(
            self.dsn, min_size=2, max_size=4, pooler_mode=s.db_pooler_mode, reset=False
        )
        teardown.push_async_callback(batch_pool.close)
        self.store = ResultStore(
            batch_pool,
            max_size=s.batch_max_size,
            max_delay_s=s.batch_max_delay_ms / 1000,
            metrics=self.metrics,
            worker=s.worker_name,
            lease_s=s.claim_lease_s,
        )
        self.store.start()
        teardown.push_async_callback(self.store.close)
        # the apps' resources: created once, closed after the last job (teardown runs the
        # machine's close, which ends every handler, before these)
        resources: dict[str, Any] = {}
        for name, lifespan in self.app.lifespans():
            resources[name] = await teardown.enter_async_context(lifespan(s))
        self.machine = Machine(
            settings=s,
            topics=self.topics,
            registry=self.registry,
            store=self.store,
            publisher=self.publisher,
            limiter=self.limiter,
            metrics=self.metrics,
            http=self.http,
            resources=resources,
            submitter=EventSubmitter(
                self.publisher, self.topics.main, AppTypes(self.app), s.max_event_bytes
            ),
        )
        teardown.push_async_callback(self.machine.close)  # before the store and the publisher
        machine = self.machine
        self.metrics.running_jobs.set_function(lambda: machine.running)
        self.metrics.waiting_jobs.set_function(lambda: machine.waiting)
        # scraped by the web server on this same loop, so all_tasks reads it from its own thread
        loop = asyncio.get_running_loop()
        self.metrics.event_loop_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
        self.forwarder = RetryForwarder(self.machine, self.publisher)
        self.dispatcher = Dispatcher(
            self.pool,
            self.publisher,
            topics=self.topics,
            metrics=self.metrics,
            worker=s.worker_name,
            app_schedules=self.app.schedules(),
        )
        self.dispatcher.start()
        teardown.push_async_callback(self.dispatcher.stop)
        self.sweeper = worker_sweeper(
            s,
            self.pool,
            bootstrap=self.bootstrap,
            dlq_topic=self.topics.dlq,
            kafka_options=client_options(s),
            metrics=self.metrics,
        )
        if self.sweeper is not None:
            teardown.push_async_callback(self.sweeper.stop)
        if s.web_port:
            self.web_runner = await start_web(self)
            teardown.push_async_callback(self.web_runner.cleanup)
        self.metrics.worker_info.labels(worker=s.worker_name).set(1)
        self.open_intake()

    def open_intake(self) -> None:
        """Ready: the records that arrived before are handed on, their partitions resumed."""
        self.ready.set()
        pending, self._pending = self._pending, []
        for rec, ack in pending:
            self.submit(rec, ack)
        self._resume_paused()

    async def stop(self) -> None:
        self.ready.clear()
        await self._teardown.aclose()

    # -- called by the agents ----------------------------------------------------------------

    def take(
        self,
        rec: Record,
        ack: Callable[[], object],
        pause: Callable[[], None],
        resume: Callable[[], None],
    ) -> None:
        """A record of the main topic, as faust fetched it: ``ack`` once its results are
        durable; ``pause``/``resume`` stop and restart fetches of its partition.

        At the in-flight limit the partition is paused, and every paused partition resumes once
        half the limit is free. A draining replica takes nothing more: the record stays unacked
        (so uncommitted) and the partition's next owner runs it.
        """
        if self.draining.is_set():
            pause()
            return
        if not self.ready.is_set():
            pause()
            self._paused[resume] = None
            self._pending.append((rec, ack))
            return
        self.submit(rec, ack)
        if self._in_flight >= self._limit:
            pause()
            self._paused[resume] = None

    def submit(self, rec: Record, ack: Callable[[], object]) -> None:
        """The job lifecycle: ``ack`` is called once the record's results are durable. Nothing
        is awaited here, so faust goes straight to its next record."""
        assert self.machine is not None
        self._enter(rec)

        def done(outcome: Outcome) -> None:
            self._leave(rec)
            if outcome.acked:
                ack()

        self.machine.submit(rec, done)

    def revoke(self, partitions: set[tuple[str, int]]) -> None:
        """A rebalance took these partitions: the records of theirs that have not started are
        left unacked for their next owner (faust clears its own buffers the same way)."""
        if self.machine is not None:
            left = self.machine.revoke(partitions)
            if left:
                log.info("rebalance: %d records not started are left to the next owner", left)

    def forget_pauses(self) -> None:
        """A rebalance made every assigned partition active again (faust's own reset)."""
        self._paused.clear()

    def _resume_paused(self) -> None:
        paused, self._paused = self._paused, {}
        for resume in paused:
            resume()

    async def forward(self, rec: Record, tier: RetryTier) -> Outcome | str:
        assert self.forwarder is not None
        return await self._tracked(rec, self.forwarder.handle(rec, tier))

    def done_before(self, topic: str, partition: int, offset: int) -> bool:
        """The record was finished by a previous owner of its partition (the commit's metadata
        says so): ack it, do not run it again."""
        if self.finished_elsewhere is not None and self.finished_elsewhere(
            topic, partition, offset
        ):
            self.metrics.records_skipped.inc()
            return True
        return False

    async def gate(self) -> None:
        """Before taking an event: wait until ready; while draining, never return.

        An agent that returns from its body acks the event, so a draining replica must hold
        the event unacked until faust cancels the agent; the next owner then processes it.
        """
        if not self.ready.is_set():
            await self.ready.wait()
        if self.draining.is_set():
            await asyncio.Future()  # cancelled when faust stops the agent

    async def _tracked(self, rec: Record, work: Awaitable[T]) -> T:
        self._enter(rec)
        try:
            return await work
        finally:
            self._leave(rec)

    def _enter(self, rec: Record) -> None:
        self._in_flight += 1
        self._idle.clear()
        records = self.in_flight_records.setdefault((rec.topic, rec.partition), {})
        records[rec.offset] = rec.timestamp_ms

    def _leave(self, rec: Record) -> None:
        records = self.in_flight_records.get((rec.topic, rec.partition))
        if records is not None:
            records.pop(rec.offset, None)
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()
        if self._paused and self._in_flight <= self._limit // 2 and not self.draining.is_set():
            self._resume_paused()

    @property
    def in_flight(self) -> int:
        """Records taken and not finished: waiting for a handler slot, running, or finishing."""
        return self._in_flight

    @property
    def running(self) -> int:
        """Jobs holding a handler slot now (at most ``settings.concurrency``)."""
        return self.machine.running if self.machine is not None else 0

    def degraded(self) -> dict[str, float]:
        """Durable steps stuck past their deadline, with how long they have been failing."""
        return self.machine.steps.stuck() if self.machine is not None else {}

    async def drain(self, grace_s: float) -> bool:
        """Stop taking work and wait for in-flight jobs; True when all finished in time."""
        self.draining.set()
        if self.dispatcher is not None:
            await self.dispatcher.stop()  # another replica takes the lease at once
        if self.machine is not None:
            left = await self.machine.drain()
            if left:
                log.info("drain: %d records not started are left to the next owner", left)
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
            finished = True
        except TimeoutError:
            finished = False
        log.info(
            "drain: %s after %.1fs (%d still running)",
            "all jobs finished" if finished else "grace period over",
            time.monotonic() - started,
            self._in_flight,
        )
        return finished
