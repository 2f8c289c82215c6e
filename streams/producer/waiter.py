"""Waiting for job results: a shared registry of awaited job ids, fed by the outcome topic and
made safe by reading the rows.

A wait cannot miss a result, whenever it arrives:

1. the job id is registered, and its outcome partition is being read from a position taken
   now (outcomes are keyed by job id, so the default partitioner names the one partition
   that can hold it; only partitions with waiters are fetched);
2. the row is read: a job that finished before step 1 has its terminal row already (a worker,
   and a canceller, write the row before they publish the outcome);
3. an outcome that arrives later is read from that partition and resolves the wait.

As a safety net (an outcome refused by Kafka, a partition count changed under the client) the
rows of every awaited job are read again every ``reread_s``, in one query; the rows of jobs
whose progress someone follows are read every ``progress_s``. Nothing depends on a worker: a
worker that restarts while a job is awaited only delays its outcome.

Without Kafka (the HTTP API's long poll) the same registry is fed by the row reads alone, at a
short interval: the row is the truth, so nothing can be missed either, only seen later.

A wait costs a future, a dict entry and its caller's coroutine; one consumer, one reading task
and one query per interval serve all of them (figures in the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from pydantic import ValidationError

from jobstream.models.control import JobResult, JobUpdate, Progress
from jobstream.models.errors import ResultTimeoutError
from jobstream.models.job import TERMINAL_STATUSES, JobOutcome, JobStatus
from jobstream.streams.failures import describe
from jobstream.streams.kafka.reader import partitions_of

log = logging.getLogger(__name__)

ProgressCallback = Callable[[Progress], object]

REREAD_S = 5.0
"""The safety net's interval when outcomes come from Kafka."""
PROGRESS_S = 0.5
"""How often the progress of followed jobs is read (workers write it every half second)."""
IDLE_PARTITION_S = 30.0
"""A partition without waiters is fetched this long more, then paused: a burst of waits on it
needs no new position lookup."""
FETCH_WAIT_MS = 250
"""The consumer's long poll: also how long a partition's activation may wait for a fetch in
flight before its position is taken."""

_ROWS = """
SELECT job_id, status, attempt, error, error_class, finished_at, progress, progress_detail,
       progress_at, CASE WHEN status = ANY($2::text[]) THEN result END AS result
FROM jobs
WHERE job_id = ANY($1::text[]) AND (status = ANY($2::text[]) OR job_id = ANY($3::text[]))
"""
"""The rows that tell something: finished ones (with their result), and those whose progress
someone follows."""


@dataclass(eq=False, slots=True)
class _Entry:
    """One awaited job: a future per wait (a wait that is cancelled leaves the others alone)."""

    waits: list[asyncio.Future[JobResult]] = field(default_factory=list)
    listeners: list[ProgressCallback] = field(default_factory=list)
    seen: tuple[Any, ...] | None = None
    """The last progress passed to the listeners."""
    done: JobResult | None = None

    def resolve(self, result: JobResult) -> None:
        self.done = result
        for waiting in self.waits:
            if not waiting.done():
                waiting.set_result(result)


class OutcomeFeed:
    """The outcome topic, read without a group from a position taken when a partition gets
    its first waiter; ``deliver`` gets each record's job id and value."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        deliver: Callable[[str, bytes], None],
        wanted: Callable[[str], bool],
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.options = dict(options or {})
        self._deliver = deliver
        self._wanted = wanted
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[int] = []
        self._partitioner = DefaultPartitioner()
        self._active: set[int] = set()
        self._activating: dict[int, asyncio.Future[None]] = {}
        self._interest: dict[int, int] = {}
        self._idle_since: dict[int, float] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        parts = (await partitions_of(self.bootstrap, [self.topic], self.options)).get(self.topic)
        if not parts:
            raise LookupError(f"the outcome topic {self.topic} does not exist yet")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=FETCH_WAIT_MS,
            client_id="jobstream-results",
            **self.options,
        )
        await consumer.start()
        self._partitions = parts
        tps = [TopicPartition(self.topic, p) for p in parts]
        consumer.assign(tps)
        consumer.pause(*tps)
        self._consumer = consumer
        self._reader = asyncio.create_task(self._read(), name="outcome-feed")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def partition(self, job_id: str) -> int:
        """The partition the outcome of ``job_id`` goes to (the producers' default partitioner)."""
        key = job_id.encode()
        return int(self._partitioner(key, self._partitions, self._partitions))

    async def watch(self, job_id: str) -> int:
        """Reads the partition of ``job_id`` from now on (at the latest from a position taken
        during this call); returns it, for :meth:`unwatch`."""
        p = self.partition(job_id)
        self._interest[p] = self._interest.get(p, 0) + 1
        self._idle_since.pop(p, None)
        if p in self._active:
            return p
        pending = self._activating.get(p)
        if pending is None:
            pending = asyncio.ensure_future(self._activate(p))
            self._activating[p] = pending
        try:
            await asyncio.shield(pending)
        except BaseException:
            self.unwatch(p)
            raise
        return p

    def unwatch(self, p: int) -> None:
        left = self._interest.get(p, 0) - 1
        if left > 0:
            self._interest[p] = left
            return
        self._interest.pop(p, None)
        self._idle_since[p] = time.monotonic()

    async def _activate(self, p: int) -> None:
        consumer = self._consumer
        assert consumer is not None
        tp = TopicPartition(self.topic, p)
        try:
            await consumer.seek_to_end(tp)
            await consumer.position(tp)  # the end offset, taken now: what comes later is read
            consumer.resume(tp)
            self._active.add(p)
        finally:
            self._activating.pop(p, None)

    def _pause_idle(self) -> None:
        now = time.monotonic()
        for p, since in list(self._idle_since.items()):
            if p in self._interest or now - since < IDLE_PARTITION_S:
                continue
            del self._idle_since[p]
            if p in self._active:
                assert self._consumer is not None
                self._consumer.pause(TopicPartition(self.topic, p))
                self._active.discard(p)

    async def _read(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        failing = False
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the rows are read again meanwhile; said once
                if not failing:
                    log.warning("reading outcomes failed, retrying: %s", describe(exc))
                    failing = True
                await asyncio.sleep(1.0)
                continue
            failing = False
            for records in batch.values():
                for rec in records:
                    if rec.key is None or rec.value is None:
                        continue
                    job_id = rec.key.decode(errors="replace")
                    if self._wanted(job_id):
                        self._deliver(job_id, rec.value)
            self._pause_idle()


class ResultWaiter:
    """Awaits job results for one process (a :class:`JobClient`, an API server).

    :param pool: the jobs table's database.
    :param feed: where outcomes come from as they happen; None: rows only (set ``reread_s``
        short).
    :param reread_s: how often the rows of every awaited job are read again.
    :param progress_s: how often the rows of jobs with a progress listener are read.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        bootstrap: str | None = None,
        outcomes_topic: str | None = None,
        options: Mapping[str, Any] | None = None,
        reread_s: float = REREAD_S,
        progress_s: float = PROGRESS_S,
    ) -> None:
        self.pool = pool
        self.reread_s = reread_s
        self.progress_s = progress_s
        self._entries: dict[str, _Entry] = {}
        self._feed: OutcomeFeed | None = None
        if bootstrap is not None and outcomes_topic is not None:
            self._feed = OutcomeFeed(
                bootstrap,
                outcomes_topic,
                deliver=self._outcome,
                wanted=self._entries.__contains__,
                options=options,
            )
        self._feed_started = False
        self._feed_lock = asyncio.Lock()
        self._reads: set[str] = set()
        self._read_task: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._closed = False

    @property
    def waiting(self) -> int:
        """Jobs awaited now."""
        return len(self._entries)

    async def close(self) -> None:
        self._closed = True
        for task in (self._poller, self._read_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._feed is not None:
            await self._feed.stop()
        for entry in self._entries.values():
            for waiting in entry.waits:
                waiting.cancel()

    # -- waiting -------------------------------------------------------------------------------

    async def result(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - AsyncResult.get's spelling; raises ResultTimeoutError
        on_progress: ProgressCallback | None = None,
    ) -> JobResult:
        """The job's result once it finished; raises :class:`ResultTimeoutError` past
        ``timeout`` seconds (None: no limit)."""
        async with deadline(job_id, timeout):
            waiting, partition = await self._enter(job_id, on_progress)
            try:
                self._read_soon(job_id)
                return await waiting
            finally:
                self._leave(job_id, waiting, on_progress, partition)

    @contextlib.asynccontextmanager
    async def expecting(
        self, job_id: str, *, on_progress: ProgressCallback | None = None
    ) -> AsyncIterator[Callable[[], Awaitable[JobResult]]]:
        """Registers ``job_id`` and reads its outcome partition from now on, before anything
        about it is read or published; yields the function that waits for it (reading its row
        first). Bound the wait with :func:`deadline`."""
        waiting, partition = await self._enter(job_id, on_progress)

        async def wait() -> JobResult:
            self._read_soon(job_id)
            return await waiting

        try:
            yield wait
        finally:
            self._leave(job_id, waiting, on_progress, partition)

    async def _enter(
        self, job_id: str, on_progress: ProgressCallback | None
    ) -> tuple[asyncio.Future[JobResult], int | None]:
        """Registers a wait (its future) and reads the job's outcome partition from now on."""
        if self._closed:
            raise RuntimeError("the result waiter is closed")
        entry = self._entries.get(job_id)
        if entry is None:
            entry = self._entries[job_id] = _Entry()
        waiting: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        if entry.done is not None:
            waiting.set_result(entry.done)
        entry.waits.append(waiting)
        if on_progress is not None:
            entry.listeners.append(on_progress)
            self._listening.set()
        try:
            partition = await self._watch(job_id)
        except BaseException:
            self._leave(job_id, waiting, on_progress, None)
            raise
        self._ensure_poller()
        return waiting, partition

    def _leave(
        self,
        job_id: str,
        waiting: asyncio.Future[JobResult],
        on_progress: ProgressCallback | None,
        partition: int | None,
    ) -> None:
        entry = self._entries.get(job_id)
        if entry is not None:
            with contextlib.suppress(ValueError):
                entry.waits.remove(waiting)
            if on_progress is not None:
                with contextlib.suppress(ValueError):
                    entry.listeners.remove(on_progress)
            if not entry.waits:
                del self._entries[job_id]
        if partition is not None and self._feed is not None:
            self._feed.unwatch(partition)

    async def updates(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - as result()
    ) -> AsyncIterator[JobUpdate]:
        """Progress as the job reports it, then its result (the last item)."""
        queue: asyncio.Queue[Progress] = asyncio.Queue()
        done = asyncio.ensure_future(
            self.result(job_id, timeout=timeout, on_progress=queue.put_nowait)
        )
        try:
            while not done.done():
                got = asyncio.ensure_future(queue.get())
                await asyncio.wait({got, done}, return_when=asyncio.FIRST_COMPLETED)
                if got.done():
                    yield got.result()
                else:
                    got.cancel()
            while not queue.empty():
                yield queue.get_nowait()
            yield done.result()
        finally:
            if not done.done():
                done.cancel()
                with contextlib.suppress(asyncio.CancelledError, ResultTimeoutError):
                    await done

    # -- where results come from -----------------------------------------------------------------

    async def _watch(self, job_id: str) -> int | None:
        if self._feed is None:
            return None
        if not self._feed_started:
            async with self._feed_lock:
                if not self._feed_started:
                    try:
                        await self._feed.start()
                    except Exception as exc:  # noqa: BLE001 - the rows tell, later: said once
                        log.warning(
                            "outcome topic unavailable, reading rows every %gs instead: %s",
                            self.reread_s,
                            describe(exc),
                        )
                        with contextlib.suppress(Exception):
                            await self._feed.stop()
                        self._feed = None
                        return None
                    self._feed_started = True
        try:
            return await self._feed.watch(job_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the row reads cover this job
            log.warning("watching outcome partition failed: %s", describe(exc))
            return None

    def _outcome(self, job_id: str, value: bytes) -> None:
        entry = self._entries.get(job_id)
        if entry is None or entry.done is not None:
            return
        try:
            outcome = JobOutcome.model_validate_json(value)
        except ValidationError:
            log.warning("an unreadable outcome record for job %s: reading its row", job_id)
            self._read_soon(job_id)
            return
        if not outcome.status.terminal:
            return
        if outcome.result_truncated:
            self._read_soon(job_id)  # the whole result is in the row
            return
        entry.resolve(
            JobResult(
                job_id=job_id,
                status=outcome.status,
                result=outcome.result,
                error=outcome.error,
                error_class=outcome.error_class,
                attempt=outcome.attempt,
                finished_at=outcome.finished_at,
            )
        )

    def _read_soon(self, job_id: str) -> None:
        """The row of ``job_id`` is read with the others asked for in this turn of the loop."""
        self._reads.add(job_id)
        if self._read_task is None or self._read_task.done():
            self._read_task = asyncio.ensure_future(self._read_rows())

    async def _read_rows(self) -> None:
        await asyncio.sleep(0)  # the other waits of this turn join the query
        while self._reads:
            ids, self._reads = list(self._reads), set()
            try:
                await self._apply(ids, ids)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the poller reads them again
                log.warning("reading awaited rows failed: %s", describe(exc))

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        """The safety net and progress: ends when nothing is awaited."""
        last_full = time.monotonic()
        while self._entries:
            follow = [j for j, e in self._entries.items() if e.listeners]
            with contextlib.suppress(TimeoutError):
                # a first progress listener wakes it: its job is read at the short interval
                async with asyncio.timeout(self.progress_s if follow else self.reread_s):
                    await self._listening.wait()
            self._listening.clear()
            now = time.monotonic()
            full = now - last_full >= self.reread_s
            follow = [j for j, e in self._entries.items() if e.listeners]
            ids = list(self._entries) if full else follow
            if not ids:
                continue
            if full:
                last_full = now
            try:
                await self._apply(ids, follow)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("reading awaited rows failed: %s", describe(exc))

    async def _apply(self, ids: list[str], follow: list[str]) -> None:
        rows = await self.pool.fetch(_ROWS, ids, list(TERMINAL_STATUSES), follow)
        for row in rows:
            entry = self._entries.get(row["job_id"])
            if entry is None or entry.done is not None:
                continue
            status = JobStatus(row["status"])
            if status.terminal:
                entry.resolve(
                    JobResult(
                        job_id=row["job_id"],
                        status=status,
                        result=row["result"],
                        error=row["error"],
                        error_class=row["error_class"],
                        attempt=row["attempt"],
                        finished_at=row["finished_at"],
                    )
                )
            elif entry.listeners and row["progress"] is not None:
                seen = (row["progress"], row["progress_detail"], row["progress_at"])
                if seen != entry.seen:
                    entry.seen = seen
                    update = Progress(
                        row["job_id"],
                        float(row["progress"]),
                        row["progress_detail"],
                        row["progress_at"],
                    )
                    for listener in list(entry.listeners):
                        try:
                            listener(update)
                        except Exception:  # a caller's callback: its bug, reported, not ours
                            log.exception("a progress callback failed")


class deadline:
    """Bounds a wait for ``job_id``: past ``within_s`` seconds (None: no bound) the wait is
    cancelled and :class:`ResultTimeoutError` raised. A class, not a generator: one is made
    per wait, and thousands may be open."""

    __slots__ = ("_scope", "job_id", "within_s")

    def __init__(self, job_id: str, within_s: float | None) -> None:
        self.job_id = job_id
        self.within_s = within_s
        self._scope: asyncio.Timeout | None = None

    async def __aenter__(self) -> None:
        if self.within_s is not None:
            self._scope = asyncio.timeout(self.within_s)
            await self._scope.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._scope is None:
            return
        try:
            await self._scope.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            if self._scope.expired():
                raise ResultTimeoutError(self.job_id, self.within_s or 0.0) from None
            raise
