"""``JobApp``: how a team declares its job types, rate limits and resources in code.

::

    app = JobApp("acme")

    class Thumb(BaseModel):
        url: str

    @app.job("thumb.make", timeout_s=30, max_attempts=4, fatal=(ValueError,))
    async def make_thumb(payload: Thumb, ctx: JobContext[Resources]) -> dict[str, str]:
        ...

``jobstream worker --app acme.jobs:app`` runs it. The payload model is read from the handler's
first annotation; the policy file (``JOBSTREAM_POLICY_FILE``) still overrides a type's options.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic

from pydantic import BaseModel, ValidationError
from typing_extensions import TypeVar

from jobstream.agents.policy import ExceptionTypes, RetryPolicy
from jobstream.agents.registry import JobContext, JobType, Registry
from jobstream.models.errors import ConfigurationError
from jobstream.models.schedules import Missed, ScheduleSpec

if TYPE_CHECKING:
    from jobstream.streams.settings import RateLimit, Settings

P = TypeVar("P", bound=BaseModel)
R = TypeVar("R", default=None)
Lifespan = Callable[["Settings"], AbstractAsyncContextManager[Any]]


@dataclass(frozen=True)
class JobOptions:
    """A job type's options as declared in code; ``None`` takes the settings' default."""

    timeout_s: float | None = None
    max_attempts: int | None = None
    rate_limit: str | None = None
    fatal: ExceptionTypes = ()
    retry_on: ExceptionTypes = ()
    retry_unexpected: bool = True
    jitter: float = 0.1


@dataclass(frozen=True)
class Job(Generic[P]):
    """A job type declared with :meth:`JobApp.job`. Calling it calls the handler (for tests);
    ``JobClient.submit(job, payload)`` publishes one."""

    name: str
    payload_model: type[P]
    handler: Callable[[P, JobContext[Any]], Awaitable[Any]]
    options: JobOptions
    app: str

    async def __call__(self, payload: P, ctx: JobContext[Any]) -> Any:
        return await self.handler(payload, ctx)


class JobApp(Generic[R]):
    """The job types, rate limits and resources of one team's application.

    :param name: names the app in logs and keeps apps apart when one includes another.
    :param include: apps whose job types this one runs too (``jobstream.builtin`` holds
        ``echo``, ``sleep``, ``llm.chat`` and ``http.webhook``).
    """

    def __init__(self, name: str = "app", *, include: Sequence[JobApp[Any]] = ()) -> None:
        self.name = name
        self._jobs: dict[str, Job[Any]] = {}
        self._rate_limits: dict[str, RateLimit] = {}
        self._lifespan: Lifespan | None = None
        self._schedules: dict[str, ScheduleSpec] = {}
        self._included: list[JobApp[Any]] = []
        for other in include:
            self.include(other)

    def job(
        self,
        name: str,
        *,
        timeout_s: float | None = None,
        max_attempts: int | None = None,
        rate_limit: str | None = None,
        fatal: ExceptionTypes = (),
        retry_on: ExceptionTypes = (),
        retry_unexpected: bool = True,
        jitter: float = 0.1,
        schedule: str | None = None,
    ) -> Callable[[Callable[[P, JobContext[R]], Awaitable[Any]]], Job[P]]:
        """Declare the decorated ``async def handler(payload: Model, ctx: JobContext)`` as the
        job type ``name``.

        :param name: the type producers submit (``"thumb.make"``), unique across the apps.
        :param timeout_s: the handler is cancelled after this and the attempt fails as
            retryable (default ``JOBSTREAM_DEFAULT_TIMEOUT_S``).
        :param max_attempts: executions before a retryable failure is dead-lettered (default
            ``JOBSTREAM_MAX_ATTEMPTS``).
        :param rate_limit: a rate-limit key shared by every replica (see :meth:`rate_limit`
            and ``JOBSTREAM_RATE_LIMITS``); each execution takes one token first.
        :param fatal: exception classes (subclasses count) that dead-letter at once; checked
            first, so they win over ``retry_on`` and over a ``RetryableError`` subclass.
        :param retry_on: exception classes (subclasses count) that are retried, whatever
            ``retry_unexpected`` says.
        :param retry_unexpected: retry an exception outside jobstream's error tree and
            ``retry_on`` (``False``: such a bug is dead-lettered at once).
        :param jitter: spread of the retry delay, as a fraction of it.
        :param schedule: a cron expression (UTC): run the job at every tick with its model's
            default payload (see :meth:`schedule` for a payload, a time zone, an interval).
        """
        if name in self._jobs:
            raise ConfigurationError(f"app {self.name!r} already has a job type {name!r}")
        if max_attempts is not None and max_attempts < 1:
            raise ConfigurationError(f"{name}: max_attempts must be >= 1")
        options = JobOptions(
            timeout_s=timeout_s,
            max_attempts=max_attempts,
            rate_limit=rate_limit,
            fatal=tuple(fatal),
            retry_on=tuple(retry_on),
            retry_unexpected=retry_unexpected,
            jitter=jitter,
        )

        def register(fn: Callable[[P, JobContext[R]], Awaitable[Any]]) -> Job[P]:
            job = Job(
                name=name,
                payload_model=_payload_model(name, fn),
                handler=fn,
                options=options,
                app=self.name,
            )
            self._jobs[name] = job
            if schedule is not None:
                self.schedule(name, job, cron=schedule)
            return job

        return register

    def schedule(
        self,
        name: str,
        job: Job[Any] | str,
        payload: BaseModel | Mapping[str, Any] | None = None,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        timezone: str = "UTC",
        missed: Missed = "skip",
        catch_up_max: int = 1,
    ) -> ScheduleSpec:
        """Run ``job`` with ``payload`` on a recurring schedule: at every tick of ``cron`` or
        ``every`` seconds. One job per tick across all replicas (its id is the schedule's name
        and the tick); the schedule is kept in PostgreSQL, where ``jobstream schedules`` can
        pause, resume or run it now.

        :param name: the schedule's name, unique.
        :param job: a job type declared with ``@app.job``, or a type's name.
        :param payload: the payload of every tick's job (default: the model's defaults).
        :param cron: a cron expression (minute hour day month weekday), read in ``timezone``.
        :param every: an interval (seconds or a timedelta), counted from the Unix epoch.
        :param timezone: an IANA zone (``Europe/Berlin``); a DST change shifts no tick twice.
        :param missed: ticks missed while nothing ran: ``skip`` them, run ``once`` for all,
            or ``catch_up`` the last ``catch_up_max``.
        :param catch_up_max: with ``catch_up``, at most this many missed ticks run.
        """
        if name in self._schedules:
            raise ConfigurationError(f"app {self.name!r} already has a schedule {name!r}")
        job_type = job if isinstance(job, str) else job.name
        if isinstance(payload, BaseModel):
            body = payload.model_dump(mode="json")
        elif payload is None and not isinstance(job, str):
            try:
                body = job.payload_model().model_dump(mode="json")
            except ValidationError:
                raise ConfigurationError(
                    f"schedule {name!r}: {job_type}'s payload has required fields: give one"
                ) from None
        else:
            body = dict(payload or {})
        seconds = every.total_seconds() if isinstance(every, timedelta) else every
        try:
            spec = ScheduleSpec(
                name=name,
                job_type=job_type,
                payload=body,
                cron=cron,
                every_s=seconds,
                timezone=timezone,
                missed=missed,
                catch_up_max=catch_up_max,
            )
        except ValidationError as exc:
            raise ConfigurationError(f"schedule {name!r}: {exc.errors()[0]['msg']}") from None
        self._schedules[name] = spec
        return spec

    def rate_limit(
        self,
        key: str,
        *,
        rate: float,
        per: float = 1.0,
        burst: float | None = None,
        tokens_per_minute: float | None = None,
    ) -> None:
        """Declare a rate limit shared by every replica. An app's declaration of a key wins
        over the same key's in the apps it includes (say, the built-in ``openrouter``), and
        ``JOBSTREAM_RATE_LIMITS`` wins over both.

        :param key: what job types name as their ``rate_limit``.
        :param rate: executions allowed per ``per`` seconds, across all replicas.
        :param per: the window of ``rate``, in seconds.
        :param burst: the bucket's size (default: ``rate``); keep it below the upstream's own.
        :param tokens_per_minute: an upstream token budget; handlers report their tokens in
            ``ctx.usage["tokens"]``.
        """
        from jobstream.streams.settings import RateLimit

        self._rate_limits[key] = RateLimit(
            rate=rate, per=per, burst=burst, tokens_per_minute=tokens_per_minute
        )

    def lifespan(
        self, fn: Callable[[Settings], AsyncIterator[R]]
    ) -> Callable[[Settings], AsyncIterator[R]]:
        """Decorate an async generator that creates the app's resources, yields them and
        closes them: it runs once per replica, before the first job and after the last (a
        drain). Its handlers find what it yielded as ``ctx.resources``.

        ::

            @app.lifespan
            async def resources(settings: Settings) -> AsyncIterator[Resources]:
                async with httpx.AsyncClient() as http:
                    yield Resources(http=http)
        """
        if self._lifespan is not None:
            raise ConfigurationError(f"app {self.name!r} already has a lifespan")
        self._lifespan = asynccontextmanager(fn)
        return fn

    def include(self, other: JobApp[Any]) -> None:
        """Run ``other``'s job types (with its own resources and rate limits) in this app."""
        if other is self or other in self._included:
            return
        self._included.append(other)

    # -- what the worker reads ------------------------------------------------------------------

    def apps(self) -> list[JobApp[Any]]:
        """This app and every app it includes, each once, included ones first."""
        seen: list[JobApp[Any]] = []

        def visit(app: JobApp[Any]) -> None:
            if app in seen:
                return
            for inner in app._included:
                visit(inner)
            seen.append(app)

        visit(self)
        return seen

    @property
    def jobs(self) -> Mapping[str, Job[Any]]:
        """Every job type this app runs, its own and its included apps'."""
        out: dict[str, Job[Any]] = {}
        for app in self.apps():
            for name, job in app._jobs.items():
                if name in out and out[name] is not job:
                    raise ConfigurationError(
                        f"job type {name!r} is declared by apps {out[name].app!r} and {app.name!r}"
                    )
                out[name] = job
        return out

    def lifespans(self) -> list[tuple[str, Lifespan]]:
        """(app name, lifespan) of every app that declared one, in start order."""
        return [(a.name, a._lifespan) for a in self.apps() if a._lifespan is not None]

    def schedules(self) -> list[ScheduleSpec]:
        """Every schedule this app and the apps it includes declare."""
        out: dict[str, ScheduleSpec] = {}
        for app in self.apps():
            for name, spec in app._schedules.items():
                if name in out:
                    raise ConfigurationError(f"two apps declare the schedule {name!r}")
                out[name] = spec
        return list(out.values())

    def rate_limits(self) -> dict[str, RateLimit]:
        out: dict[str, RateLimit] = {}
        for app in self.apps():
            out.update(app._rate_limits)
        return out

    def registry(self, settings: Settings) -> Registry:
        """The job types as a worker runs them: defaults from ``settings``, the policy file's
        overrides on top, the rate limits of the code with ``JOBSTREAM_RATE_LIMITS`` over them."""
        from jobstream.agents.catalog import apply_overrides, load_policy_file

        names = [a.name for a in self.apps()]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"two included apps share a name: {sorted(names)}")
        overrides = load_policy_file(settings.policy_file) if settings.policy_file else {}
        registry = Registry({**self.rate_limits(), **settings.rate_limits})
        for job in self.jobs.values():
            registry.register(apply_overrides(resolve(job, settings), overrides.get(job.name, {})))
        unknown = set(overrides) - set(registry.names())
        if unknown:
            raise ConfigurationError(f"policy file names unknown job types: {sorted(unknown)}")
        for spec in self.schedules():
            if registry.get(spec.job_type) is None:
                raise ConfigurationError(
                    f"schedule {spec.name!r} runs {spec.job_type!r}, which no app declares"
                )
        missing = {
            t.rate_limit_key
            for t in registry
            if t.rate_limit_key is not None and t.rate_limit_key not in registry.rate_limits
        }
        if missing:
            raise ConfigurationError(
                f"rate-limit keys without a limit: {sorted(missing)} (declare them with"
                " app.rate_limit() or in JOBSTREAM_RATE_LIMITS)"
            )
        return registry


def resolve(job: Job[Any], settings: Settings) -> JobType:
    """A declared job type with the settings' defaults filled in."""
    o = job.options
    return JobType(
        name=job.name,
        payload_model=job.payload_model,
        handler=job.handler,
        timeout_s=o.timeout_s,
        rate_limit_key=o.rate_limit,
        policy=RetryPolicy(
            max_attempts=o.max_attempts or settings.max_attempts,
            retry_unexpected=o.retry_unexpected,
            jitter=o.jitter,
            fatal=o.fatal,
            retry_on=o.retry_on,
        ),
        app=job.app,
    )


def _payload_model(name: str, fn: Callable[..., Any]) -> type[Any]:
    """The pydantic model the handler's first parameter is annotated with."""
    if not inspect.iscoroutinefunction(fn):
        raise ConfigurationError(f"{name}: the handler must be an async def")
    params = list(inspect.signature(fn).parameters)
    if len(params) != 2:
        raise ConfigurationError(f"{name}: the handler takes (payload, ctx), not {params}")
    try:
        hints = typing.get_type_hints(fn)
    except NameError as exc:
        raise ConfigurationError(
            f"{name}: cannot resolve the handler's annotations: {exc}"
        ) from None
    model = hints.get(params[0])
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigurationError(
            f"{name}: annotate the handler's first parameter with a pydantic model (got {model!r})"
        )
    return model
