"""The producer side: ``JobClient.submit`` checks a job, publishes it and returns its id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar, overload

import asyncpg
from pydantic import BaseModel

from jobstream.models.control import CancelResult, Dedupe, JobResult, JobUpdate, Submission
from jobstream.models.errors import ConfigurationError, SubmitError
from jobstream.models.job import JobEvent
from jobstream.streams.kafka.publisher import Publisher
from jobstream.streams.pg.pool import PoolerMode, create_pool
from jobstream.streams.producer import control
from jobstream.streams.producer.api import ApiError, JobTypes, error_line, validate_job
from jobstream.streams.producer.timing import Seconds, Timing
from jobstream.streams.producer.waiter import ProgressCallback, ResultWaiter, deadline
from jobstream.streams.settings import Settings
from jobstream.streams.topics import topic_names

if TYPE_CHECKING:
    from jobstream.agents.app import Job, JobApp

P = TypeVar("P", bound=BaseModel)
DEFAULT_MAX_EVENT_BYTES = 1_000_000
"""The workers' default ``JOBSTREAM_MAX_EVENT_BYTES``."""


@dataclass(frozen=True)
class _Declared:
    name: str
    payload_model: type[BaseModel]


class AppTypes:
    """The job types of an app, as the validation reads them."""

    def __init__(self, app: JobApp[Any]) -> None:
        self._jobs = {name: _Declared(name, j.payload_model) for name, j in app.jobs.items()}

    def get(self, name: str) -> _Declared | None:
        return self._jobs.get(name)

    def names(self) -> list[str]:
        return sorted(self._jobs)


class JobClient:
    """Publishes jobs to the main topic, keyed by job id (or ``partition_key``).

    ``submit`` checks the job as ``POST /jobs`` does (the type is known, the payload fits its
    model, the event fits the workers' size limit), raises :class:`SubmitError` and publishes
    nothing when it does not, and returns once the event is durable in Kafka; ``submit_many``
    queues every event first and then waits for them together, so a batch costs about one
    round trip.

    :param bootstrap: Kafka bootstrap servers, ``host:port[,host:port]``.
    :param topic_prefix: the workers' ``JOBSTREAM_TOPIC_PREFIX``.
    :param app: the team's app: job types named by string are checked against its payload
        models (a :class:`~jobstream.agents.app.Job` always is); without one, only the
        built-in types are known by name.
    :param max_event_bytes: the workers' ``JOBSTREAM_MAX_EVENT_BYTES``.
    :param linger_ms: how long the producer waits to fill a batch.
    :param options: aiokafka client arguments for TLS/SASL, e.g.
        ``jobstream.streams.kafka.security.client_options(Settings())``.
    :param database_url: the workers' PostgreSQL (``JOBSTREAM_DATABASE_URL``), for job
        control: :meth:`cancel`, :meth:`submit_unique`, :meth:`result`, :meth:`watch` and
        :meth:`submit_and_wait`. Without it (or ``pool``) those raise
        :class:`ConfigurationError`; submitting needs Kafka only.
    :param pool: an asyncpg pool of that database to use instead (the client does not close
        it).
    :param pooler_mode: ``"transaction"`` when ``database_url`` goes through a
        transaction-mode pooler (``JOBSTREAM_DB_POOLER_MODE``).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        topic_prefix: str = "jobs",
        app: JobApp[Any] | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        linger_ms: int = 5,
        options: Mapping[str, Any] | None = None,
        database_url: str | None = None,
        pool: asyncpg.Pool | None = None,
        pooler_mode: PoolerMode = "none",
    ) -> None:
        if app is None:
            from jobstream.agents.builtin import builtin

            app = builtin
        self.topics = topic_names(topic_prefix)
        self.topic = self.topics.main
        self.max_event_bytes = max_event_bytes
        self._bootstrap = bootstrap
        self._options = dict(options or {})
        self._publisher = Publisher(
            bootstrap, linger_ms=linger_ms, client_id="jobstream-client", options=options
        )
        self._events = EventSubmitter(self._publisher, self.topic, AppTypes(app), max_event_bytes)
        self._database_url = database_url
        self._pooler_mode: PoolerMode = pooler_mode
        self._pool = pool
        self._owns_pool = False
        self._waiter: ResultWaiter | None = None
        self._by = control.who("client")

    @classmethod
    def from_settings(cls, settings: Settings, *, app: JobApp[Any] | None = None) -> JobClient:
        """A client for the workers ``settings`` describe: their Kafka (with its TLS/SASL
        options), topic prefix and size limit (``JOBSTREAM_*`` variables: ``Settings()``).

        :param settings: the workers' settings; ``kafka_bootstrap`` must be set.
        :param app: as for the constructor (default: ``settings.app``, else the built-ins).
        """
        from jobstream.agents.catalog import app_for
        from jobstream.streams.kafka.security import client_options

        if settings.kafka_bootstrap is None:
            raise ConfigurationError("JOBSTREAM_KAFKA_BOOTSTRAP is not set")
        url = settings.database_url.get_secret_value() if settings.database_url else None
        return cls(
            settings.kafka_bootstrap,
            topic_prefix=settings.topic_prefix,
            app=app or app_for(settings),
            max_event_bytes=settings.max_event_bytes,
            options=client_options(settings),
            database_url=url or None,
            pooler_mode=settings.db_pooler_mode,
        )

    async def start(self) -> None:
        await self._publisher.start()
        if self._pool is None and self._database_url:
            try:
                self._pool = await create_pool(
                    self._database_url, min_size=1, max_size=10, pooler_mode=self._pooler_mode
                )
            except BaseException:
                await self._publisher.stop()
                raise
            self._owns_pool = True

    async def stop(self) -> None:
        if self._waiter is not None:
            await self._waiter.close()
            self._waiter = None
        if self._owns_pool and self._pool is not None:
            await self._pool.close()
            self._pool = None
            self._owns_pool = False
        await self._publisher.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @overload
    def build(
        self,
        job: Job[P],
        payload: P,
        *,
        job_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        partition_key: str | None = None,
        delay: Seconds | None = None,
        run_at: datetime | None = None,
        ttl: Seconds | None = None,
        expires_at: datetime | None = None,
    ) -> JobEvent: ...

    @overload
    def build(
        self,
        job: str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        *,
        job_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        partition_key: str | None = None,
        delay: Seconds | None = None,
        run_at: datetime | None = None,
        ttl: Seconds | None = None,
        expires_at: datetime | None = None,
    ) -> JobEvent: ...

    def build(
        self,
        job: Job[Any] | str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        *,
        job_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        partition_key: str | None = None,
        delay: Seconds | None = None,
        run_at: datetime | None = None,
        ttl: Seconds | None = None,
        expires_at: datetime | None = None,
    ) -> JobEvent:
        """The checked event of one job, not published; raises :class:`SubmitError`.

        :param job: a job type declared with ``@app.job``, or a type's name.
        :param payload: the payload: the type's model (or a dict it accepts).
        :param job_id: the job's id (default: a new uuid); a job id runs at most once.
        :param metadata: string pairs carried along with the job (its outcome has them).
        :param partition_key: jobs with one key keep their order of arrival (default: the id).
        :param delay: run it this long from now (seconds or a timedelta), not before.
        :param run_at: run it at this time (with its UTC offset), not before.
        :param ttl: not started within this long from now, it is never run (ends expired).
        :param expires_at: not started by this time, it is never run.
        """
        return self._events.build(
            job, payload, job_id=job_id, metadata=metadata, partition_key=partition_key,
            delay=delay, run_at=run_at, ttl=ttl, expires_at=expires_at,
        )  # fmt: skip

    async def publish(self, event: JobEvent) -> asyncio.Future[Any]:
        """Queue one event as it is (see :meth:`build`); the future resolves when Kafka has it."""
        return await self._events.publish(event)

    @overload
    async def submit(
        self,
        job: Job[P],
        payload: P,
        *,
        job_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        partition_key: str | None = None,
        delay: Seconds | None = None,
        run_at: datetime | None = None,
        ttl: Seconds | None = None,
        expires_at: datetime | None = None,
    ) -> str: ...

    @overload
    async def submit(
        self,
        job: str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        *,
        job_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        partition_key: str | None = None,
        delay: Seconds | None = None,
        run_at: datetime | None = None,
        ttl: Seconds | None = None,
        expires_at: datetime | None = None,
    ) -> str: ...

    async def submit(
        self,
        job: Job[Any] | str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        *,
        job_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        partition_key: str | None = None,
        delay: Seconds | None = None,
        run_at: datetime | None = None,
        ttl: Seconds | None = None,
        expires_at: datetime | None = None,
    ) -> str:
        """Check one job (see :meth:`build`), publish it, and return its id once Kafka has it.
        A delayed job is kept by the first worker that gets it until its time."""
        return await self._events.submit(
            job, payload, job_id=job_id, metadata=metadata, partition_key=partition_key,
            delay=delay, run_at=run_at, ttl=ttl, expires_at=expires_at,
        )  # fmt: skip

    async def submit_many(self, events: Iterable[JobEvent]) -> list[str]:
        """Publish events made by :meth:`build`; returns their ids once Kafka has them all."""
        ids: list[str] = []
        futures = []
        for event in events:
            futures.append(await self.publish(event))
            ids.append(event.id)
        await asyncio.gather(*futures)
        return ids

    # -- job control (needs PostgreSQL) ---------------------------------------------------------

    async def submit_unique(
        self,
        job: Job[Any] | str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        *,
        dedupe: Dedupe,
        job_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        partition_key: str | None = None,
        delay: Seconds | None = None,
        run_at: datetime | None = None,
        ttl: Seconds | None = None,
        expires_at: datetime | None = None,
    ) -> Submission:
        """Submit a job under a deduplication key: one job stands for the key, across every
        producer (a database constraint decides). Returns the id of the job that stands and
        whether this submit was folded into it. The job is checked like :meth:`submit`.

        :param dedupe: the key, its mode (``simple``, ``throttle``, ``debounce``) and TTL.
        :param delay: as for :meth:`submit`; ``debounce`` needs it (each submit moves the
            waiting job to now + delay).

        The other parameters are :meth:`build`'s.
        """
        event = self.build(
            job, payload, job_id=job_id, metadata=metadata, partition_key=partition_key,
            delay=delay, run_at=run_at, ttl=ttl, expires_at=expires_at,
        )  # fmt: skip
        return await self._unique(event, dedupe)

    async def _unique(self, event: JobEvent, dedupe: Dedupe) -> Submission:
        pool = control.require(self._pool)
        try:
            return await control.submit_unique(pool, self._publisher, self.topic, event, dedupe)
        except ValueError as exc:  # debounce without a delay
            raise SubmitError(f"{event.type}: {exc}") from None

    async def cancel(self, job_id: str) -> CancelResult:
        """Cancel a job, wherever it is: queued or unknown (it will never run), scheduled or
        waiting to retry (it is cancelled now), running (its worker cancels the handler within
        about a second and the job ends ``cancelled``), or finished (nothing changes; the
        answer says how it finished). Durable: a restart of any process does not undo it.

        :param job_id: the job's id.
        """
        [result] = await self.cancel_many([job_id])
        return result

    async def cancel_many(self, job_ids: Sequence[str]) -> list[CancelResult]:
        """:meth:`cancel` of each job (a few at a time); the answers in the order given.

        :param job_ids: the jobs' ids.
        """
        pool = control.require(self._pool)
        return await control.cancel_jobs(pool, self._publisher, self.topics, job_ids, by=self._by)

    async def result(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - AsyncResult.get's spelling; raises ResultTimeoutError
        on_progress: ProgressCallback | None = None,
    ) -> JobResult:
        """Wait for a job to finish and return how it ended (succeeded or not: look at
        ``status``). A result already there is returned at once; one that arrives while this
        waits is never missed; a worker that restarts meanwhile only delays it.

        :param job_id: the job's id.
        :param timeout: seconds to wait at most (None: no limit); past it
            :class:`~jobstream.models.errors.ResultTimeoutError` is raised and the job goes on.
        :param on_progress: called with each new :class:`~jobstream.models.control.Progress`
            the job reports while it runs (read about twice a second).
        """
        waiter = self._results()
        return await waiter.result(job_id, timeout=timeout, on_progress=on_progress)

    async def watch(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - as result()
    ) -> AsyncIterator[JobUpdate]:
        """The job's progress as it reports it, then its :class:`JobResult` (the last item)::

            async for update in client.watch(job_id, timeout=60):
                if isinstance(update, Progress):
                    print(f"{update.fraction:.0%} {update.detail or ''}")

        :param job_id: the job's id.
        :param timeout: as for :meth:`result`.
        """
        async for update in self._results().updates(job_id, timeout=timeout):
            yield update

    async def submit_and_wait(
        self,
        job: Job[Any] | str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - as result()
        on_progress: ProgressCallback | None = None,
        dedupe: Dedupe | None = None,
        job_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        partition_key: str | None = None,
        delay: Seconds | None = None,
        run_at: datetime | None = None,
        ttl: Seconds | None = None,
        expires_at: datetime | None = None,
    ) -> JobResult:
        """Submit a job and wait for its result (see :meth:`result`). The wait starts before
        the job is published, so even a job that finishes at once is seen.

        :param timeout: seconds to wait at most for the whole of it (None: no limit).
        :param on_progress: as for :meth:`result`.
        :param dedupe: submit it as :meth:`submit_unique` does and wait for the job that stands
            for the key (a double click waits for the one job).

        The other parameters are :meth:`build`'s.
        """
        event = self.build(
            job, payload, job_id=job_id, metadata=metadata, partition_key=partition_key,
            delay=delay, run_at=run_at, ttl=ttl, expires_at=expires_at,
        )  # fmt: skip
        waiter = self._results()
        async with deadline(event.id, timeout):
            async with waiter.expecting(event.id, on_progress=on_progress) as wait:
                if dedupe is None:
                    await (await self.publish(event))
                    return await wait()
                stands = await self._unique(event, dedupe)
                if stands.job_id == event.id:
                    return await wait()
            # folded into another job: wait for that one
            return await waiter.result(stands.job_id, on_progress=on_progress)

    def _results(self) -> ResultWaiter:
        if self._waiter is None:
            self._waiter = ResultWaiter(
                control.require(self._pool),
                bootstrap=self._bootstrap,
                outcomes_topic=self.topics.outcomes,
                options=self._options,
            )
        return self._waiter


class _Single:
    """One declared job type, as the validation reads the known types."""

    def __init__(self, job: Job[Any]) -> None:
        self._job = _Declared(job.name, job.payload_model)

    def get(self, name: str) -> _Declared | None:
        return self._job if name == self._job.name else None

    def names(self) -> list[str]:
        return [self._job.name]


class EventSender(Protocol):
    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> Awaitable[Any]: ...


class EventSubmitter:
    """Checks jobs and publishes them with a producer it does not own: a :class:`JobClient`'s,
    or the worker's for a handler's ``ctx.submit``."""

    def __init__(
        self, sender: EventSender, topic: str, types: JobTypes, max_event_bytes: int
    ) -> None:
        self.sender = sender
        self.topic = topic
        self.types = types
        self.max_event_bytes = max_event_bytes

    def build(
        self,
        job: Job[Any] | str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        *,
        job_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        partition_key: str | None = None,
        delay: Seconds | None = None,
        run_at: datetime | None = None,
        ttl: Seconds | None = None,
        expires_at: datetime | None = None,
    ) -> JobEvent:
        try:
            timing = Timing.of(delay=delay, run_at=run_at, ttl=ttl, expires_at=expires_at)
        except ValueError as exc:
            raise SubmitError(f"{job if isinstance(job, str) else job.name}: {exc}") from None
        return make_event(
            self.types,
            job,
            payload,
            job_id=job_id,
            metadata=metadata,
            partition_key=partition_key,
            max_event_bytes=self.max_event_bytes,
            timing=timing,
        )

    async def publish(self, event: JobEvent) -> asyncio.Future[Any]:
        sent = await self.sender.send(self.topic, event.to_bytes(), key=event.key())
        return asyncio.ensure_future(sent)

    async def submit(
        self,
        job: Job[Any] | str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        *,
        job_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        partition_key: str | None = None,
        delay: Seconds | None = None,
        run_at: datetime | None = None,
        ttl: Seconds | None = None,
        expires_at: datetime | None = None,
    ) -> str:
        event = self.build(
            job, payload, job_id=job_id, metadata=metadata, partition_key=partition_key,
            delay=delay, run_at=run_at, ttl=ttl, expires_at=expires_at,
        )  # fmt: skip
        await (await self.publish(event))
        return event.id


def make_event(
    types: JobTypes,
    job: Job[Any] | str,
    payload: Mapping[str, Any] | BaseModel | None,
    *,
    job_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
    partition_key: str | None = None,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    timing: Timing | None = None,
) -> JobEvent:
    """The event of one job, checked as ``POST /jobs`` checks it (``types`` names the known job
    types; a declared :class:`Job` is always known); raises :class:`SubmitError`."""
    name = job if isinstance(job, str) else job.name
    if isinstance(payload, BaseModel):
        if not isinstance(job, str) and not isinstance(payload, job.payload_model):
            raise SubmitError(
                f"{name}: the payload is a {type(payload).__name__}, not a"
                f" {job.payload_model.__name__}"
            )
        body: Any = payload.model_dump(mode="json")
    else:
        body = dict(payload or {})
    item: dict[str, Any] = {
        "type": name,
        "payload": body,
        "id": job_id,
        "metadata": dict(metadata or {}),
        "partition_key": partition_key,
    }
    known = types if isinstance(job, str) else _Single(job)
    try:
        event = validate_job(item, known, max_event_bytes)
    except ApiError as exc:
        raise SubmitError(f"{name}: {error_line(exc)}", exc.body.get("errors", [])) from None
    if timing:
        event = event.model_copy(
            update={"not_before": timing.not_before, "expires_at": timing.expires_at}
        )
    return event
