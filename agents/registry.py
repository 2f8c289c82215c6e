"""Job types: each declares its payload model, handler, timeout, rate-limit key and policy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from jobstream.agents.policy import RetryPolicy

if TYPE_CHECKING:
    import aiohttp

    from jobstream.models.job import JobEvent
    from jobstream.streams.settings import Settings


@dataclass
class JobContext:
    """What a handler may use besides its payload; built once per execution."""

    job: JobEvent
    settings: Settings
    http: aiohttp.ClientSession
    usage: dict[str, float] = field(default_factory=dict)
    """A handler may record upstream usage here (e.g. ``tokens``) for metrics and token limits."""


Handler = Callable[[Any, JobContext], Awaitable[Any]]


@dataclass(frozen=True)
class JobType:
    name: str
    payload_model: type[BaseModel]
    handler: Handler
    timeout_s: float | None = None
    rate_limit_key: str | None = None
    policy: RetryPolicy = field(default_factory=RetryPolicy)


class Registry:
    """Job types keyed by name; unknown names are dead-lettered by the pipeline."""

    def __init__(self) -> None:
        self._types: dict[str, JobType] = {}

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
