"""The job types of the control tests: the built-ins, and ``steps``, which works in steps and
reports its progress after each (real workers run it with
``JOBSTREAM_APP=tests.control_app:app``)."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, Field

from jobstream import JobApp, JobContext, builtin

app: JobApp[None] = JobApp("control-tests", include=[builtin])


class Steps(BaseModel):
    n: int = 0
    steps: int = Field(default=10, ge=1, le=10_000)
    seconds: float = Field(default=0.0, ge=0, le=600, description="the whole run's length")


@app.job("steps", timeout_s=900)
async def steps(payload: Steps, ctx: JobContext[None]) -> dict[str, Any]:
    for i in range(1, payload.steps + 1):
        await asyncio.sleep(payload.seconds / payload.steps)
        await ctx.progress(i / payload.steps, f"step {i} of {payload.steps}")
    return {"n": payload.n, "job": ctx.job_id, "attempt": ctx.attempt}
