"""The DLQ tool against the real Kafka and PostgreSQL, driven through its CLI in-process.

Every test has its own topic prefix, so its dead-letter ids (source coordinates) and audit
rows are its own too. Dead letters are produced straight to ``<prefix>.dlq``, built with the
model, and what the tool republishes is read back from ``<prefix>`` with a plain consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord, TopicPartition

from jobstream.models.deadletter import REPLAY_HEADER, DeadLetter, DeadLetterReason, b64
from jobstream.models.job import FailureRecord, JobEvent
from jobstream.streams.dlq.cli import parse_args, run_dlq_async
from jobstream.streams.dlq.snapshot import read_snapshot
from jobstream.streams.settings import Settings
from tests.integration.harness import wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 3
T0 = datetime.now(UTC) - timedelta(days=3)


@dataclass
class Env:
    prefix: str
    bootstrap: str
    dsn: str

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "kafka_bootstrap": self.bootstrap,
            "database_url": self.dsn,
            "topic_prefix": self.prefix,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]


async def _create_topics(bootstrap: str, names: Sequence[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
        await _wait_topics(admin, lambda existing: set(names) <= existing)
    finally:
        await admin.close()


async def _wait_topics(admin: AIOKafkaAdminClient, ready: Callable[[set[str]], bool]) -> None:
    async def agrees() -> bool:  # polling the metadata until it agrees
        return ready(set(await admin.list_topics()))

    await wait_for(agrees, timeout=10, interval=0.05, what="topic metadata to settle")


async def _delete_topics(bootstrap: str, names: Sequence[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(Exception):
            await admin.delete_topics(list(names))
    finally:
        await admin.close()


@pytest.fixture
async def env(kafka_bootstrap: str, database_url: str, prefix: str) -> AsyncIterator[Env]:
    topics = [prefix, f"{prefix}.dlq"]
    await _create_topics(kafka_bootstrap, topics)
    yield Env(prefix, kafka_bootstrap, database_url)
    await _delete_topics(kafka_bootstrap, topics)
    conn = await asyncpg.connect(database_url)
    try:
        if await conn.fetchval("SELECT to_regclass('dlq_replays') IS NOT NULL"):
            like = f"{prefix}:%"
            await conn.execute("DELETE FROM dlq_replays WHERE dead_letter_id LIKE $1", like)
            await conn.execute("DELETE FROM dlq_replay_log WHERE dead_letter_id LIKE $1", like)
    finally:
        await conn.close()


def make_dl(
    env: Env,
    n: int,
    *,
    job_type: str = "email",
    reason: DeadLetterReason = DeadLetterReason.EXHAUSTED,
    error_class: str = "models.errors.RetryableError",
    at: datetime | None = None,
    value: bytes | None = None,
    attempt: int = 5,
) -> DeadLetter:
    """A dead letter of job ``job-<n>`` whose original was offset ``n`` of the main topic."""
    at = at or T0 + timedelta(seconds=n)
    history = [
        FailureRecord(attempt=a, error_class=error_class, message=f"fail {a}", at=at)
        for a in range(1, attempt)
    ]
    event = JobEvent(
        id=f"job-{n}",
        type=job_type,
        payload={"n": n, "to": "a@example.com"},
        attempt=attempt,
        not_before=at,
        history=history,
    )
    raw = value if value is not None else event.to_bytes()
    return DeadLetter(
        id=DeadLetter.coordinates(env.prefix, n % PARTITIONS, n),
        job_id=f"job-{n}",
        job_type=job_type if value is None else None,
        reason=reason,
        error_class=error_class,
        error_message=f"boom {n}",
        traceback="Traceback (most recent call last):\n  File x\nRetryableError: boom",
        attempt=attempt,
        history=history,
        source_topic=env.prefix,
        source_partition=n % PARTITIONS,
        source_offset=n,
        first_failure_at=at,
        last_failure_at=at,
        original_key=b64(f"key-{n}".encode()),
        original_value=b64(raw),
        original_headers=[("traceparent", b64(b"00-abc-01")), ("nullable", None)],
    )


async def produce(env: Env, records: Sequence[DeadLetter | bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(
                env.dlq,
                value=r.to_bytes() if isinstance(r, DeadLetter) else r,
                key=r.job_id.encode() if isinstance(r, DeadLetter) else None,
            )
            for r in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_main(env: Env) -> list[ConsumerRecord]:
    """Everything on the main topic now: bounded by its end offsets, like the tool itself."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=env.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(env.prefix, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        out: list[ConsumerRecord] = []
        while True:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                return out
            for recs in (await consumer.getmany(timeout_ms=1000)).values():
                out.extend(recs)
    finally:
        await consumer.stop()


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


async def dlq(
    env: Env, capsys: pytest.CaptureFixture[str], *argv: str, settings: Settings | None = None
) -> Result:
    """Run ``jobstream dlq <argv>`` through the parser the project CLI mounts."""
    args = parse_args(argv)
    capsys.readouterr()
    code = await run_dlq_async(args, settings or env.settings())
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def ids(result: Result) -> list[str]:
    doc = result.json()
    assert isinstance(doc, list)
    return [d["id"] for d in doc]


# --- list, stats, show ----------------------------------------------------------------------


async def test_list_each_filter(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    dls = [
        make_dl(env, 0, job_type="email"),
        make_dl(env, 1, job_type="sms", reason=DeadLetterReason.FATAL_ERROR,
                error_class="models.errors.FatalError"),
        make_dl(env, 2, job_type="email", at=datetime.now(UTC) - timedelta(minutes=5)),
        make_dl(env, 3, job_type="webhook", reason=DeadLetterReason.UNKNOWN_TYPE),
        make_dl(env, 4, value=b"\xff\xfe not utf-8", reason=DeadLetterReason.INVALID_BYTES,
                error_class="models.errors.InvalidJobError"),
    ]  # fmt: skip
    await produce(env, dls)
    i = [d.id for d in dls]

    everything = await dlq(env, capsys, "list", "--json")
    assert everything.code == 0
    assert set(ids(everything)) == set(i)
    assert ids(await dlq(env, capsys, "list", "--json", "--type", "email")) == [i[0], i[2]]
    assert ids(await dlq(env, capsys, "list", "--json", "--type", "sms,webhook")) == [i[1], i[3]]
    reasons = await dlq(env, capsys, "list", "--json", "--reason", "fatal_error,unknown_type")
    assert ids(reasons) == [i[1], i[3]]
    assert ids(await dlq(env, capsys, "list", "--json", "--error-class", "FatalError")) == [i[1]]
    # dl 2 failed 5 minutes ago, the others three days ago
    assert ids(await dlq(env, capsys, "list", "--json", "--since", "1h")) == [i[2]]
    assert i[2] not in ids(await dlq(env, capsys, "list", "--json", "--until", "1h"))
    until = (T0 + timedelta(seconds=1)).isoformat()
    assert ids(await dlq(env, capsys, "list", "--json", "--until", until)) == [i[0]]
    assert ids(await dlq(env, capsys, "list", "--json", "--key", "key-3")) == [i[3]]
    assert ids(await dlq(env, capsys, "list", "--json", "--key", "job-1,job-4")) == [i[1], i[4]]
    assert len(ids(await dlq(env, capsys, "list", "--json", "--limit", "2"))) == 2

    table = await dlq(env, capsys, "list", "--type", "email")
    assert table.code == 0
    assert table.out.splitlines()[0].split()[:3] == ["ID", "JOB", "ID"]
    assert i[0] in table.out
    assert "boom 0" in table.out
    assert "2 of 2 matching" in table.out


async def test_stats_groups_by_reason_type_error_class(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    dls = [make_dl(env, n) for n in range(3)]
    dls += [make_dl(env, 3, reason=DeadLetterReason.FATAL_ERROR, error_class="X.FatalError")]
    dls += [make_dl(env, 4, job_type="sms")]
    await produce(env, dls)

    res = await dlq(env, capsys, "stats", "--json")
    assert res.code == 0
    doc = res.json()
    assert isinstance(doc, dict)
    assert doc["matched"] == 5
    assert doc["groups"][0] == {
        "reason": "exhausted", "type": "email",
        "error_class": "models.errors.RetryableError", "count": 3,
    }  # fmt: skip
    assert {(g["reason"], g["type"], g["count"]) for g in doc["groups"][1:]} == {
        ("fatal_error", "email", 1),
        ("exhausted", "sms", 1),
    }
    filtered = (await dlq(env, capsys, "stats", "--json", "--type", "sms")).json()
    assert isinstance(filtered, dict)
    assert filtered["matched"] == 1

    table = await dlq(env, capsys, "stats")
    lines = table.out.splitlines()
    assert lines[0].split() == ["REASON", "TYPE", "ERROR", "CLASS", "COUNT"]
    assert lines[1].split() == ["exhausted", "email", "models.errors.RetryableError", "3"]
    assert lines[-1].split() == ["total", "5"]


async def test_show_by_dead_letter_id_and_job_id(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    good = make_dl(env, 0)
    bad = make_dl(env, 1, value=b"\x00\x01binary", reason=DeadLetterReason.INVALID_BYTES)
    await produce(env, [good, bad])

    res = await dlq(env, capsys, "show", good.id)
    assert res.code == 0
    assert f"id:            {good.id}" in res.out
    assert "original value (JSON):" in res.out
    assert '"to": "a@example.com"' in res.out
    assert "traceparent: 00-abc-01" in res.out
    assert "nullable: (null)" in res.out
    assert "RetryableError: boom" in res.out  # traceback
    assert "#4 " in res.out
    assert "fail 4" in res.out
    assert "original key:  key-0" in res.out

    by_job = await dlq(env, capsys, "show", "job-1")
    assert by_job.code == 0
    assert f"original value (base64): {bad.original_value}" in by_job.out

    as_json = (await dlq(env, capsys, "show", "--json", good.id)).json()
    assert isinstance(as_json, list)
    assert as_json[0]["original_value_decoded"]["payload"] == {"n": 0, "to": "a@example.com"}

    missing = await dlq(env, capsys, "show", "job-999")
    assert missing.code == 1
    assert "no dead letters match" in missing.err


async def test_unreadable_dlq_records_are_reported_and_skipped(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    await produce(env, [b"not json", b'{"id": "half a dead letter"}', make_dl(env, 0)])
    res = await dlq(env, capsys, "list", "--json")
    assert res.code == 0
    assert ids(res) == [make_dl(env, 0).id]
    assert res.err.count("warning: skipped") == 2


# --- replay ---------------------------------------------------------------------------------


async def audit_rows(env: Env) -> dict[str, asyncpg.Record]:
    conn = await asyncpg.connect(env.dsn)
    try:
        if not await conn.fetchval("SELECT to_regclass('dlq_replays') IS NOT NULL"):
            return {}  # a dry run does not create the schema
        rows = await conn.fetch(
            "SELECT * FROM dlq_replays WHERE dead_letter_id LIKE $1", f"{env.prefix}:%"
        )
        return {r["dead_letter_id"]: r for r in rows}
    finally:
        await conn.close()


async def test_dry_run_publishes_nothing(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    await produce(env, [make_dl(env, n) for n in range(3)])
    res = await dlq(env, capsys, "replay", "--dry-run")
    assert res.code == 0
    assert "dry run: would replay 3, skipped-already-replayed 0, skipped-invalid 0" in res.out
    assert await read_main(env) == []
    assert await audit_rows(env) == {}


async def test_replay_republishes_original_event_with_header(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    dls = [make_dl(env, n, attempt=4) for n in range(3)]
    await produce(env, dls)

    res = await dlq(env, capsys, "replay", "--reset-attempts", "--key", "job-0,job-1")
    assert res.code == 0, res.err
    assert "replayed 2, skipped-already-replayed 0, skipped-invalid 0, failed 0" in res.out

    out = {r.key: r for r in await read_main(env)}
    assert set(out) == {b"key-0", b"key-1"}
    rec = out[b"key-0"]
    headers = dict(rec.headers)
    assert headers[REPLAY_HEADER] == dls[0].id.encode()
    assert headers["traceparent"] == b"00-abc-01"
    assert headers["nullable"] is None
    event = JobEvent.model_validate_json(rec.value)
    original = JobEvent.model_validate_json(dls[0].original_bytes() or b"")
    assert event.attempt == 1
    assert event.not_before is None
    assert event.history == original.history
    assert len(event.history) == 3
    assert event.model_copy(update={"attempt": 4, "not_before": original.not_before}) == original

    rows = await audit_rows(env)
    assert set(rows) == {dls[0].id, dls[1].id}
    row = rows[dls[0].id]
    assert row["replay_count"] == 1
    assert row["job_id"] == "job-0"
    assert row["reset_attempts"]
    assert not row["forced"]
    assert "@" in row["last_replayed_by"]
    assert row["target_topic"] == env.prefix

    # without --reset-attempts the attempt is kept
    res = await dlq(env, capsys, "replay", "--key", "job-2")
    assert res.code == 0
    kept = [r for r in await read_main(env) if r.key == b"key-2"]
    assert JobEvent.model_validate_json(kept[0].value).attempt == 4


async def test_replay_twice_publishes_once_unless_forced(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    dls = [make_dl(env, n) for n in range(2)]
    await produce(env, dls)

    assert (await dlq(env, capsys, "replay")).code == 0
    again = await dlq(env, capsys, "replay")
    assert again.code == 0
    assert "replayed 0, skipped-already-replayed 2" in again.out
    assert len(await read_main(env)) == 2
    dry = await dlq(env, capsys, "replay", "--dry-run")
    assert "would replay 0, skipped-already-replayed 2" in dry.out

    forced = await dlq(env, capsys, "replay", "--force", "--json")
    assert forced.code == 0
    assert forced.json() == {
        "replayed": 2, "skipped_already_replayed": 0, "skipped_invalid": 0, "failed": 0,
    }  # fmt: skip
    assert len(await read_main(env)) == 4
    rows = await audit_rows(env)
    assert {r["replay_count"] for r in rows.values()} == {2}
    assert all(r["forced"] for r in rows.values())
    conn = await asyncpg.connect(env.dsn)
    try:
        log = await conn.fetchval(
            "SELECT count(*) FROM dlq_replay_log WHERE dead_letter_id LIKE $1", f"{env.prefix}:%"
        )
    finally:
        await conn.close()
    assert log == 4


async def test_concurrent_replays_publish_each_dead_letter_once(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    await produce(env, [make_dl(env, n) for n in range(10)])
    args = parse_args(["replay", "--rate", "0"])
    codes = await asyncio.gather(*(run_dlq_async(args, env.settings()) for _ in range(2)))
    assert codes == [0, 0]
    assert sorted(r.key for r in await read_main(env)) == sorted(
        f"key-{n}".encode() for n in range(10)
    )


async def test_limit_replays_oldest_first(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    dls = [make_dl(env, n) for n in range(5)]
    await produce(env, list(reversed(dls)))
    res = await dlq(env, capsys, "replay", "--limit", "2")
    assert res.code == 0
    assert "replayed 2," in res.out
    assert sorted(r.key for r in await read_main(env)) == [b"key-0", b"key-1"]
    res = await dlq(env, capsys, "replay", "--limit", "2")
    assert "replayed 2, skipped-already-replayed 2" in res.out
    assert len(await read_main(env)) == 4


async def test_invalid_originals_skipped_unless_included(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = make_dl(env, 0, value=b"{not json", reason=DeadLetterReason.INVALID_JSON)
    await produce(env, [bad, make_dl(env, 1)])
    res = await dlq(env, capsys, "replay", "--reset-attempts")
    assert res.code == 0
    assert "replayed 1, skipped-already-replayed 0, skipped-invalid 1, failed 0" in res.out
    assert [r.key for r in await read_main(env)] == [b"key-1"]

    res = await dlq(env, capsys, "replay", "--include-invalid", "--reset-attempts")
    assert "replayed 1, skipped-already-replayed 1, skipped-invalid 0" in res.out
    raw = [r for r in await read_main(env) if r.key == b"key-0"]
    assert raw[0].value == b"{not json"
    assert dict(raw[0].headers)[REPLAY_HEADER] == bad.id.encode()
    assert not (await audit_rows(env))[bad.id]["reset_attempts"]


async def test_rate_paces_the_publishes(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    await produce(env, [make_dl(env, n) for n in range(6)])
    started = time.monotonic()
    res = await dlq(env, capsys, "replay", "--rate", "20")
    assert res.code == 0
    assert "replayed 6," in res.out
    assert time.monotonic() - started >= 5 / 20  # 6 sends are 5 intervals of 1/20 s apart


# --- the bounded snapshot -------------------------------------------------------------------


async def test_snapshot_ignores_dead_letters_added_after_its_bounds(env: Env) -> None:
    present = [make_dl(env, n) for n in range(6)]
    await produce(env, present)
    late = [make_dl(env, n) for n in range(100, 130)]

    async def add_more(_ends: dict[int, int]) -> None:
        await produce(env, late)  # delivered before the tool reads a single record

    snap = await read_snapshot(env.bootstrap, env.dlq, lambda _dl: True, on_bounds=add_more)
    assert sorted(d.id for d in snap.matched) == sorted(d.id for d in present)
    assert sum(snap.end_offsets.values()) == len(present)


async def test_replay_terminates_while_dead_letters_keep_arriving(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    present = [make_dl(env, n) for n in range(20)]
    await produce(env, present)
    produced: list[DeadLetter] = []
    delivered = asyncio.Event()
    stop = asyncio.Event()

    async def keep_producing() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap, acks="all")
        await producer.start()
        try:
            n = 1000
            while not stop.is_set():
                dl = make_dl(env, n)
                # one partition, one send at a time: the snapshot must then hold a prefix
                await producer.send_and_wait(env.dlq, dl.to_bytes(), partition=0)
                produced.append(dl)
                delivered.set()
                n += 1
        finally:
            await producer.stop()

    background = asyncio.create_task(keep_producing())
    try:
        await delivered.wait()
        res = await asyncio.wait_for(dlq(env, capsys, "replay", "--rate", "0", "--json"), 60)
        delivered.clear()
        await delivered.wait()  # the producer outlived the tool
    finally:
        stop.set()
        await background
    assert res.code == 0, res.err
    summary = res.json()
    assert isinstance(summary, dict)
    replayed = {r.key for r in await read_main(env)}
    assert {f"key-{n}".encode() for n in range(20)} <= replayed
    assert len(replayed) == summary["replayed"] < len(present) + len(produced)
    # only a prefix of the late ones: those already in the topic when the tool started
    late = sorted(n for n in (int(k.split(b"-")[1]) for k in replayed) if n >= 1000)
    assert late == list(range(1000, 1000 + len(late)))


async def test_empty_and_missing_dlq_topics(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    empty = await dlq(env, capsys, "list")
    assert empty.code == 1
    assert "no dead letters match" in empty.err
    assert "0 scanned" in empty.err
    assert (await dlq(env, capsys, "replay")).code == 1

    missing = await dlq(env, capsys, "stats", "--prefix", f"{env.prefix}-nope")
    assert missing.code == 2
    assert f"'{env.prefix}-nope.dlq' does not exist" in missing.err


# --- exit codes -----------------------------------------------------------------------------


async def test_no_matches_exit_1(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    await produce(env, [make_dl(env, 0)])
    for cmd in ("list", "stats", "replay"):
        res = await dlq(env, capsys, cmd, "--type", "nothing-like-this")
        assert res.code == 1
        assert "no dead letters match" in res.err
    assert await read_main(env) == []


async def test_bad_since_exit_2(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    res = await dlq(env, capsys, "replay", "--since", "last week")
    assert res.code == 2
    assert "--since" not in res.out
    assert "relative age" in res.err


async def test_unreachable_broker_exit_3_quickly(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    res = await dlq(env, capsys, "list", settings=env.settings(kafka_bootstrap="127.0.0.1:1"))
    assert res.code == 3
    assert "Kafka at 127.0.0.1:1 is unreachable" in res.err
    assert "Traceback" not in res.err
    assert time.monotonic() - started < 10


async def test_unreachable_database_exit_3(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    await produce(env, [make_dl(env, 0)])
    dsn = "postgresql://postgres:hunter2@127.0.0.1:1/jobstream"
    res = await dlq(env, capsys, "replay", settings=env.settings(database_url=dsn))
    assert res.code == 3
    assert "PostgreSQL at postgresql://postgres:***@127.0.0.1:1" in res.err
    assert "hunter2" not in res.err
    assert await read_main(env) == []


async def test_main_as_a_process_exit_3_without_traceback(env: Env) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jobstream.streams.dlq.cli", "stats",
        env={**os.environ, "JOBSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:1"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 3
    assert err.decode().strip().startswith("error: Kafka at 127.0.0.1:1 is unreachable")
    assert "Traceback" not in err.decode()
    assert out == b""


async def test_partial_failure_exit_4_and_the_failed_one_stays_replayable(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    # an original bigger than the main topic accepts: the DLQ topic is made to hold it
    admin = AIOKafkaAdminClient(bootstrap_servers=env.bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([env.dlq])
        await _wait_topics(admin, lambda names: env.dlq not in names)
        big_dlq = NewTopic(env.dlq, PARTITIONS, 1, topic_configs={"max.message.bytes": "8000000"})
        await admin.create_topics([big_dlq])
        await _wait_topics(admin, lambda names: env.dlq in names)
    finally:
        await admin.close()
    big = make_dl(env, 2, value=b"x" * 2_000_000, reason=DeadLetterReason.OVERSIZE)
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap, max_request_size=8_000_000)
    await producer.start()
    try:
        await producer.send_and_wait(env.dlq, big.to_bytes())
    finally:
        await producer.stop()
    # same key, same partition, replayed before and after it: the failure must not break
    # the idempotent producer's sequence for the sends that follow
    same_key = {"original_key": big.original_key}
    await produce(env, [make_dl(env, n).model_copy(update=same_key) for n in (1, 3, 4)])

    res = await dlq(env, capsys, "replay", "--include-invalid")
    assert res.code == 4
    assert "replayed 3, skipped-already-replayed 0, skipped-invalid 0, failed 1" in res.out
    assert f"failed {big.id}" in res.err
    assert big.id not in await audit_rows(env)
    replayed = await read_main(env)
    assert sorted(JobEvent.model_validate_json(r.value).id for r in replayed) == [
        "job-1", "job-3", "job-4",
    ]  # fmt: skip
    again = await dlq(env, capsys, "replay", "--include-invalid")
    assert again.code == 4
    assert "replayed 0, skipped-already-replayed 3" in again.out
