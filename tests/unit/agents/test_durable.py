"""Durable steps: transient errors and hangs are retried until a deadline, the rest raised."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from jobstream.agents.durable import DurableSteps
from jobstream.streams import observability
from jobstream.streams.metrics import Metrics


def steps(metrics: Metrics, *, timeout: float = 5.0, deadline: float = 10.0) -> DurableSteps:
    return DurableSteps(metrics=metrics, attempt_timeout_s=timeout, deadline_s=deadline)


async def test_a_durable_step_raises_what_cannot_pass_at_once() -> None:
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise asyncpg.DataError("jsonb refused it")

    with pytest.raises(asyncpg.DataError):
        await steps(Metrics()).run("write", refused)
    assert calls == 1


async def test_a_durable_step_retries_transient_errors_and_a_hang() -> None:
    tries: list[str] = []

    async def flaky() -> str:
        tries.append("x")
        if len(tries) == 1:
            raise ConnectionResetError()
        if len(tries) == 2:
            await asyncio.Event().wait()  # never answers: the try's timeout ends it
        return "ok"

    metrics = Metrics()
    assert await steps(metrics, timeout=0.05).run("outcome", flaky) == "ok"
    assert len(tries) == 3
    assert metrics.step_retries.labels(step="outcome")._value.get() == 2


async def test_a_step_past_its_deadline_is_one_outage_and_degrades_until_it_passes() -> None:
    observability.shutdown_sentry()  # a clean outage registry
    metrics = Metrics()
    durable = steps(metrics, timeout=0.05, deadline=0.2)
    release = asyncio.Event()

    async def down() -> str:
        if release.is_set():
            return "ok"
        raise ConnectionRefusedError()

    runs = [asyncio.create_task(durable.run("write", down)) for _ in range(3)]

    async def stuck() -> None:
        # DurableSteps exposes state, not an event: poll it under the wait_for bound
        while "write" not in durable.stuck():  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    await asyncio.wait_for(stuck(), 5)
    assert metrics.step_outages.labels(step="write")._value.get() == 1
    assert "write" in observability.outages()
    release.set()
    assert await asyncio.wait_for(asyncio.gather(*runs), 10) == ["ok"] * 3
    assert durable.stuck() == {}
    assert metrics.steps_stuck.labels(step="write")._value.get() == 0
    assert metrics.step_outages.labels(step="write")._value.get() == 1
    assert "write" not in observability.outages()
