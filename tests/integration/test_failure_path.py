"""Retry tiers, dead letters and the handler timeout against real Kafka and PostgreSQL."""

from __future__ import annotations

import base64
import json
import signal
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from jobstream.models.deadletter import DeadLetter, DeadLetterReason
from jobstream.models.job import JobEvent
from jobstream.streams.producer.client import JobClient
from jobstream.streams.topics import topic_names
from tests.integration.harness import WorkerFactory, topic_reader, wait_for, wait_terminal

TIERS = (1.0, 2.0, 3.0)  # the harness's JOBSTREAM_RETRY_TIERS_S
JITTER = 0.1


async def test_retry_tiers_hold_each_attempt_for_its_delay(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    worker = workers.start()
    await worker.wait_assigned()
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        job_id = await client.submit("sleep", {"seconds": 0, "fail_attempts": 3})
    await wait_terminal(pg_pool, [job_id], timeout=60)

    row = await pg_pool.fetchrow("SELECT * FROM jobs WHERE job_id = $1", job_id)
    assert row is not None
    assert (row["status"], row["attempt"], row["executions"]) == ("succeeded", 4, 4)

    names = topic_names(prefix, TIERS)
    async with topic_reader(kafka_bootstrap, names.main) as main:
        await main.wait_count(4)
        events = [(JobEvent.model_validate_json(r.value), r.timestamp) for r in main.records]
    events.sort(key=lambda e: e[0].attempt)
    assert [e.attempt for e, _ in events] == [1, 2, 3, 4]
    for (event, republished_ms), delay in zip(events[1:], TIERS, strict=True):
        failed_at = event.history[-1].at.timestamp()
        held = republished_ms / 1000 - failed_at
        assert delay * (1 - JITTER) - 0.05 <= held <= delay * (1 + JITTER) + 1.5, (
            event.attempt,
            held,
        )
        assert [h.attempt for h in event.history] == list(range(1, event.attempt))

    for tier in names.tiers:  # each tier carried exactly one of the three retries
        async with topic_reader(kafka_bootstrap, tier.topic) as reader:
            await reader.wait_count(1)
            assert len(await reader.poll()) == 1


async def test_exhausted_and_fatal_jobs_are_dead_lettered(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    worker = workers.start(JOBSTREAM_MAX_ATTEMPTS="2")
    await worker.wait_assigned()
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        exhausted = await client.submit("sleep", {"seconds": 0, "fail_attempts": 10})
        fatal = await client.submit("sleep", {"seconds": 0, "fatal": True})
    await wait_terminal(pg_pool, [exhausted, fatal], timeout=60)

    rows = {
        r["job_id"]: r
        for r in await pg_pool.fetch(
            "SELECT * FROM jobs WHERE job_id = ANY($1)", [exhausted, fatal]
        )
    }
    assert (rows[exhausted]["status"], rows[exhausted]["attempt"]) == ("dead_lettered", 2)
    assert (rows[fatal]["status"], rows[fatal]["attempt"]) == ("dead_lettered", 1)
    assert rows[fatal]["executions"] == 1  # fatal: no retry at all

    async with topic_reader(kafka_bootstrap, topic_names(prefix).dlq) as dlq:
        await dlq.wait_count(2)
        letters = {
            d.job_id: d for d in (DeadLetter.model_validate_json(r.value) for r in dlq.records)
        }
    assert letters[exhausted].reason is DeadLetterReason.EXHAUSTED
    assert [h.attempt for h in letters[exhausted].history] == [1, 2]
    assert letters[exhausted].first_failure_at < letters[exhausted].last_failure_at
    assert letters[fatal].reason is DeadLetterReason.FATAL_ERROR
    assert letters[fatal].error_class == "FatalError"
    assert "FatalError" in (letters[fatal].traceback or "")
    assert letters[fatal].source_topic == prefix
    original = JobEvent.model_validate_json(letters[fatal].original_bytes() or b"")
    assert original.id == fatal


POISON: list[tuple[str, bytes | None, DeadLetterReason]] = [
    ("bad-bytes", b"\xff\xfe\x00", DeadLetterReason.INVALID_BYTES),
    ("tombstone", None, DeadLetterReason.INVALID_BYTES),
    ("bad-json", b"{not json", DeadLetterReason.INVALID_JSON),
    ("not-object", b"[1, 2, 3]", DeadLetterReason.INVALID_SCHEMA),
    ("no-type", b'{"payload": {}}', DeadLetterReason.INVALID_SCHEMA),
    ("version", b'{"v": 99, "type": "echo"}', DeadLetterReason.UNSUPPORTED_VERSION),
    ("unknown-type", b'{"id": "u1", "type": "no.such.type"}', DeadLetterReason.UNKNOWN_TYPE),
    (
        "bad-payload",
        b'{"id": "p1", "type": "sleep", "payload": {"seconds": "soon"}}',
        DeadLetterReason.INVALID_PAYLOAD,
    ),
    (
        "oversize",
        b'{"type": "echo", "payload": {"x": "' + b"y" * 5000 + b'"}}',
        DeadLetterReason.OVERSIZE,
    ),
]


async def test_every_kind_of_poison_input_lands_in_the_dlq_and_the_worker_stays_up(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    worker = workers.start(JOBSTREAM_MAX_EVENT_BYTES="4096")
    await worker.wait_assigned()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for name, value, _ in POISON:
            # job ids in the poison that decode are made unique per test
            if value is not None:
                value = value.replace(b'"u1"', f'"{prefix}-u1"'.encode())
                value = value.replace(b'"p1"', f'"{prefix}-p1"'.encode())
            await producer.send_and_wait(
                prefix, value, key=name.encode(), headers=[("kind", name.encode())]
            )
    finally:
        await producer.stop()

    async with topic_reader(kafka_bootstrap, topic_names(prefix).dlq) as dlq:
        await dlq.wait_count(len(POISON), timeout=60)
        letters = [DeadLetter.model_validate_json(r.value) for r in dlq.records]
    by_kind = {dict(d.original_headers)["kind"]: d for d in letters}

    assert len(letters) == len(POISON)
    for name, value, reason in POISON:
        letter = by_kind[base64.b64encode(name.encode()).decode()]
        assert letter.reason is reason, (name, letter.reason, letter.error_message)
        if reason.undecodable:
            assert letter.job_id == f"invalid:{letter.id}"
        original = letter.original_bytes()
        assert (original is None) == (value is None)

    # the row and the dead letter are written together; the offset is acked after both
    await wait_terminal(pg_pool, [d.job_id for d in letters], timeout=30)
    rows = await pg_pool.fetch(
        "SELECT job_id, status FROM jobs WHERE job_id = ANY($1)", [d.job_id for d in letters]
    )
    assert len(rows) == len(POISON)
    assert {r["status"] for r in rows} == {"dead_lettered"}

    # the partitions are not blocked and the worker is alive
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        ok = await client.submit("echo", {"after": "poison"})
    await wait_terminal(pg_pool, [ok], timeout=30)
    assert worker.proc is not None
    assert worker.proc.poll() is None


async def test_a_hung_handler_is_cancelled_at_its_timeout(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"sleep": {"timeout_s": 0.5, "max_attempts": 1}}))
    worker = workers.start(JOBSTREAM_POLICY_FILE=str(policy))
    await worker.wait_assigned()
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        hung = await client.submit("sleep", {"seconds": 3600})
    await wait_terminal(pg_pool, [hung], timeout=30)
    row = await pg_pool.fetchrow("SELECT * FROM jobs WHERE job_id = $1", hung)
    assert row is not None
    assert (row["status"], row["error_class"]) == ("dead_lettered", "JobTimeoutError")
    assert "timeout" in row["error"]


@pytest.mark.parametrize("in_flight", [4])
async def test_sigterm_drains_in_flight_jobs_and_exits_zero(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str, in_flight: int
) -> None:
    env = {"JOBSTREAM_CONCURRENCY": str(in_flight), "JOBSTREAM_PARTITIONS": "1"}
    first = workers.start("first", **env)
    await first.wait_assigned()
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        ids = await client.submit_many(
            [client.build("sleep", {"seconds": 3}) for _ in range(in_flight * 3)]
        )

    async def running() -> bool:
        return (await first.running() or 0) >= in_flight

    await wait_for(running, timeout=30, what="jobs in flight")
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 0, first.tail()
    done_by_first = await pg_pool.fetchval(
        "SELECT count(*) FROM jobs WHERE job_id = ANY($1) AND worker = 'first'", ids
    )
    assert done_by_first >= in_flight  # what was running finished before the exit
    # the jobs waiting for a slot were never claimed: no row is left running for a lease
    held = await pg_pool.fetchval(
        "SELECT count(*) FROM jobs WHERE job_id = ANY($1) AND status = 'running'", ids
    )
    assert held == 0

    second = workers.start("second", **env)
    await second.wait_assigned()
    await wait_terminal(pg_pool, ids, timeout=90)
    rows = await pg_pool.fetch("SELECT executions, takeovers FROM jobs WHERE job_id = ANY($1)", ids)
    assert len(rows) == len(ids)
    assert {r["executions"] for r in rows} == {1}
    assert {r["takeovers"] for r in rows} == {0}
