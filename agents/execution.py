"""Running a claimed job's handler: its rate limit, its timeout, its context and resources, and
how its failure is classified."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import aiohttp
from pydantic import BaseModel

from jobstream.agents.decode import storable
from jobstream.agents.durable import DurableSteps
from jobstream.agents.ports import Limiter
from jobstream.agents.registry import JobContext, JobType, Submitter
from jobstream.agents.states import Claimed, Failed, Ran
from jobstream.models.errors import FatalError, JobTimeoutError, RateLimitedError
from jobstream.streams.metrics import Metrics
from jobstream.streams.settings import Settings


class Executor:
    def __init__(
        self,
        *,
        settings: Settings,
        limiter: Limiter,
        metrics: Metrics,
        http: aiohttp.ClientSession,
        steps: DurableSteps,
        resources: Mapping[str, Any],
        clock: Callable[[], datetime],
        submitter: Submitter | None = None,
    ) -> None:
        self.settings = settings
        self.limiter = limiter
        self.metrics = metrics
        self.http = http
        self.steps = steps
        self.resources = resources
        self.clock = clock
        self.submitter = submitter

    async def acquire(self, job_type: JobType) -> None:
        """A token of the type's rate limit, before its claim (so a run is counted only once
        it can start). An unreachable database is not the job's failure: wait for it."""
        key = job_type.rate_limit_key
        if key is not None:
            await self.steps.run("rate-limit", lambda: self.limiter.acquire(key))

    async def run(
        self, claimed: Claimed, progress: Callable[[float, str | None], None] | None = None
    ) -> Ran | Failed:
        """The handler's result, or its failure classified by the type's policy; ``progress``
        takes what the handler reports with ``ctx.progress``."""
        job_type = claimed.job_type
        key = job_type.rate_limit_key
        ctx: JobContext[Any] = JobContext(
            job=claimed.job,
            settings=self.settings,
            http=self.http,
            resources=self.resources.get(job_type.app),
            submitter=self.submitter,
            reporter=progress,
        )
        timeout = job_type.timeout_s or self.settings.default_timeout_s
        started = time.perf_counter()
        try:
            try:
                async with asyncio.timeout(timeout) as cm:
                    result = await job_type.handler(claimed.payload, ctx)
            except TimeoutError as exc:
                if not cm.expired():
                    raise  # the handler's own timeout error, not ours
                self.metrics.handler_timeouts.labels(type=job_type.name).inc()
                raise JobTimeoutError(f"handler ran past its {timeout:g}s timeout") from exc
            if isinstance(result, BaseModel):
                result = result.model_dump(mode="json")
            why = storable(result)  # refused here, before it could fail a whole batch
            if why is not None:
                raise FatalError(f"the handler's result cannot be stored: {why}")
        except asyncio.CancelledError:
            raise
        except RateLimitedError as exc:
            if key is not None:
                self.metrics.upstream_throttled.labels(key=key).inc()
                pause_s = exc.retry_after or 1.0
                await self.steps.run("pause", lambda: self.limiter.pause(key, pause_s))
            return self._failed(job_type, exc, started)
        except Exception as exc:  # noqa: BLE001 - routed by the type's policy; nothing escapes
            return self._failed(job_type, exc, started)
        finally:
            tokens = ctx.usage.get("tokens")
            if key is not None and tokens:
                self.metrics.upstream_tokens.labels(key=key).inc(tokens)
                await self.steps.run("charge", lambda: self.limiter.charge_tokens(key, tokens))
        elapsed = time.perf_counter() - started
        self.metrics.for_type(job_type.name).handler_duration.observe(elapsed)
        return Ran(result, elapsed)

    def _failed(self, job_type: JobType, exc: BaseException, started: float) -> Failed:
        elapsed = time.perf_counter() - started
        self.metrics.for_type(job_type.name).handler_duration.observe(elapsed)
        return Failed(exc, job_type.policy.retryable(exc), self.clock(), elapsed)
