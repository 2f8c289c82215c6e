"""What a real worker sends to Sentry: one scrubbed, tagged event per dead-lettered job, nothing
for retried attempts, and no secret or payload in any byte (checked at a fake ingestion server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import string
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

import asyncpg
import pytest

from jobstream.models.job import JobEvent
from jobstream.streams.producer.client import JobClient
from tests.integration.fake_sentry import FakeSentry, tags_of
from tests.integration.harness import WorkerFactory, wait_for, wait_terminal
from tests.leaks import RARE, leaks, strings_of
from tests.leaky_app import Leaky, leaky
from tests.leaky_app import app as leaky_app

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


def with_password(dsn: str, password: str, port: int | None = None) -> str:
    """The local PostgreSQL trusts local connections: a password is accepted and ignored."""
    url = urlsplit(dsn)
    user = url.username or "postgres"
    port = port or url.port
    netloc = f"{user}:{password}@{url.hostname}" + (f":{port}" if port else "")
    return urlunsplit(url._replace(netloc=netloc))


class Gate:
    """A TCP forwarder to PostgreSQL that the test shuts (an outage) and opens again.

    Shutting it stops listening (new connections are refused) and aborts every connection
    through it, which is what a worker sees when its database goes away.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def shut(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for transport in list(self._transports):
            transport.abort()  # type: ignore[attr-defined]
        await self._server.wait_closed()
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer.transport, up_writer.transport}
        self._transports |= pair
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._transports -= pair
            for transport in pair:
                transport.abort()

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.transport.abort()


async def unchecked(client: JobClient, job_type: str, payload: dict[str, Any]) -> str:
    """Publish an event as it is, as a producer that skips the checks would."""
    event = JobEvent(type=job_type, payload=payload)
    await (await client.publish(event))
    return event.id


async def flush_reports(client: JobClient, fake: FakeSentry) -> str:
    """Submit a job that dead-letters and wait for its event: the worker's one transport thread
    sends in order, so every event reported before it has arrived too."""
    sentinel = await client.submit("sleep", {"seconds": 0, "fatal": True})

    async def reported() -> bool:
        return bool(fake.events_tagged("job.id", sentinel))

    await wait_for(reported, timeout=60, what="the last dead letter's Sentry event")
    return sentinel


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
        # JobClient refuses these two kinds before publishing: published as they are instead
        dead[await unchecked(client, "sleep", {"seconds": MARKER})] = "invalid_payload"
        dead[await client.submit("sleep", {"seconds": 0, "fail_attempts": 10})] = "exhausted"
        # the webhook's 404 is a fatal error whose message quotes the payload's URL
        hook = {"url": f"http://127.0.0.1:{fake_sentry.port}/hook/{MARKER}", "body": {"m": MARKER}}
        dead[await client.submit("http.webhook", hook)] = "fatal_error"
        # a job type is not a payload, but it lands in the message, the tags and the grouping
        for job_type in (f"pg://app:{PASSWORD}@db/x", f"no.such.type {TOKEN} {API_KEY}"):
            dead[await unchecked(client, job_type, {"note": MARKER})] = "unknown_type"
        retried = [
            await client.submit("sleep", {"seconds": 0, "fail_attempts": 2}) for _ in range(3)
        ]
        fine = [await client.submit("echo", {"marker": MARKER}) for _ in range(3)]
        await wait_terminal(pg_pool, [*dead, *retried, *fine], timeout=90)
        dead[await flush_reports(client, fake_sentry)] = "fatal_error"
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
    assert fake_sentry.transactions == []
    assert fake_sentry.logs == []


async def test_a_database_outage_is_reported_once_when_it_starts_and_once_when_it_ends(
    workers: WorkerFactory,
    kafka_bootstrap: str,
    database_url: str,
    pg_pool: asyncpg.Pool,
    prefix: str,
    fake_sentry: FakeSentry,
) -> None:
    url = urlsplit(database_url)
    gate = Gate(url.hostname or "127.0.0.1", url.port or 5432)
    await gate.open()
    try:
        worker = workers.start(
            JOBSTREAM_SENTRY_DSN=fake_sentry.dsn(),
            JOBSTREAM_DATABASE_URL=with_password(database_url, PASSWORD, gate.port),
            JOBSTREAM_DURABLE_STEP_DEADLINE_S="2",
            JOBSTREAM_DURABLE_STEP_TIMEOUT_S="1",
        )
        await worker.wait_assigned()
        async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
            await gate.shut()
            started = time.monotonic()
            ids = await client.submit_many(client.build("sleep", {"seconds": 0}) for _ in range(20))

            async def outage_reported() -> bool:
                return any(tags_of(e).get("outage.phase") == "started" for e in fake_sentry.events)

            await wait_for(outage_reported, timeout=60, what="an outage-started event")
            await gate.open()
            outage_s = time.monotonic() - started
            await wait_terminal(pg_pool, ids, timeout=120)
            sentinel = await flush_reports(client, fake_sentry)
    finally:
        await gate.shut()

    events = fake_sentry.events
    phases = Counter(
        (tags_of(e)["outage.step"], tags_of(e)["outage.phase"])
        for e in events
        if "outage.step" in tags_of(e)
    )
    print(
        f"\nsentry outage: {outage_s:.1f}s without PostgreSQL, 20 jobs -> {len(events)} events"
        f" ({dict(phases)} + 1 dead letter)"
    )
    steps = {step for step, _ in phases}
    assert steps
    assert phases == Counter({(s, p): 1 for s in steps for p in ("started", "ended")})
    assert len(events) == sum(phases.values()) + 1  # + the sentinel; no log line became one
    assert fake_sentry.events_tagged("job.id", sentinel)
    for event in events:
        tags = tags_of(event)
        if "outage.step" in tags:
            assert not {"job.id", "job.type"} & set(tags)
            assert event["level"] == ("warning" if tags["outage.phase"] == "started" else "info")
    assert not fake_sentry.contains(PASSWORD)


def random_secret(rng: random.Random) -> str:
    """Text with a rare character (see tests/leaks.py) at least every 7 characters."""
    alphabet = string.printable + "éü€ßж中😀\"'\\%+&=/?#@:"
    parts = []
    for _ in range(rng.randrange(3, 20)):
        parts.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 7))))
        parts.append(rng.choice(RARE))
    return "".join(parts)


def leaky_payload(rng: random.Random, failure: int) -> Leaky:
    user, pw, path, query = (random_secret(rng) for _ in range(4))
    return Leaky(
        texts=[random_secret(rng) for _ in range(rng.randrange(1, 4))],
        url=f"http://{quote(user, safe='')}:{quote(pw, safe='')}@h.example/{quote(path)}"
        f"?q={quote_plus(query)}",
        quotes=[
            (rng.randrange(20), rng.randrange(20), rng.randrange(400), rng.randrange(1, 300))
            for _ in range(rng.randrange(1, 6))
        ],
        failure=failure,
    )


async def test_a_worker_running_a_teams_app_reports_no_fragment_of_its_payloads(
    workers: WorkerFactory,
    kafka_bootstrap: str,
    pg_pool: asyncpg.Pool,
    prefix: str,
    fake_sentry: FakeSentry,
) -> None:
    """A real worker process (``--app`` by ``JOBSTREAM_APP``), its handlers quoting their
    payloads in every spelling into logs, tracebacks and exceptions: no piece of a payload in
    any byte that reached the fake Sentry, nor in the worker's log."""
    worker = workers.start(
        JOBSTREAM_APP="tests.leaky_app:app",
        JOBSTREAM_SENTRY_DSN=fake_sentry.dsn(),
        JOBSTREAM_MAX_ATTEMPTS="2",
    )
    await worker.wait_assigned()
    rng = random.Random(16)
    payloads = [leaky_payload(rng, failure=i % 3) for i in range(12)]
    async with JobClient(kafka_bootstrap, topic_prefix=prefix, app=leaky_app) as client:
        ids = [await client.submit(leaky, p) for p in payloads]
        await wait_terminal(pg_pool, ids, timeout=120)
        sentinel = await client.submit(leaky, leaky_payload(rng, failure=0))

        async def reported() -> bool:
            return bool(fake_sentry.events_tagged("job.id", sentinel))

        await wait_for(reported, timeout=60, what="the last dead letter's Sentry event")
    events = fake_sentry.events
    assert {tags_of(e)["job.id"] for e in events} == {*ids, sentinel}
    outputs = [s for e in fake_sentry.envelopes for s in strings_of(e.headers)]
    for body in fake_sentry.bodies:
        for line in body.split(b"\n"):
            try:
                outputs.extend(strings_of(json.loads(line)))
            except ValueError:
                outputs.append(line.decode("utf-8", "replace"))
    log_lines = worker.log_path.read_text("utf-8", "replace").splitlines()
    assert any("upstream said" in line for line in log_lines)  # the handlers did log
    secrets = [s for p in payloads for s in (*p.texts, p.url)]
    found = leaks(secrets, [*outputs, *log_lines])
    print(
        f"\nworker scrubbing: {len(payloads)} payloads, {len(events)} events, "
        f"{len(log_lines)} log lines, {len(found)} leaks"
    )
    assert found == [], found[:3]
