"""The contract a team imports from ``jobstream``: an app declared as the README shows it, run
with ``jobstream.testing`` (the worker's own pipeline, in memory, retries in virtual time)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel, Field

from jobstream import (
    ConfigurationError,
    JobApp,
    JobClient,
    JobContext,
    JobStatus,
    RetryableError,
    Settings,
    SubmitError,
    builtin,
)
from jobstream.agents.catalog import load_app
from jobstream.testing import JobTester


@dataclass
class Resources:
    calls: list[str] = field(default_factory=list)
    closed: bool = False


app: JobApp[Resources] = JobApp("acme", include=[builtin])
app.rate_limit("images", rate=10)
opened: list[Resources] = []


@app.lifespan
async def resources(settings: Settings) -> AsyncIterator[Resources]:
    res = Resources()
    opened.append(res)
    yield res
    res.closed = True


class Thumb(BaseModel):
    url: str = Field(min_length=1)
    width: int = 128
    fail_times: int = 0


class Made(BaseModel):
    path: str
    width: int


class BadUrlError(ValueError):
    """A subclass of a class the job type declares fatal."""


@app.job("thumb.make", timeout_s=5, max_attempts=3, rate_limit="images", fatal=(ValueError,))
async def make_thumb(payload: Thumb, ctx: JobContext[Resources]) -> Made:
    ctx.resources.calls.append(payload.url)
    if payload.url.startswith("bad:"):
        raise BadUrlError(f"cannot read {payload.url}")
    if ctx.attempt <= payload.fail_times:
        raise RetryableError("the image server answered 503")
    return Made(path=f"/thumbs/{ctx.job_id}.png", width=payload.width)


async def test_a_job_runs_with_its_app_resources_and_returns_its_model_as_json() -> None:
    started = time.perf_counter()
    async with JobTester(app) as tester:
        run = await tester.run(make_thumb, Thumb(url="https://x/a.png"), job_id="t1")
        assert opened[-1].calls == ["https://x/a.png"]
        assert tester.limiter.acquired == ["images"]
    assert opened[-1].closed  # the lifespan ends with the tester
    assert run.succeeded
    assert run.result == {"path": "/thumbs/t1.png", "width": 128}
    assert (run.attempts, run.executions, run.retries, run.dead_letter) == (1, 1, [], None)
    assert run.outcome is not None
    assert run.outcome.status is JobStatus.SUCCEEDED
    assert time.perf_counter() - started < 1.0


async def test_retries_pass_in_virtual_time_and_exhaust_into_a_dead_letter() -> None:
    async with JobTester(app, resources=Resources()) as tester:
        recovered = await tester.run(make_thumb, Thumb(url="u", fail_times=2))
        exhausted = await tester.run(make_thumb, Thumb(url="u", fail_times=5))
    assert recovered.succeeded
    assert recovered.attempts == recovered.executions == 3
    assert [r.attempt for r in recovered.retries] == [1, 2]
    assert recovered.waited_s >= 9  # the first tiers: 10 s and 60 s, +/- jitter
    assert exhausted.status is JobStatus.DEAD_LETTERED
    assert exhausted.attempts == 3  # max_attempts
    assert exhausted.dead_letter is not None
    assert exhausted.dead_letter.reason.value == "exhausted"
    assert exhausted.dead_letter.error_class == "RetryableError"


async def test_a_subclass_of_a_fatal_class_is_dead_lettered_at_once() -> None:
    async with JobTester(app, resources=Resources()) as tester:
        run = await tester.run(make_thumb, {"url": "bad:x"})
    assert run.status is JobStatus.DEAD_LETTERED
    assert (run.attempts, run.retries) == (1, [])
    assert run.dead_letter is not None
    assert run.dead_letter.error_class == "BadUrlError"
    assert run.dead_letter.reason.value == "fatal_error"


async def test_included_apps_run_and_an_invalid_job_is_refused_before_it_runs() -> None:
    async with JobTester(app, resources=Resources()) as tester:
        echoed = await tester.run("echo", {"hello": "world"})
        with pytest.raises(SubmitError, match="url"):
            await tester.run(make_thumb, {"width": 10})
        with pytest.raises(SubmitError, match="unknown job type"):
            await tester.run("thumb.remove", {})
    assert echoed.succeeded
    assert echoed.result["echo"] == {"hello": "world"}


def test_the_client_checks_a_typed_job_before_publishing_anything() -> None:
    client = JobClient("127.0.0.1:1", app=app)  # never started: nothing is sent
    event = client.build(make_thumb, Thumb(url="u"), job_id="j")
    assert (event.type, event.payload["url"], event.id) == ("thumb.make", "u", "j")
    with pytest.raises(SubmitError, match="not a Thumb"):
        client.build(make_thumb, Made(path="p", width=1))  # type: ignore[misc]  # mypy refuses it too
    with pytest.raises(SubmitError, match="workers refuse more than"):
        client.build("echo", {"blob": "x" * 2_000_000})


def test_declaration_mistakes_are_configuration_errors() -> None:
    other: JobApp[None] = JobApp("other")
    with pytest.raises(ConfigurationError, match="pydantic model"):

        @other.job("untyped")  # type: ignore[type-var]  # mypy refuses it too
        async def untyped(payload: dict[str, Any], ctx: JobContext[None]) -> None: ...

    @other.job("limited", rate_limit="nowhere")
    async def limited(payload: Thumb, ctx: JobContext[None]) -> None: ...

    with pytest.raises(ConfigurationError, match="without a limit"):
        other.registry(Settings())
    assert load_app("tests.unit.test_public_api:app") is app


class Fanout(BaseModel):
    urls: list[str]


@app.job("thumb.fanout")
async def fanout(payload: Fanout, ctx: JobContext[Resources]) -> int:
    for n, url in enumerate(payload.urls):
        await ctx.submit(make_thumb, {"url": url}, job_id=f"{ctx.job_id}:{n}")
    return len(payload.urls)


async def test_a_handler_submits_follow_up_jobs_checked_like_the_client() -> None:
    async with JobTester(app, resources=Resources()) as tester:
        run = await tester.run(fanout, Fanout(urls=["a", "b"]), job_id="f")
        assert run.result == 2
        assert [(e.id, e.type, e.payload["url"]) for e in run.submitted] == [
            ("f:0", "thumb.make", "a"),
            ("f:1", "thumb.make", "b"),
        ]
        followed = [await tester.deliver(e) for e in run.submitted]
        refused = await tester.run(fanout, Fanout(urls=[""]))  # Thumb.url needs a character
    assert [f.result["path"] for f in followed] == ["/thumbs/f:0.png", "/thumbs/f:1.png"]
    assert (refused.status, refused.attempts) == (JobStatus.DEAD_LETTERED, 1)  # fatal
    assert refused.submitted == []


def test_a_client_is_made_from_the_workers_settings() -> None:
    client = JobClient.from_settings(
        Settings(kafka_bootstrap="127.0.0.1:1", topic_prefix="acme", max_event_bytes=4096),
        app=app,
    )
    assert (client.topic, client.max_event_bytes) == ("acme", 4096)
    with pytest.raises(SubmitError, match="workers refuse more than 4096"):
        client.build("echo", {"blob": "x" * 5000})
    with pytest.raises(ConfigurationError, match="KAFKA_BOOTSTRAP"):
        JobClient.from_settings(Settings(kafka_bootstrap=None))


async def test_a_delayed_job_waits_in_virtual_time_and_an_expired_one_never_runs() -> None:
    async with JobTester(app, resources=Resources()) as tester:
        delayed = await tester.run(make_thumb, Thumb(url="u"), delay=timedelta(hours=1))
        with pytest.raises(SubmitError, match="expire before it may run"):
            await tester.run(make_thumb, Thumb(url="u"), delay=60, ttl=30)
    assert delayed.succeeded
    assert delayed.waited_s == 3600
