"""``echo`` and ``sleep``: job types for tests, demos and benchmarks.

``sleep`` can also fail on purpose (retryable for its first N attempts, or fatally), which is
how the failure path is exercised end to end without an unreliable upstream.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from jobstream.agents.registry import JobContext
from jobstream.models.errors import FatalError, RetryableError


class EchoPayload(BaseModel):
    model_config = ConfigDict(extra="allow")


async def echo(payload: EchoPayload, ctx: JobContext[None]) -> dict[str, Any]:
    return {"echo": payload.model_dump(), "attempt": ctx.job.attempt}


class SleepPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(default=0.1, ge=0, le=3600)
    fail_attempts: int = Field(default=0, ge=0, description="raise a retryable error until then")
    fatal: bool = Field(default=False, description="raise a fatal error instead of finishing")
    bug: bool = Field(default=False, description="fail like a handler bug (a KeyError)")
    unstorable_result: bool = Field(
        default=False, description="return a result PostgreSQL refuses (a lone surrogate)"
    )


async def sleep(payload: SleepPayload, ctx: JobContext[None]) -> dict[str, Any]:
    await asyncio.sleep(payload.seconds)
    if payload.fatal:
        raise FatalError("sleep job asked to fail fatally")
    if payload.bug:
        settings: dict[str, Any] = {}
        return {"value": settings["missing"]}  # the kind of mistake a handler makes
    if payload.unstorable_result:
        # JSON can carry the escape \ud800 but jsonb refuses it: exercises the unstorable route
        return {"text": "\ud800"}
    if ctx.job.attempt <= payload.fail_attempts:
        raise RetryableError(
            f"sleep job asked to fail its first {payload.fail_attempts} attempt(s)"
        )
    return {"slept": payload.seconds, "attempt": ctx.job.attempt}
