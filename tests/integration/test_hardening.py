"""Core hardening against the real Kafka and PostgreSQL: sizes, routes, copies, ids.

Records here are published by a plain aiokafka producer, as another team's client would, not by
``JobClient``: nothing below relies on the events having been built by jobstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from jobstream.models.deadletter import DeadLetter
from jobstream.models.job import JobEvent, JobOutcome, derived_job_id
from jobstream.streams.failures import RecordTooLargeError
from jobstream.streams.kafka.publisher import Publisher, topic_limits
from jobstream.streams.topics import topic_names
from tests.integration.blackhole import broker_behind_blackhole
from tests.integration.harness import (
    WorkerFactory,
    lag_by_partition,
    topic_reader,
    wait_for,
    wait_terminal,
)

MB = 1_000_000


def event(job_type: str, payload: dict[str, Any], job_id: str | None = None) -> bytes:
    return JobEvent(id=job_id or uuid.uuid4().hex, type=job_type, payload=payload).to_bytes()


async def raw_producer(bootstrap: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024, linger_ms=5
    )
    await producer.start()
    return producer


async def wait_no_lag(bootstrap: str, group: str, topic: str, timeout: float = 60) -> None:
    async def none_left() -> bool:
        lag = await lag_by_partition(bootstrap, group, [topic])
        return bool(lag) and all(v == 0 for v in lag.values())

    await wait_for(none_left, timeout=timeout, interval=0.5, what=f"no lag on {topic}")


async def test_large_records_end_as_one_dead_letter_each_and_stall_nothing(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    names = topic_names(prefix)
    worker = workers.start(JOBSTREAM_CONCURRENCY="25")
    await worker.wait_assigned()
    sizes = [int(0.5 * MB), int(0.9 * MB), 1_048_000]  # the last: as large as the topic takes
    good_ids: list[str] = []
    big: dict[str, tuple[bytes, int]] = {}  # sha256 -> (value, publish timestamp in ms)
    producer = await raw_producer(kafka_bootstrap)
    try:
        for i in range(2000):
            job_id = uuid.uuid4().hex
            good_ids.append(job_id)
            await producer.send(names.main, event("echo", {"i": i}, job_id), key=job_id.encode())
            if i in (300, 900, 1500):
                size = sizes.pop(0)
                value = os.urandom(size)
                meta = await (await producer.send(names.main, value, key=f"big{i}".encode()))
                big[hashlib.sha256(value).hexdigest()] = (value, meta.timestamp)
        await producer.flush()
    finally:
        await producer.stop()

    await wait_terminal(pg_pool, good_ids, timeout=120)
    async with topic_reader(kafka_bootstrap, names.dlq) as dlq:
        await dlq.wait_count(len(big), timeout=60)
        records = await dlq.poll()  # nothing beyond the three
    letters = [DeadLetter.model_validate_json(r.value) for r in records]
    assert len(letters) == 3, [dl.reason for dl in letters]
    assert {dl.original_sha256 for dl in letters} == set(big)
    for dl, rec in zip(letters, records, strict=True):
        original, published_ms = big[dl.original_sha256 or ""]
        assert dl.original_size == len(original)
        assert rec.timestamp - published_ms < 30_000  # ended within 30 s
        assert dl.reason.value in ("invalid_bytes", "oversize")
        prefix_bytes = dl.original_prefix() or b""
        assert original.startswith(prefix_bytes)
        if not dl.original_truncated:
            assert dl.original_bytes() == original
        source_row = await pg_pool.fetchrow("SELECT * FROM jobs WHERE job_id = $1", dl.job_id)
        assert source_row is not None
        assert source_row["status"] == "dead_lettered"
    succeeded = await pg_pool.fetchval(
        "SELECT count(*) FROM jobs WHERE job_id = ANY($1) AND status = 'succeeded'", good_ids
    )
    assert succeeded == 2000
    await wait_no_lag(kafka_bootstrap, prefix, names.main)

    # the worker's producer still works for every partition after all of that
    later = []
    producer = await raw_producer(kafka_bootstrap)
    try:
        for i in range(200):
            job_id = uuid.uuid4().hex
            later.append(job_id)
            await producer.send(names.main, event("echo", {"later": i}, job_id))
        await producer.flush()
    finally:
        await producer.stop()
    await wait_terminal(pg_pool, later, timeout=60)
    assert "Traceback" not in worker.log_text()


async def test_handler_bug_and_unstorable_result_are_dead_lettered_without_stalling(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    names = topic_names(prefix)
    worker = workers.start(JOBSTREAM_MAX_ATTEMPTS="2", JOBSTREAM_PARTITIONS="1")
    await worker.wait_assigned()
    bug, unstorable = uuid.uuid4().hex, uuid.uuid4().hex
    after = [uuid.uuid4().hex for _ in range(50)]
    producer = await raw_producer(kafka_bootstrap)
    try:
        await producer.send(names.main, event("sleep", {"seconds": 0, "bug": True}, bug))
        await producer.send(
            names.main, event("sleep", {"seconds": 0, "unstorable_result": True}, unstorable)
        )
        for job_id in after:  # same single partition, behind the two bad ones
            await producer.send(names.main, event("echo", {}, job_id))
        await producer.flush()
    finally:
        await producer.stop()
    await wait_terminal(pg_pool, [bug, unstorable, *after], timeout=60)
    rows = {
        r["job_id"]: r
        for r in await pg_pool.fetch("SELECT * FROM jobs WHERE job_id = ANY($1)", [bug, unstorable])
    }
    assert rows[bug]["status"] == "dead_lettered"
    assert rows[bug]["error_class"] == "KeyError"
    assert rows[bug]["executions"] == 2  # retried once (retry_unexpected), then exhausted
    assert rows[unstorable]["status"] == "dead_lettered"
    assert rows[unstorable]["result"] is None
    async with topic_reader(kafka_bootstrap, names.dlq) as dlq:
        await dlq.wait_count(2)
        reasons = {
            d.job_id: d.reason.value
            for d in (DeadLetter.model_validate_json(r.value) for r in dlq.records)
        }
    assert reasons == {bug: "exhausted", unstorable: "unstorable"}
    async with topic_reader(kafka_bootstrap, names.outcomes) as outcomes:
        await outcomes.wait_count(52)
        by_id = {
            o.job_id: o for o in (JobOutcome.model_validate_json(r.value) for r in outcomes.records)
        }
    assert by_id[unstorable].status == "dead_lettered"
    await wait_no_lag(kafka_bootstrap, prefix, names.main)


async def test_copies_of_one_event_run_once(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    """Each event published 3 times back to back: one execution, one terminal row each."""
    names = topic_names(prefix)
    w1 = workers.start()
    w2 = workers.start()
    await asyncio.gather(w1.wait_assigned(), w2.wait_assigned())
    kinds: dict[str, str] = {}
    producer = await raw_producer(kafka_bootstrap)
    try:
        for i in range(500):
            job_id = uuid.uuid4().hex
            kind = ("echo", "retry", "fatal", "slow")[i % 4]
            kinds[job_id] = kind
            payloads: dict[str, dict[str, Any]] = {
                "echo": {},
                "retry": {"seconds": 0, "fail_attempts": 1},
                "fatal": {"seconds": 0, "fatal": True},
                "slow": {"seconds": 0.5},
            }
            payload = payloads[kind]
            value = event("echo" if kind == "echo" else "sleep", payload, job_id)
            for _ in range(3):
                await producer.send(names.main, value, key=job_id.encode())
        await producer.flush()
    finally:
        await producer.stop()
    ids = list(kinds)
    await wait_terminal(pg_pool, ids, timeout=180)
    await wait_no_lag(kafka_bootstrap, prefix, names.main, timeout=90)
    rows = {
        r["job_id"]: r
        for r in await pg_pool.fetch("SELECT * FROM jobs WHERE job_id = ANY($1)", ids)
    }
    assert len(rows) == 500
    expected_runs = {"echo": 1, "retry": 2, "fatal": 1, "slow": 1}
    extra = {
        job_id: rows[job_id]["executions"] - expected_runs[kind]
        for job_id, kind in kinds.items()
        if rows[job_id]["executions"] != expected_runs[kind]
    }
    assert extra == {}, f"{len(extra)} jobs ran more (or less) than once per attempt"
    for job_id, kind in kinds.items():
        want = "dead_lettered" if kind == "fatal" else "succeeded"
        assert rows[job_id]["status"] == want, (kind, dict(rows[job_id]))
    async with topic_reader(kafka_bootstrap, names.dlq) as dlq:
        fatal = [j for j, k in kinds.items() if k == "fatal"]
        await dlq.wait_count(len(fatal))
        await dlq.poll()
        per_job: dict[str, int] = {}
        for d in (DeadLetter.model_validate_json(r.value) for r in dlq.records):
            per_job[d.job_id] = per_job.get(d.job_id, 0) + 1
    assert per_job == dict.fromkeys(fatal, 1)


async def test_a_killed_replicas_claims_are_taken_over_after_the_lease(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    names = topic_names(prefix)
    lease = {"JOBSTREAM_CLAIM_LEASE_S": "3", "JOBSTREAM_CONCURRENCY": "40"}
    victim = workers.start("victim", **lease)
    await victim.wait_assigned()
    ids = [uuid.uuid4().hex for _ in range(60)]
    producer = await raw_producer(kafka_bootstrap)
    try:
        for job_id in ids:
            await producer.send(names.main, event("sleep", {"seconds": 4}, job_id))
        await producer.flush()
    finally:
        await producer.stop()

    async def claims_held() -> int:
        return int(
            await pg_pool.fetchval(
                "SELECT count(*) FROM jobs WHERE job_id = ANY($1) AND status = 'running'"
                " AND worker = 'victim'",
                ids,
            )
        )

    await wait_for(claims_held, timeout=60, what="claims held by the victim")
    victim.kill()  # SIGKILL: its claims stay 'running' until their lease runs out
    heir = workers.start("heir", **lease)
    await heir.wait_assigned()
    await wait_terminal(pg_pool, ids, timeout=120)
    rows = await pg_pool.fetch("SELECT * FROM jobs WHERE job_id = ANY($1)", ids)
    assert {r["status"] for r in rows} == {"succeeded"}
    assert len(rows) == len(ids)
    taken_over = [r for r in rows if r["takeovers"] > 0]
    assert taken_over, "the victim held claims, so the heir must have taken some over"
    assert all(r["worker"] == "heir" for r in taken_over)
    metrics = await heir_metrics(heir.web_port)
    assert metric_total(metrics, "jobstream_claim_takeovers_total") == len(taken_over)
    await wait_no_lag(kafka_bootstrap, prefix, names.main)


async def heir_metrics(port: int) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()


def metric_total(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


async def test_invalid_events_keep_their_id_and_id_less_events_get_a_stable_one(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    names = topic_names(prefix)
    worker = workers.start()
    await worker.wait_assigned()
    invalid_id = uuid.uuid4().hex
    producer = await raw_producer(kafka_bootstrap)
    try:
        await producer.send(
            names.main, json.dumps({"id": invalid_id, "type": 42}).encode(), key=b"k"
        )
        meta = await (
            await producer.send(names.main, json.dumps({"type": "echo"}).encode(), key=b"k2")
        )
        await producer.flush()
    finally:
        await producer.stop()
    id_less = derived_job_id(f"{names.main}:{meta.partition}:{meta.offset}")
    await wait_terminal(pg_pool, [invalid_id, id_less], timeout=60)
    row = await pg_pool.fetchrow("SELECT * FROM jobs WHERE job_id = $1", invalid_id)
    assert row is not None
    assert row["status"] == "dead_lettered"
    assert row["error"].startswith("invalid_schema")
    assert await pg_pool.fetchval("SELECT status FROM jobs WHERE job_id = $1", id_less) == (
        "succeeded"
    )
    async with topic_reader(kafka_bootstrap, names.dlq) as dlq:
        await dlq.wait_count(1)
        assert DeadLetter.model_validate_json(dlq.records[0].value).job_id == invalid_id
    async with topic_reader(kafka_bootstrap, names.outcomes) as outcomes:
        await outcomes.wait_count(2)
        got = {JobOutcome.model_validate_json(r.value).job_id for r in outcomes.records}
    assert got == {invalid_id, id_less}
    code, out = await workers.cli("status", invalid_id)
    assert code == 0
    assert "dead_lettered" in out
    code, out = await workers.cli("dlq", "show", invalid_id)
    assert code == 0
    assert invalid_id in out


async def test_a_dead_letter_too_large_for_its_topic_keeps_a_prefix_size_and_digest(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    """A DLQ topic created by someone else with the broker's default limit (about 1 MB):
    a 0.9 MB input would be 1.2 MB base64-encoded; the letter keeps what fits."""
    names = topic_names(prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(names.dlq, 1, 1)])
    finally:
        await admin.close()
    worker = workers.start()
    await worker.wait_assigned()
    value = os.urandom(int(0.9 * MB))
    producer = await raw_producer(kafka_bootstrap)
    try:
        await (await producer.send(names.main, value, key=b"huge"))
    finally:
        await producer.stop()
    async with topic_reader(kafka_bootstrap, names.dlq) as dlq:
        await dlq.wait_count(1, timeout=60)
        dl = DeadLetter.model_validate_json(dlq.records[0].value)
        assert len(dlq.records[0].value) <= 1_048_588
    assert dl.original_truncated
    assert dl.original_bytes() is None
    assert dl.original_size == len(value)
    assert dl.original_sha256 == hashlib.sha256(value).hexdigest()
    assert value.startswith(dl.original_prefix() or b"X")
    assert len(dl.original_prefix() or b"") > 0
    await wait_no_lag(kafka_bootstrap, prefix, names.main)


async def test_the_producer_recovers_after_the_broker_refuses_a_record(
    kafka_bootstrap: str, prefix: str
) -> None:
    """A topic limit lowered after the publisher read it: the broker refuses one record, the
    publisher replaces its producer, and 1,000 later sends to that partition succeed."""
    topic = f"{prefix}.sizes"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    publisher = Publisher(kafka_bootstrap)
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
        await publisher.start()
        await wait_for(lambda: publisher.load_limits([topic]), timeout=30, what="the topic's limit")
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": "10000"})]
        )

        async def lowered() -> bool:
            limits = await topic_limits(kafka_bootstrap, [topic])
            return limits.get(topic) == 10000

        await wait_for(lowered, timeout=30, what="the lowered limit")
        with pytest.raises(RecordTooLargeError):
            await publisher.send_and_wait(topic, os.urandom(50_000), key=b"same")
        assert publisher.resets >= 1  # a fresh producer, sized for the lowered limit
        assert publisher.limit(topic) == 10000  # re-read after the refusal
        futures = [await publisher.send(topic, b"x" * 100, key=b"same") for _ in range(1000)]
        done = await asyncio.wait_for(asyncio.gather(*futures), 60)
        assert len(done) == 1000
        assert {m.partition for m in done} == {0}
    finally:
        await publisher.stop()
        await admin.close()


async def ready_state(port: int) -> tuple[int, dict[str, Any]]:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/ready") as r:
        return r.status, await r.json()


async def test_a_broker_that_cannot_acknowledge_is_reported_and_jobs_finish_after(
    database_url: str, pg_pool: asyncpg.Pool, prefix: str, tmp_path: Path
) -> None:
    """Kafka accepts connections but acknowledges no write (aiokafka retries such a send
    forever): the stuck step is reported within its deadline, /ready says degraded, and
    every job finishes once writes are acknowledged again."""
    names = topic_names(prefix)
    async with broker_behind_blackhole(tmp_path / "kafka") as (bootstrap, proxy):
        workers = WorkerFactory(bootstrap=bootstrap, dsn=database_url, prefix=prefix, tmp=tmp_path)
        try:
            worker = workers.start(
                JOBSTREAM_DURABLE_STEP_TIMEOUT_S="2", JOBSTREAM_DURABLE_STEP_DEADLINE_S="4"
            )
            await worker.wait_assigned()
            # fewer jobs than concurrency slots: all of them run before writes stop
            ids = [uuid.uuid4().hex for _ in range(20)]
            producer = await raw_producer(bootstrap)
            try:
                for job_id in ids:
                    await producer.send(names.main, event("sleep", {"seconds": 1}, job_id))
                await producer.flush()
            finally:
                await producer.stop()
            proxy.block_writes()  # the jobs are running: their outcomes will find no ack

            async def degraded() -> dict[str, Any] | None:
                status, body = await ready_state(worker.web_port)
                stuck = body.get("degraded", {})
                return body if status == 503 and "outcome" in stuck else None

            body = await wait_for(degraded, timeout=30, interval=0.5, what="/ready degraded")
            assert body is not None
            assert body["ready"] is False
            assert body["in_flight"] > 0
            assert proxy.silenced > 0
            metrics = await heir_metrics(worker.web_port)
            assert metric_total(metrics, "jobstream_durable_steps_stuck") > 0
            assert metric_total(metrics, "jobstream_durable_step_outages_total") >= 1
            # reported once per outage, not once per try
            assert worker.log_text().count("outcome step failing") == 1
            await wait_terminal(pg_pool, ids, timeout=60)  # rows are durable meanwhile

            proxy.unblock_writes()
            async with topic_reader(bootstrap, names.outcomes) as outcomes:
                await outcomes.wait_count(len(ids), timeout=90)
                got = {JobOutcome.model_validate_json(r.value).job_id for r in outcomes.records}
            assert got == set(ids)

            async def ready_again() -> bool:
                status, _ = await ready_state(worker.web_port)
                return status == 200

            await wait_for(ready_again, timeout=60, what="/ready 200 once writes are acknowledged")
            await wait_no_lag(bootstrap, prefix, names.main, timeout=90)
            assert "outcome step recovered" in worker.log_text()
        finally:
            workers.close()


async def test_a_job_whose_claim_keeps_expiring_is_dead_lettered_as_stalled(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    """Its executions died four times already (a stale claim with takeovers = 4): the fifth
    takeover reaches max_attempts (5) and ends it on the dead-letter route, unrun."""
    names = topic_names(prefix)
    job_id = uuid.uuid4().hex
    await pg_pool.execute(
        "INSERT INTO jobs (job_id, type, status, attempt, worker, claim_token, lease_until,"
        " takeovers, executions) VALUES ($1, 'echo', 'running', 1, 'gone', 'dead-token',"
        " now() - interval '1 minute', 4, 0)",
        job_id,
    )
    worker = workers.start()
    await worker.wait_assigned()
    producer = await raw_producer(kafka_bootstrap)
    try:
        await (await producer.send(names.main, event("echo", {}, job_id)))
    finally:
        await producer.stop()
    await wait_terminal(pg_pool, [job_id], timeout=60)
    row = await pg_pool.fetchrow("SELECT * FROM jobs WHERE job_id = $1", job_id)
    assert row is not None
    assert (row["status"], row["takeovers"], row["result"]) == ("dead_lettered", 5, None)
    async with topic_reader(kafka_bootstrap, names.dlq) as dlq:
        await dlq.wait_count(1)
        assert DeadLetter.model_validate_json(dlq.records[0].value).reason.value == "stalled"
    metrics = await heir_metrics(worker.web_port)
    assert metric_total(metrics, "jobstream_claim_takeovers_total") == 1


async def test_no_payload_reaches_the_worker_log_even_at_debug(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    names = topic_names(prefix)
    marker = f"PAYLOAD-MARKER-{uuid.uuid4().hex}"
    worker = workers.start(JOBSTREAM_LOG_LEVEL="DEBUG")
    await worker.wait_assigned()
    ids = [uuid.uuid4().hex for _ in range(3)]
    producer = await raw_producer(kafka_bootstrap)
    try:
        await producer.send(names.main, event("echo", {"secret": marker}, ids[0]))
        await producer.send(names.main, event("sleep", {"fatal": True, "note": marker}, ids[1]))
        await producer.send(names.main, event("nope", {"x": marker}, ids[2]))
        await producer.flush()
    finally:
        await producer.stop()
    await wait_terminal(pg_pool, ids, timeout=60)
    worker.stop()
    text = worker.log_text()
    assert "DEBUG" in text  # the level took effect
    assert marker not in text
