"""Property: whatever lands on the input topic ends exactly once, and the worker stays up.

Hypothesis generates arbitrary bytes, arbitrary JSON values and JSON objects that look almost
like a ``JobEvent``; all of them are thrown at ONE running worker (started once per test, not
per example). Every published record must then end as either

* an undecodable input: a dead_lettered ``jobs`` row under the ``id`` it carries when that can be
  read, else ``invalid:<topic>:<p>:<o>``, exactly one dead letter whose ``id`` is
  ``<topic>:<p>:<o>``, and one outcome, or
* a decoded job: exactly one terminal row for its job id, exactly one outcome, and (when it was
  dead-lettered) exactly one dead letter,

and the counts must add up. The local ``decode_event`` is the oracle for which records decode.

Regression guard: inputs that Python's ``json`` reads but PostgreSQL cannot store (a NUL
character in a string or key, ``NaN`` / ``Infinity``) once made the row write fail forever, stuck
the partition and, through a dead-letter step retried as a whole, published duplicate dead
letters. They are now refused at decoding (reason ``invalid_json``); the explicit ``@example``
inputs below keep them in every run.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from jobstream.agents.decode import decode_event, readable_id
from jobstream.models.deadletter import DeadLetter, DeadLetterReason
from jobstream.models.errors import InvalidJobError
from jobstream.models.job import JobOutcome
from jobstream.streams.producer.client import JobClient
from jobstream.streams.topics import topic_names
from tests.integration.harness import (
    WorkerFactory,
    settled,
    topic_reader,
    wait_for,
    wait_terminal,
)

MAX_EVENT_BYTES = 4096
JOB_TYPES = ["echo", "sleep", "unknown", ""]
EXAMPLES = 200
# Bounded work per job even when hypothesis asks a sleep job for an hour: every attempt is cut
# at the default timeout, and a failing job gets at most two attempts (tier 1 s in between).
WORKER_ENV = {
    "JOBSTREAM_MAX_EVENT_BYTES": str(MAX_EVENT_BYTES),
    "JOBSTREAM_DEFAULT_TIMEOUT_S": "2",
    "JOBSTREAM_MAX_ATTEMPTS": "2",
    "JOBSTREAM_CONCURRENCY": "50",
}

# -- strategies ---------------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Arbitrary JSON never carries a "type" or an "id": a by-chance valid job, or an invalid one whose
# hypothesis-made id can be read, could collide with another input's id (or another test's row).
arbitrary_json = json_values.filter(
    lambda v: not (isinstance(v, dict) and ("type" in v or "id" in v))
)

sleep_like_payloads = st.fixed_dictionaries(
    {},
    optional={
        "seconds": st.one_of(
            st.floats(0, 0.3), st.integers(-3, 5000), st.floats(), st.text(max_size=3)
        ),
        "fail_attempts": st.one_of(st.integers(-1, 3), st.booleans(), st.text(max_size=2)),
        "fatal": st.one_of(st.booleans(), st.integers(0, 2), st.text(max_size=3)),
    },
)
payloads = st.one_of(
    sleep_like_payloads,
    sleep_like_payloads,
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    json_values,
)
# An id is made unique per input in the test body ("unique"), left out ("none"), or a value
# the schema refuses (so the record is undecodable and keyed by its coordinates).
id_modes = st.one_of(
    st.just("unique"),
    st.just("none"),
    st.sampled_from(["", 7, None, "x" * 201, ["id"]]).map(lambda bad: ("bad", bad)),
)
# near misses: every field may be off
job_like = st.fixed_dictionaries(
    {"type": st.sampled_from(JOB_TYPES), "_id": id_modes},
    optional={
        "v": st.one_of(st.integers(-1, 3), st.booleans(), st.none(), st.floats()),
        "payload": payloads,
        "attempt": st.one_of(st.integers(-1, 3), st.none(), st.text(max_size=2)),
    },
)
# well-formed events (the payload may still be refused by its handler)
well_formed_jobs = st.fixed_dictionaries(
    {
        "type": st.sampled_from(JOB_TYPES[:3]),
        "_id": st.sampled_from(["unique", "none"]),
        "payload": payloads.filter(lambda p: isinstance(p, dict)),
    },
    optional={"v": st.just(1), "attempt": st.integers(1, 3)},
)


@dataclass(frozen=True)
class Input:
    kind: str  # "bytes" | "json" | "job"
    value: bytes | None


@dataclass(frozen=True)
class JobLike:
    fields: dict[str, Any]
    ascii_only: bool


def _encode(obj: Any, ascii_only: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


inputs = st.one_of(
    st.binary(max_size=300).map(lambda b: Input("bytes", b)),
    st.just(Input("bytes", None)),  # a tombstone
    st.integers(MAX_EVENT_BYTES + 1, MAX_EVENT_BYTES + 2000).map(  # oversize
        lambda n: Input("bytes", b'{"type": "echo", "payload": {"x": "' + b"y" * n + b'"}}')
    ),
    st.tuples(arbitrary_json, st.booleans()).map(lambda t: Input("json", _encode(*t))),
    st.builds(JobLike, job_like, st.booleans()),
    st.builds(JobLike, well_formed_jobs, st.booleans()),
    st.builds(JobLike, well_formed_jobs, st.booleans()),  # twice: many inputs should run
)


def generate_inputs(prefix: str) -> list[Input]:
    """Run hypothesis for EXAMPLES examples and collect them (the worker is started once)."""
    collected: list[Input] = []
    counter = itertools.count()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(inputs)
    # Always included (see the module docstring): a NUL in a string of the payload / of an
    # unknown key, and NaN / -Infinity numbers, which Python's json accepts but PostgreSQL's
    # jsonb and text columns refuse.
    @example(JobLike({"type": "echo", "_id": "unique", "payload": {"nul": "a\x00b"}}, True))
    @example(JobLike({"type": "echo", "_id": "unique", "payload": {"x": float("nan")}}, True))
    @example(JobLike({"type": "echo", "_id": "unique", "payload": {"x": -math.inf}}, False))
    @example(JobLike({"type": "sleep", "_id": "unique", "payload": {"k\x00": 1}}, True))
    @example(Input("json", b'{"type": "echo", "k\\u0000": 1}'))
    def collect(item: Input | JobLike) -> None:
        if isinstance(item, Input):
            collected.append(item)
            return
        obj = dict(item.fields)
        mode = obj.pop("_id")
        if mode == "unique":
            obj["id"] = f"{prefix}-{next(counter)}"
        elif mode != "none":
            obj["id"] = mode[1]
        collected.append(Input("job", _encode(obj, item.ascii_only)))

    collect()
    return collected


# -- the oracle ---------------------------------------------------------------------------------


@dataclass
class Published:
    index: int
    input: Input
    partition: int
    offset: int
    topic: str
    reason: DeadLetterReason | None = None  # set when undecodable
    invalid_id: str | None = None  # set when undecodable: the id its row and letter carry
    job_id: str | None = None  # set when it decodes with an explicit id
    anonymous: bool = False  # decodes, but the worker makes up its id

    @property
    def coordinates(self) -> str:
        return DeadLetter.coordinates(self.topic, self.partition, self.offset)

    def describe(self) -> str:
        value = self.input.value
        shown = None if value is None else value[:200]
        return f"#{self.index} {self.coordinates} {self.input.kind} {shown!r}"


def classify(pub: Published) -> None:
    try:
        job = decode_event(pub.input.value, max_bytes=MAX_EVENT_BYTES)
    except InvalidJobError as exc:
        pub.reason = DeadLetterReason(exc.reason)
        assert pub.reason.undecodable, pub.describe()
        readable = None
        if pub.reason is not DeadLetterReason.OVERSIZE:
            readable = readable_id(pub.input.value, max_bytes=MAX_EVENT_BYTES)
        pub.invalid_id = readable or f"invalid:{pub.coordinates}"
        return
    data = json.loads(pub.input.value or b"")
    if "id" in data:
        pub.job_id = job.id
    else:
        pub.anonymous = True


# -- the test -----------------------------------------------------------------------------------


async def test_arbitrary_inputs_each_end_exactly_once_and_the_worker_stays_up(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    generated = generate_inputs(prefix)
    assert len(generated) >= EXAMPLES * 0.9, len(generated)

    worker = workers.start("prop", **WORKER_ENV)
    await worker.wait_assigned()

    names = topic_names(prefix)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(names.main, item.value, key=f"k{i}".encode())
            for i, item in enumerate(generated)
        ]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    published = [
        Published(i, item, m.partition, m.offset, m.topic)
        for i, (item, m) in enumerate(zip(generated, metas, strict=True))
    ]
    for pub in published:
        classify(pub)

    invalid = [p for p in published if p.reason is not None]
    named = [p for p in published if p.job_id is not None]
    anonymous = [p for p in published if p.anonymous]
    # every input is exactly one of the three
    assert len(invalid) + len(named) + len(anonymous) == len(published)
    assert len({p.job_id for p in named}) == len(named), "generated job ids must be unique"
    named_ids = {p.job_id for p in named if p.job_id}
    invalid_ids = [p.invalid_id for p in invalid if p.invalid_id]
    assert len(set(invalid_ids) | named_ids) == len(invalid_ids) + len(named_ids)

    async with (
        topic_reader(kafka_bootstrap, names.dlq) as dlq,
        topic_reader(kafka_bootstrap, names.outcomes) as outcomes,
    ):

        def letters() -> list[DeadLetter]:
            return [DeadLetter.model_validate_json(r.value) for r in dlq.records]

        def outcome_list() -> list[JobOutcome]:
            return [JobOutcome.model_validate_json(r.value) for r in outcomes.records]

        def anonymous_ids() -> set[str]:
            return {o.job_id for o in outcome_list()} - named_ids - set(invalid_ids)

        async def pending() -> list[str]:
            """What has not ended yet (empty when every input has)."""
            await dlq.poll()
            await outcomes.poll()
            anon = anonymous_ids()
            ids = [*invalid_ids, *named_ids, *anon]
            rows = await pg_pool.fetch(
                "SELECT job_id FROM jobs WHERE job_id = ANY($1::text[])"
                " AND status IN ('succeeded', 'dead_lettered')",
                ids,
            )
            terminal = {r["job_id"] for r in rows}
            lettered = {d.id for d in letters()}
            emitted = {o.job_id for o in outcome_list()}
            left = [p.describe() for p in invalid if p.invalid_id not in terminal]
            left += [p.describe() for p in invalid if p.coordinates not in lettered]
            left += [p.describe() for p in invalid if p.invalid_id not in emitted]
            left += [p.describe() for p in named if p.job_id not in terminal]
            left += [p.describe() for p in named if p.job_id not in emitted]
            if len(anon) < len(anonymous) or not anon <= terminal:
                left.append(f"anonymous jobs ended: {len(anon & terminal)}/{len(anonymous)}")
            return left

        async def all_ended() -> bool:
            return not await pending()

        try:
            await wait_for(all_ended, timeout=60, interval=0.5, what="every input to end")
        except AssertionError:
            left = list(dict.fromkeys(await pending()))
            twice = {c: n for c, n in Counter(d.id for d in letters()).items() if n > 1}
            raise AssertionError(
                f"{len(left)} input(s) never ended (worker alive: {worker.alive}):\n"
                + "\n".join(left[:30])
                + f"\n{len(twice)} input(s) dead-lettered more than once: {twice}"
                + f"\n--- worker log ---\n{worker.tail(60)}"
            ) from None
        # anything late (a second dead letter, a second outcome) comes from a record the group
        # has not yet finished: once it has committed every topic it reads, all it wrote is on
        # the two topics, and both are read to their end
        await settled(kafka_bootstrap, prefix, [dlq, outcomes])
        all_letters = letters()
        all_outcomes = outcome_list()

    by_coords = Counter(d.id for d in all_letters)
    letters_by_job = Counter(d.job_id for d in all_letters)
    outcomes_by_job = Counter(o.job_id for o in all_outcomes)
    anon_ids = {o.job_id for o in all_outcomes} - named_ids - set(invalid_ids)
    assert len(anon_ids) == len(anonymous), (anon_ids, [p.describe() for p in anonymous])
    twice = {c: n for c, n in by_coords.items() if n > 1}
    assert not twice, f"inputs dead-lettered more than once: {twice}"

    rows = {
        r["job_id"]: r
        for r in await pg_pool.fetch(
            "SELECT job_id, status, executions FROM jobs WHERE job_id = ANY($1::text[])",
            [*invalid_ids, *named_ids, *anon_ids],
        )
    }

    # undecodable: one dead_lettered row under its id, one dead letter, one outcome
    letter_at = {d.id: d for d in all_letters}
    for p in invalid:
        assert p.invalid_id is not None
        row = rows[p.invalid_id]
        assert row["status"] == "dead_lettered", p.describe()
        assert by_coords[p.coordinates] == 1, p.describe()
        assert outcomes_by_job[p.invalid_id] == 1, p.describe()
        letter = letter_at[p.coordinates]
        assert letter.job_id == p.invalid_id, p.describe()
        assert letter.reason is p.reason, (p.describe(), letter.reason, letter.error_message)
        assert letter.original_bytes() == p.input.value, p.describe()

    # decoded: one terminal row, one outcome agreeing with it, and a dead letter iff dead
    for job_id in [*named_ids, *anon_ids]:
        row = rows[job_id]
        assert row["status"] in ("succeeded", "dead_lettered"), (job_id, row)
        assert outcomes_by_job[job_id] == 1, (job_id, outcomes_by_job[job_id])
        assert letters_by_job[job_id] == (1 if row["status"] == "dead_lettered" else 0), (
            job_id,
            row["status"],
            letters_by_job[job_id],
        )
    for p in named:  # a named job that died on its first attempt is lettered at its coordinates
        if rows[p.job_id]["status"] == "dead_lettered" and by_coords[p.coordinates]:
            assert letter_at[p.coordinates].job_id == p.job_id, p.describe()

    # the counts add up: no input without an end, no dead letter without an input
    dead_jobs = sum(1 for j in [*named_ids, *anon_ids] if rows[j]["status"] == "dead_lettered")
    assert len(all_letters) == len(invalid) + dead_jobs
    assert len(all_outcomes) == len(invalid_ids) + len(named_ids) + len(anon_ids)
    print(
        f"inputs={len(published)} undecodable={len(invalid)} named={len(named)}"
        f" anonymous={len(anonymous)} dead_letters={len(all_letters)}"
        f" outcomes={len(all_outcomes)} reasons={dict(Counter(str(p.reason) for p in invalid))}"
    )

    # the worker survived all of it and still works
    assert worker.alive, worker.tail()
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        ok = await client.submit("echo", {"after": "hypothesis"})
    await wait_terminal(pg_pool, [ok], timeout=30)
    status = await pg_pool.fetchval("SELECT status FROM jobs WHERE job_id = $1", ok)
    assert status == "succeeded"
    assert worker.alive, worker.tail()
