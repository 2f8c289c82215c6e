"""Job types as a worker runs them: each with its payload model, handler, timeout, rate-limit
key and policy, resolved from the team's :class:`~jobstream.agents.app.JobApp`, the settings and
the policy file."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, Protocol

from pydantic import BaseModel
from typing_extensions import TypeVar

from jobstream.agents.policy import RetryPolicy
from jobstream.models.errors import ConfigurationError

if TYPE_CHECKING:
    import aiohttp

    from jobstream.models.job import JobEvent
    from jobstream.streams.settings import RateLimit, Settings

R = TypeVar("R", default=None)


class Submitter(Protocol):
    """Checks and publishes a job (``JobClient.submit``'s work), for ``JobContext.submit``."""

    async def submit(
        self,
        job: Any,
        payload: Any = None,
        *,
        job_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        partition_key: str | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        ttl: float | timedelta | None = None,
        expires_at: datetime | None = None,
    ) -> str: ...


@dataclass
class JobContext(Generic[R]):
    """What a handler gets besides its payload; built once per execution.

    ``resources`` is what the job's app's lifespan yielded (``None`` without one): the team's
    own clients and pools, created once per replica. ``http`` is the worker's shared HTTP
    session. A handler may record upstream usage in ``usage`` (``tokens``, ``cost``): tokens
    are charged to the job type's rate limit and counted in the metrics.
    """

    job: JobEvent
    settings: Settings
    http: aiohttp.ClientSession
    resources: R = None  # type: ignore[assignment]
    usage: dict[str, float] = field(default_factory=dict)
    submitter: Submitter | None = None
    """The worker's producer, for :meth:`submit`."""
    reporter: Callable[[float, str | None], None] | None = None
    """Where :meth:`progress` goes (the worker writes the last value every half second)."""

    async def progress(self, fraction: float, detail: str | None = None) -> None:
        """Say how far the job is: shown by ``GET /jobs/{id}``, ``jobstream status``, the
        console and to a client waiting for the result. Cheap to call often: the worker keeps
        only the last value and writes it about twice a second.

        :param fraction: done so far, from 0.0 to 1.0.
        :param detail: a short note (``"page 3 of 12"``), at most 200 characters.
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress must be between 0 and 1, not {fraction!r}")
        if self.reporter is not None:
            self.reporter(float(fraction), detail[:200] if detail else None)

    async def submit(
        self,
        job: Any,
        payload: Any = None,
        *,
        job_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        partition_key: str | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        ttl: float | timedelta | None = None,
        expires_at: datetime | None = None,
    ) -> str:
        """Publish a follow-up job from this handler, checked like ``JobClient.submit``
        (a :class:`~jobstream.models.errors.SubmitError` when it is refused); returns its id
        once Kafka has it.

        A handler that fails after this and is retried submits again: give follow-ups an id
        derived from this job's (``job_id=f"{ctx.job_id}:{part}"``) so a second submit of
        the same follow-up is absorbed (a job id runs at most once).

        :param job: a job type declared with ``@app.job``, or a type's name.
        :param payload: the payload: the type's model (or a dict it accepts).
        :param job_id: the follow-up's id (default: a new uuid).
        :param metadata: string pairs carried along with the follow-up.
        :param partition_key: follow-ups with one key keep their order of arrival.
        :param delay: run it this long from now, not before (``run_at``: at this time).
        :param ttl: not started within this long from now, it is never run (``expires_at``:
            by this time).
        """
        if self.submitter is None:
            raise ConfigurationError("this context has no producer to submit jobs with")
        return await self.submitter.submit(
            job, payload, job_id=job_id, metadata=metadata, partition_key=partition_key,
            delay=delay, run_at=run_at, ttl=ttl, expires_at=expires_at,
        )  # fmt: skip

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def attempt(self) -> int:
        """1 for the first execution, then one more for each retry."""
        return self.job.attempt


Handler = Callable[[Any, JobContext[Any]], Awaitable[Any]]


@dataclass(frozen=True)
class JobType:
    name: str
    payload_model: type[BaseModel]
    handler: Handler
    timeout_s: float | None = None
    rate_limit_key: str | None = None
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    app: str = ""
    """The name of the app that declared it: its handlers get that app's resources."""


class Registry:
    """Job types keyed by name; unknown names are dead-lettered by the pipeline.

    ``rate_limits`` are the limits the apps declared in code, with ``JOBSTREAM_RATE_LIMITS``
    over them key by key.
    """

    def __init__(self, rate_limits: Mapping[str, RateLimit] | None = None) -> None:
        self._types: dict[str, JobType] = {}
        self.rate_limits: dict[str, RateLimit] = dict(rate_limits or {})

    def register(self, job_type: JobType) -> JobType:
        if job_type.name in self._types:
            raise ValueError(f"job type {job_type.name!r} is already registered")
        self._types[job_type.name] = job_type
        return job_type

    def get(self, name: str) -> JobType | None:
        return self._types.get(name)

    def __iter__(self) -> Iterator[JobType]:
        return iter(self._types.values())

    def names(self) -> list[str]:
        return sorted(self._types)
