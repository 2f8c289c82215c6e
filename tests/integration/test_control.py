"""Job control on the real stack, one behaviour at a time: a cancel in each state of a job, the
awaited result (already there, arriving, timed out, with progress), and a replay of a
cancelled job only on purpose.

The load tests (hundreds of cancels across replicas, concurrent producers of one dedupe key,
a thousand callers waiting through a SIGKILL) are in ``test_control_load.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from jobstream.models.control import CancelAnswer, Dedupe, JobResult, Progress, Submission
from jobstream.models.deadletter import DeadLetter, DeadLetterReason, b64
from jobstream.models.errors import ConfigurationError, ResultTimeoutError, SubmitError
from jobstream.models.job import JobEvent, JobOutcome, JobStatus
from jobstream.streams.producer import waiter as waiter_module
from jobstream.streams.producer.client import JobClient
from jobstream.streams.settings import Settings
from jobstream.streams.setup import prepare
from jobstream.streams.topics import topic_names
from tests.integration.harness import TIERS_S, WorkerFactory, settled, topic_reader, wait_for

APP = "tests.control_app:app"


@pytest.fixture
async def topics_made(kafka_bootstrap: str, database_url: str, prefix: str) -> None:
    """The prefix's topics and the schema, before any worker runs (jobs may queue in Kafka)."""
    settings = Settings(topic_prefix=prefix, partitions=4, retry_tiers_s=TIERS_S)
    names = topic_names(prefix, TIERS_S)
    pool = await prepare(settings, bootstrap=kafka_bootstrap, dsn=database_url, topics=names)
    await pool.close()


@pytest.fixture
async def client(
    kafka_bootstrap: str, database_url: str, prefix: str, topics_made: None
) -> AsyncIterator[JobClient]:
    from tests.control_app import app

    async with JobClient(
        kafka_bootstrap, topic_prefix=prefix, app=app, database_url=database_url
    ) as c:
        yield c


async def _row(pool: asyncpg.Pool, job_id: str) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM jobs WHERE job_id = $1", job_id)
    assert row is not None, job_id
    return row


async def test_a_cancel_in_every_state_of_a_job(
    client: JobClient,
    workers: WorkerFactory,
    pg_pool: asyncpg.Pool,
    kafka_bootstrap: str,
    prefix: str,
) -> None:
    names = topic_names(prefix, TIERS_S)
    async with topic_reader(kafka_bootstrap, names.outcomes) as outcomes:
        # queued in Kafka before any worker runs, and an id never submitted (submitted later)
        queued = await client.submit("echo", {"n": 1})
        unknown = f"{prefix}-never-yet"
        [q, u] = await client.cancel_many([queued, unknown])
        assert (q.answer, q.status, q.was) == (CancelAnswer.CANCELLED, JobStatus.CANCELLED, None)
        assert (u.answer, u.was) == (CancelAnswer.CANCELLED, None)
        late = await client.submit("echo", {"n": 2}, job_id=unknown)
        # the canceller published their outcome records itself
        await outcomes.wait_count(2, timeout=30)
        assert {(o["job_id"], o["status"]) for o in outcomes.json()} == {
            (queued, "cancelled"),
            (late, "cancelled"),
        }

        worker = workers.start(JOBSTREAM_APP=APP)
        await worker.wait_assigned()
        # scheduled: parked by the worker as a row, then cancelled before its time
        delayed = await client.submit("echo", {"n": 3}, delay=3600)

        async def parked() -> bool:
            row = await pg_pool.fetchrow("SELECT status FROM jobs WHERE job_id = $1", delayed)
            return row is not None and row["status"] == "scheduled"

        await wait_for(parked, timeout=30, what="the delayed job's scheduled row")
        d = await client.cancel(delayed)
        assert (d.answer, d.was) == (CancelAnswer.CANCELLED, JobStatus.SCHEDULED)

        # running: the handler is cancelled and the job ends cancelled
        running = await client.submit("steps", {"steps": 300, "seconds": 300})

        async def started() -> bool:
            row = await pg_pool.fetchrow("SELECT progress FROM jobs WHERE job_id = $1", running)
            return row is not None and row["progress"] is not None

        await wait_for(started, timeout=30, what="the long job reporting progress")
        asked = time.monotonic()
        r = await client.cancel(running)
        assert (r.answer, r.status, r.was) == (
            CancelAnswer.REQUESTED,
            JobStatus.RUNNING,
            JobStatus.RUNNING,
        )
        ended = await client.result(running, timeout=30)
        took = time.monotonic() - asked
        assert ended.status is JobStatus.CANCELLED
        assert took < 10, took  # a broken mechanism would wait for the 300 s handler

        # finished: nothing changes, the answer says how it ended
        done = await client.submit_and_wait("echo", {"n": 4}, timeout=30)
        f = await client.cancel(done.job_id)
        assert (f.answer, f.status) == (CancelAnswer.FINISHED, JobStatus.SUCCEEDED)

        await settled(kafka_bootstrap, prefix, [outcomes])
        for job_id in (queued, late, delayed):
            row = await _row(pg_pool, job_id)
            assert (row["status"], row["executions"]) == ("cancelled", 0), job_id
        row = await _row(pg_pool, running)
        assert (row["status"], row["executions"]) == ("cancelled", 1)
        assert row["error"] == "cancelled on request while it ran"
        assert (await _row(pg_pool, done.job_id))["status"] == "succeeded"
        # the queued records reached the worker: it re-emitted their outcome, ran nothing
        seen = [JobOutcome.model_validate(o) for o in outcomes.json()]
        assert [o.reemitted for o in seen if o.job_id == queued] == [False, True]
        audit = await pg_pool.fetch(
            "SELECT job_id, was, answer, by FROM control_audit WHERE topic = $1 ORDER BY id",
            prefix,
        )
        assert [(a["job_id"], a["answer"]) for a in audit] == [
            (queued, "cancelled"),
            (unknown, "cancelled"),
            (delayed, "cancelled"),
            (running, "requested"),
            (done.job_id, "finished"),
        ]
        assert all(a["by"].startswith("client:") for a in audit)


async def test_results_already_there_arriving_timed_out_and_with_progress(
    client: JobClient, workers: WorkerFactory
) -> None:
    worker = workers.start(JOBSTREAM_APP=APP)
    await worker.wait_assigned()
    first = await client.submit_and_wait("echo", {"n": 1}, timeout=30)
    assert first.status is JobStatus.SUCCEEDED
    assert first.result["echo"] == {"n": 1}
    # already there: answered from the row
    again = await client.result(first.job_id, timeout=5)
    assert (again.status, again.result) == (first.status, first.result)

    with pytest.raises(ResultTimeoutError) as timed_out:
        await client.submit_and_wait("steps", {"steps": 2, "seconds": 60}, timeout=1)
    assert isinstance(timed_out.value, TimeoutError)

    seen: list[Progress] = []
    slow = await client.submit_and_wait(
        "steps", {"n": 7, "steps": 8, "seconds": 4}, timeout=60, on_progress=seen.append
    )
    assert slow.result["n"] == 7
    fractions = [p.fraction for p in seen]
    assert len(fractions) >= 2, fractions
    assert fractions == sorted(fractions)
    assert seen[-1].detail is not None
    assert seen[-1].detail.startswith("step ")

    watched = await client.submit("steps", {"n": 8, "steps": 6, "seconds": 3})
    updates = [u async for u in client.watch(watched, timeout=60)]
    assert isinstance(updates[-1], JobResult)
    assert updates[-1].result["n"] == 8
    assert any(isinstance(u, Progress) for u in updates[:-1])


async def test_control_without_a_database_says_which_setting(
    kafka_bootstrap: str, prefix: str
) -> None:
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as plain:
        for call in (plain.cancel("x"), plain.result("x", timeout=1)):
            with pytest.raises(ConfigurationError, match="JOBSTREAM_DATABASE_URL"):
                await call


async def test_a_result_arrives_while_the_worker_restarts(
    client: JobClient, workers: WorkerFactory, pg_pool: asyncpg.Pool
) -> None:
    first = workers.start("r1", JOBSTREAM_APP=APP)
    await first.wait_assigned()
    job = await client.submit("steps", {"n": 3, "steps": 20, "seconds": 6})
    waiting = asyncio.create_task(client.result(job, timeout=120))

    async def running() -> bool:
        row = await pg_pool.fetchrow("SELECT progress FROM jobs WHERE job_id = $1", job)
        return row is not None and row["progress"] is not None

    await wait_for(running, timeout=30, what="the job running on r1")
    await asyncio.to_thread(first.kill)
    second = workers.start("r2", JOBSTREAM_APP=APP)
    await second.wait_assigned()
    got = await waiting
    assert got.status is JobStatus.SUCCEEDED
    assert got.result["n"] == 3


async def _key_expired(pool: asyncpg.Pool, key: str) -> bool:
    return bool(
        await pool.fetchval("SELECT expires_at <= now() FROM dedupe_keys WHERE key = $1", key)
    )


async def test_dedupe_modes_one_producer(
    client: JobClient, workers: WorkerFactory, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    worker = workers.start(JOBSTREAM_APP=APP)
    await worker.wait_assigned()

    # simple: the first stands while it is unfinished, a new job once it finished
    key = Dedupe(f"{prefix}-simple")
    first = await client.submit_unique("steps", {"n": 1, "steps": 2, "seconds": 1}, dedupe=key)
    second = await client.submit_unique("steps", {"n": 2}, dedupe=key)
    assert (first.deduplicated, second) == (False, Submission(first.job_id, True))
    assert (await client.result(first.job_id, timeout=30)).result["n"] == 1
    third = await client.submit_unique("steps", {"n": 3}, dedupe=key)
    assert not third.deduplicated
    assert third.job_id != first.job_id

    # throttle: the first stands for the TTL, finished or not
    key = Dedupe(f"{prefix}-throttle", "throttle", ttl=3)
    first = await client.submit_unique("echo", {"n": 1}, dedupe=key)
    assert (await client.result(first.job_id, timeout=30)).status is JobStatus.SUCCEEDED
    again = await client.submit_unique("echo", {"n": 2}, dedupe=key)
    assert again == Submission(first.job_id, True)
    await wait_for(lambda: _key_expired(pg_pool, key.key), timeout=10, what="the throttle's ttl")
    after = await client.submit_unique("echo", {"n": 3}, dedupe=key)
    assert not after.deduplicated

    # debounce: the waiting job takes the last payload and the last time, and runs once
    key = Dedupe(f"{prefix}-debounce", "debounce")
    subs = [await client.submit_unique("echo", {"n": n}, dedupe=key, delay=2) for n in range(3)]
    assert [s.deduplicated for s in subs] == [False, True, True]
    assert {s.job_id for s in subs} == {subs[0].job_id}
    submitted_last = datetime.now(UTC)
    row = await _row(pg_pool, subs[0].job_id)
    assert row["run_at"] >= submitted_last + timedelta(seconds=1.5)
    done = await client.result(subs[0].job_id, timeout=30)
    assert done.result["echo"] == {"n": 2}
    assert (await _row(pg_pool, subs[0].job_id))["executions"] == 1
    with pytest.raises(SubmitError, match="debounce needs a delay"):
        await client.submit_unique("echo", {}, dedupe=key)

    # a double click that waits: both callers get the one job's result
    key = Dedupe(f"{prefix}-click")
    a, b = await asyncio.gather(
        client.submit_and_wait("steps", {"n": 5, "steps": 2, "seconds": 1}, dedupe=key, timeout=30),
        client.submit_and_wait("steps", {"n": 6, "steps": 2, "seconds": 1}, dedupe=key, timeout=30),
    )
    assert a.job_id == b.job_id
    assert a.result == b.result


async def test_the_cli_cancels_by_id_and_by_filter_dedupes_and_waits(
    client: JobClient, workers: WorkerFactory, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    worker = workers.start(JOBSTREAM_APP=APP)
    await worker.wait_assigned()
    # by filter: scheduled jobs of one type; a dry run changes nothing
    later = [await client.submit("echo", {"n": i}, delay=3600) for i in range(3)]
    other = await client.submit("steps", {"steps": 1}, delay=3600)

    async def parked() -> bool:
        n = await pg_pool.fetchval(
            "SELECT count(*) FROM jobs WHERE job_id = ANY($1) AND status = 'scheduled'",
            [*later, other],
        )
        return int(n) == 4

    await wait_for(parked, timeout=30, what="four scheduled rows")
    code, out = await workers.cli("cancel", "--type", "echo", "--status", "scheduled", "--dry-run")
    assert code == 0, out
    assert all(j in out for j in later)
    assert other not in out
    assert "would cancel 3 job(s)" in out
    assert (
        await pg_pool.fetchval(
            "SELECT count(*) FROM jobs WHERE job_id = ANY($1) AND status = 'cancelled'", later
        )
        == 0
    )
    code, out = await workers.cli("cancel", "--type", "echo", "--json")
    assert code == 0, out
    answers = json.loads(out[out.index("[") :])
    assert {(a["id"], a["cancel"], a["was"]) for a in answers} == {
        (j, "cancelled", "scheduled") for j in later
    }
    code, out = await workers.cli("cancel", "--type", "echo")
    assert code == 1
    assert "no unfinished job" in out
    # by id: one finished, one unknown
    done = await client.submit_and_wait("echo", {}, timeout=30)
    code, out = await workers.cli("cancel", done.job_id, f"{prefix}-nobody")
    assert code == 0, out
    assert "finished" in out
    assert "1 cancelled, 1 finished" in out
    by = await pg_pool.fetchval("SELECT by FROM control_audit WHERE job_id = $1", later[0])
    assert by.startswith("cli:")

    # submit under a dedupe key: the second answer is the first job, said on stderr
    key = f"{prefix}-cli"
    long = '{"steps": 100, "seconds": 100}'
    code, first = await workers.cli(
        "submit", "steps", "--payload", long, "--dedupe-key", key, "--app", APP
    )
    assert code == 0, first
    code, second = await workers.cli("submit", "steps", "--dedupe-key", key, "--app", APP)
    assert code == 0, second
    job_id = first.strip().splitlines()[-1]
    assert f"deduplicated: job {job_id} stands for key" in second

    # status --wait: the progress on stderr while it waits; exit 1 when it is not finished
    async def progressing() -> bool:
        progress = await pg_pool.fetchval("SELECT progress FROM jobs WHERE job_id = $1", job_id)
        return progress is not None

    await wait_for(progressing, timeout=30, what="the job's progress")
    code, out = await workers.cli("status", job_id, "--wait", "1")
    assert code == 1, out
    assert "progress " in out
    assert "% step " in out
    assert "has not finished within 1s" in out
    # and the finished row once it ends while the command waits
    waiting = asyncio.create_task(workers.cli("status", job_id, "--wait", "60"))
    await client.cancel(job_id)
    code, out = await waiting
    assert code == 0, out
    assert '"status": "cancelled"' in out


async def test_a_cancelled_job_is_replayed_only_on_purpose(
    client: JobClient,
    workers: WorkerFactory,
    pg_pool: asyncpg.Pool,
    kafka_bootstrap: str,
    prefix: str,
) -> None:
    """Its dead letter is still in the DLQ (it was dead-lettered, replayed, then cancelled):
    a replay skips it, unless asked to include cancelled jobs: then it runs again."""
    names = topic_names(prefix, TIERS_S)
    job_id = f"{prefix}-was-cancelled"
    event = JobEvent(id=job_id, type="echo", payload={"n": 9})
    now = datetime.now(UTC)
    letter = DeadLetter(
        id=DeadLetter.coordinates(prefix, 0, 0), job_id=job_id, job_type="echo",
        reason=DeadLetterReason.FATAL_ERROR, error_class="FatalError", error_message="once",
        attempt=1, source_topic=prefix, source_partition=0, source_offset=0,
        first_failure_at=now, last_failure_at=now, original_key=b64(job_id.encode()),
        original_value=b64(event.to_bytes()),
    )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(names.dlq, letter.to_bytes(), key=job_id.encode())
    finally:
        await producer.stop()
    [answer] = await client.cancel_many([job_id])
    assert answer.answer is CancelAnswer.CANCELLED
    worker = workers.start(JOBSTREAM_APP=APP)
    await worker.wait_assigned()

    code, out = await workers.cli("dlq", "replay", "--key", job_id, "--dry-run")
    assert code == 0, out
    assert "skip-cancelled" in out
    assert "would replay 0" in out
    code, out = await workers.cli("dlq", "replay", "--key", job_id)
    assert code == 0, out
    assert "skipped-cancelled 1" in out
    assert (await _row(pg_pool, job_id))["status"] == "cancelled"

    code, out = await workers.cli("dlq", "replay", "--key", job_id, "--include-cancelled")
    assert code == 0, out
    assert "replayed 1" in out
    done = await client.result(job_id, timeout=60)
    assert done.status is JobStatus.SUCCEEDED
    assert done.result["echo"] == {"n": 9}
    audit = await pg_pool.fetch(
        "SELECT action, was, answer FROM control_audit WHERE job_id = $1 ORDER BY id", job_id
    )
    assert [(a["action"], a["was"], a["answer"]) for a in audit] == [
        ("cancel", None, "cancelled"),
        ("reopen", "cancelled", "dead_lettered"),
    ]


async def test_a_cancel_asked_while_its_worker_is_dead_holds_after_the_restart(
    client: JobClient, workers: WorkerFactory, pg_pool: asyncpg.Pool
) -> None:
    """The mark is in the row: the replica that takes the dead one's work over finds it in
    its claim and ends the job cancelled without running it again."""
    lease = {"JOBSTREAM_APP": APP, "JOBSTREAM_CLAIM_LEASE_S": "3"}
    first = workers.start("d1", **lease)
    await first.wait_assigned()
    job_id = await client.submit("steps", {"steps": 600, "seconds": 600})

    async def running() -> bool:
        progress = await pg_pool.fetchval("SELECT progress FROM jobs WHERE job_id = $1", job_id)
        return progress is not None

    await wait_for(running, timeout=30, what="the job running on d1")
    await asyncio.to_thread(first.kill)
    asked = await client.cancel(job_id)
    assert (asked.answer, asked.status) == (CancelAnswer.REQUESTED, JobStatus.RUNNING)
    second = workers.start("d2", **lease)
    await second.wait_assigned()
    ended = await client.result(job_id, timeout=120)
    assert ended.status is JobStatus.CANCELLED
    row = await _row(pg_pool, job_id)
    assert (row["status"], row["executions"], row["worker"]) == ("cancelled", 1, "d2")
    assert row["error"] == "cancelled on request"


async def test_a_wait_on_a_partition_that_went_idle_reads_it_again_from_now(
    client: JobClient, workers: WorkerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition without waiters is paused after a while; the next wait on it takes a new
    position (before the job's row is read), so its outcome is still seen."""
    monkeypatch.setattr(waiter_module, "IDLE_PARTITION_S", 0.2)
    client._results().reread_s = 3600  # no safety net: only the outcome records can tell
    worker = workers.start(JOBSTREAM_APP=APP)
    await worker.wait_assigned()
    first = await client.submit_and_wait("echo", {"n": 1}, timeout=30)
    feed = client._results()._feed
    assert feed is not None

    async def paused() -> bool:
        return not feed._active

    await wait_for(paused, timeout=10, what="the idle outcome partition paused")
    # a job whose outcome goes to the same partition (outcomes are keyed by job id)
    where = feed.partition(first.job_id)
    job_id = next(j for i in range(1000) if feed.partition(j := f"{first.job_id}-{i}") == where)
    again = await client.submit_and_wait("echo", {"n": 2}, job_id=job_id, timeout=30)
    assert again.result["echo"] == {"n": 2}
    assert where in feed._active
