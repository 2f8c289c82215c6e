"""What a real worker sends to Sentry: one scrubbed, tagged event per dead-lettered job, nothing
for retried attempts, and no secret or payload in any byte (checked at a fake ingestion server).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from streams.client import JobClient
from tests.integration.fake_sentry import FakeSentry, tags_of
from tests.integration.harness import WorkerFactory, wait_for, wait_terminal

PASSWORD = "PwPlantedInteg7731"
TOKEN = "TokPlantedInteg8842"
API_KEY = "sk-or-v1-KeyPlantedInteg9953aaaaaaaaaaaaaaaa"
MARKER = "PayloadMarkerInteg6620"
SECRETS = (PASSWORD, TOKEN, API_KEY, "KeyPlantedInteg9953", MARKER)


@pytest.fixture
async def fake_sentry() -> AsyncIterator[FakeSentry]:
    server = await FakeSentry().start()
    yield server
    await server.stop()


def with_password(dsn: str, password: str) -> str:
    """The local PostgreSQL trusts local connections: a password is accepted and ignored."""
    url = urlsplit(dsn)
    user = url.username or "postgres"
    netloc = f"{user}:{password}@{url.hostname}" + (f":{url.port}" if url.port else "")
    return urlunsplit(url._replace(netloc=netloc))


async def test_one_scrubbed_tagged_event_per_dead_letter_and_none_for_retries(
    workers: WorkerFactory,
    kafka_bootstrap: str,
    database_url: str,
    pg_pool: asyncpg.Pool,
    prefix: str,
    fake_sentry: FakeSentry,
) -> None:
    started = time.monotonic()
    worker = workers.start(
        JOBSTREAM_SENTRY_DSN=fake_sentry.dsn(),
        JOBSTREAM_API_TOKEN=TOKEN,
        JOBSTREAM_OPENROUTER_API_KEY=API_KEY,
        JOBSTREAM_DATABASE_URL=with_password(database_url, PASSWORD),
        JOBSTREAM_MAX_ATTEMPTS="3",
        JOBSTREAM_WEBHOOK_ALLOW_HOSTS=f'["127.0.0.1:{fake_sentry.port}"]',
    )
    await worker.wait_assigned()

    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        dead: dict[str, str] = {}  # job id -> dead-letter reason
        for _ in range(3):
            dead[await client.submit("sleep", {"seconds": 0, "fatal": True})] = "fatal_error"
        dead[await client.submit("sleep", {"seconds": MARKER})] = "invalid_payload"
        dead[await client.submit("sleep", {"seconds": 0, "fail_attempts": 10})] = "exhausted"
        # the webhook's 404 is a fatal error whose message quotes the payload's URL
        hook = {"url": f"http://127.0.0.1:{fake_sentry.port}/hook/{MARKER}", "body": {"m": MARKER}}
        dead[await client.submit("http.webhook", hook)] = "fatal_error"
        # a job type is not a payload, but it lands in the message, the tags and the grouping
        for job_type in (f"pg://app:{PASSWORD}@db/x", f"no.such.type {TOKEN} {API_KEY}"):
            dead[await client.submit(job_type, {"note": MARKER})] = "unknown_type"
        retried = [
            await client.submit("sleep", {"seconds": 0, "fail_attempts": 2}) for _ in range(3)
        ]
        fine = [await client.submit("echo", {"marker": MARKER}) for _ in range(3)]
        await wait_terminal(pg_pool, [*dead, *retried, *fine], timeout=90)
        # One transport thread sends in order: once the event of a job submitted after
        # everything else has arrived, every earlier event has too.
        sentinel = await client.submit("sleep", {"seconds": 0, "fatal": True})
        dead[sentinel] = "fatal_error"

    async def sentinel_reported() -> bool:
        return bool(fake_sentry.events_tagged("job.id", sentinel))

    await wait_for(sentinel_reported, timeout=60, what="the last dead letter's Sentry event")
    elapsed = time.monotonic() - started

    events = fake_sentry.events
    per_job = Counter(tags_of(e).get("job.id") for e in events)
    print(
        f"\nsentry scenario: {len(dead)} dead letters, {len(retried)} retried x2, "
        f"{len(fine)} succeeded -> {len(events)} events in {elapsed:.1f}s"
    )
    assert {job_id: per_job[job_id] for job_id in dead} == dict.fromkeys(dead, 1)
    assert not any(per_job[job_id] for job_id in [*retried, *fine])
    assert len(events) == len(dead), per_job  # nothing else: no log line became an event

    for event in events:
        tags = tags_of(event)
        job_id = tags["job.id"]
        assert tags["worker"] == worker.name
        assert tags["dead_letter.reason"] == dead[job_id]
        assert tags["job.attempt"] == ("3" if dead[job_id] == "exhausted" else "1")
        if dead[job_id] != "unknown_type":
            assert tags["job.type"] in ("sleep", "http.webhook")
        assert event["level"] == "error"
        assert event["fingerprint"][:1] == ["dead-letter"]
        assert set(event["contexts"]["kafka"]) == {"topic", "partition", "offset"}
        for value in event.get("exception", {}).get("values", []):
            frames = (value.get("stacktrace") or {}).get("frames", [])
            assert not any("vars" in frame for frame in frames)  # no frame locals at all
    fatal_groups = {tuple(e["fingerprint"]) for e in events if tags_of(e)["job.type"] == "sleep"}
    assert ("dead-letter", "sleep", "fatal_error", "FatalError") in fatal_groups
    assert len(fatal_groups) == 3  # 4 fatal jobs are one issue; invalid and exhausted: one each

    for secret in SECRETS:
        assert not fake_sentry.contains(secret), f"{secret} reached Sentry"
    assert fake_sentry.transactions == [] and fake_sentry.logs == []
