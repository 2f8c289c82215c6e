"""The unit tests' ``FakeStore`` claims and writes as ``ResultStore`` does on PostgreSQL.

Each scenario runs against both, so the in-memory store the pipeline's unit tests rely on
cannot drift from ``_CLAIM`` / ``_UPSERT``. An expired lease is made by moving it into the
past (no waiting on a short lease).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
import pytest

from jobstream.models.job import JobStatus
from jobstream.models.rows import ClaimRequest, ClaimResult, JobRow, StoredState
from jobstream.streams.pg.migrations import migrate
from jobstream.streams.pg.pool import create_pool
from jobstream.streams.pg.results import ResultStore
from tests.fakes import FakeStore


class Backend(Protocol):
    @property
    def store(self) -> FakeStore | ResultStore: ...

    async def claim(self, request: ClaimRequest) -> ClaimResult: ...
    async def write(self, row: JobRow) -> StoredState: ...
    async def exists(self, job_id: str) -> bool: ...
    async def expire(self, job_id: str) -> None: ...
    async def counts(self, job_id: str) -> tuple[int, int]: ...


@dataclass
class Fake:
    store: FakeStore

    async def claim(self, request: ClaimRequest) -> ClaimResult:
        return await self.store.claim(request)

    async def write(self, row: JobRow) -> StoredState:
        return await self.store.write(row)

    async def exists(self, job_id: str) -> bool:
        return job_id in self.store.rows

    async def expire(self, job_id: str) -> None:
        self.store.clock.advance(self.store.lease_s + 1)

    async def counts(self, job_id: str) -> tuple[int, int]:
        row = self.store.row(job_id)
        return row.executions, row.takeovers


@dataclass
class Pg:
    store: ResultStore
    pool: asyncpg.Pool

    async def claim(self, request: ClaimRequest) -> ClaimResult:
        return await self.store.claim(request)

    async def write(self, row: JobRow) -> StoredState:
        return await self.store.write(row)

    async def exists(self, job_id: str) -> bool:
        return bool(await self.pool.fetchval("SELECT count(*) FROM jobs WHERE job_id = $1", job_id))

    async def expire(self, job_id: str) -> None:
        await self.pool.execute(
            "UPDATE jobs SET lease_until = now() - interval '1 second' WHERE job_id = $1", job_id
        )

    async def counts(self, job_id: str) -> tuple[int, int]:
        r = await self.pool.fetchrow(
            "SELECT executions, takeovers FROM jobs WHERE job_id = $1", job_id
        )
        assert r is not None
        return r["executions"], r["takeovers"]


@pytest.fixture(params=["fake", "postgresql"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "fake":
        yield Fake(FakeStore(worker="w"))
        return
    pool = await create_pool(request.getfixturevalue("database_url"), min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
    store = ResultStore(pool, max_delay_s=0.001, worker="w", lease_s=30.0)
    store.start()
    try:
        yield Pg(store, pool)
    finally:
        await store.close()
        await pool.close()


def ask(
    job_id: str,
    token: str,
    attempt: int = 1,
    *,
    replay: bool = False,
    run: bool = False,
    max_takeovers: int = 0,
) -> ClaimRequest:
    return ClaimRequest(
        job_id=job_id,
        type="ok",
        attempt=attempt,
        token=token,
        replay=replay,
        run=run,
        max_takeovers=max_takeovers,
    )


def row(job_id: str, token: str, status: JobStatus, attempt: int = 1, **fields: Any) -> JobRow:
    return JobRow(
        job_id=job_id, type="ok", status=status, attempt=attempt, claim_token=token, **fields
    )


def fresh() -> str:
    return f"contract-{uuid.uuid4().hex[:12]}"


async def test_a_new_job_is_claimed_and_a_live_claim_is_not(backend: Backend) -> None:
    job = fresh()
    first = await backend.claim(ask(job, "a"))
    assert (first.won, first.takeovers, first.existing) == (True, 0, None)
    second = await backend.claim(ask(job, "b"))
    assert not second.won
    assert second.existing is not None
    assert (second.existing.status, second.existing.claim_token) == (JobStatus.RUNNING, "a")


async def test_a_retrying_row_is_claimed_only_by_a_later_attempt(backend: Backend) -> None:
    job = fresh()
    await backend.claim(ask(job, "a"))
    await backend.write(row(job, "a", JobStatus.RETRYING))
    same = await backend.claim(ask(job, "b", attempt=1))
    assert not same.won
    assert same.existing is not None
    assert same.existing.status is JobStatus.RETRYING
    later = await backend.claim(ask(job, "c", attempt=2))
    assert later.won
    assert later.existing is not None
    assert (later.existing.status, later.existing.attempt) == (JobStatus.RETRYING, 1)
    assert later.takeover is False


async def test_an_expired_claim_is_taken_over_and_counted(backend: Backend) -> None:
    job = fresh()
    await backend.claim(ask(job, "a", attempt=2))
    await backend.expire(job)
    older = await backend.claim(ask(job, "b", attempt=1))
    assert not older.won
    taken = await backend.claim(ask(job, "c", attempt=2))
    assert (taken.won, taken.takeover, taken.takeovers) == (True, True, 1)
    await backend.expire(job)
    again = await backend.claim(ask(job, "d", attempt=2))
    assert (again.won, again.takeovers) == (True, 2)
    assert await backend.counts(job) == (0, 2)


async def test_writes_are_fenced_by_the_claim_token_and_never_counted(backend: Backend) -> None:
    job = fresh()
    await backend.claim(ask(job, "a", run=True))
    await backend.expire(job)
    await backend.claim(ask(job, "b", run=True))
    late = await backend.write(row(job, "a", JobStatus.SUCCEEDED, result="late"))
    assert (late.status, late.result, late.claim_token) == (JobStatus.RUNNING, None, "b")
    done = await backend.write(row(job, "b", JobStatus.SUCCEEDED, result="mine", worker="w2"))
    assert (done.status, done.result, done.worker) == (JobStatus.SUCCEEDED, "mine", "w2")
    assert done.lease_until is None
    # a terminal row is not running any more: even its own token changes nothing
    after = await backend.write(row(job, "b", JobStatus.DEAD_LETTERED, error="x"))
    assert (after.status, after.result) == (JobStatus.SUCCEEDED, "mine")
    assert await backend.counts(job) == (2, 1)  # the two runs, counted by their claims


async def test_a_dead_lettered_row_is_claimed_only_by_a_replay(backend: Backend) -> None:
    job = fresh()
    await backend.claim(ask(job, "a"))
    await backend.expire(job)
    await backend.claim(ask(job, "b"))  # one takeover, reset by the replay below
    await backend.write(row(job, "b", JobStatus.DEAD_LETTERED, error="bad"))
    plain = await backend.claim(ask(job, "c"))
    assert not plain.won
    assert plain.existing is not None
    assert plain.existing.status is JobStatus.DEAD_LETTERED
    replay = await backend.claim(ask(job, "d", replay=True))
    assert (replay.won, replay.takeovers) == (True, 0)


async def test_a_succeeded_row_is_never_claimed_again(backend: Backend) -> None:
    job = fresh()
    await backend.claim(ask(job, "a"))
    await backend.write(row(job, "a", JobStatus.SUCCEEDED, result=1))
    for request in (ask(job, "b", attempt=5), ask(job, "c", replay=True)):
        claim = await backend.claim(request)
        assert not claim.won
        assert claim.existing is not None
        assert claim.existing.status is JobStatus.SUCCEEDED


async def test_a_write_without_a_claim_inserts_the_row(backend: Backend) -> None:
    job = fresh()
    stored = await backend.write(
        row(job, "a", JobStatus.DEAD_LETTERED, error="invalid_json: x", source="t:0:1")
    )
    assert (stored.status, stored.source, stored.claim_token) == (
        JobStatus.DEAD_LETTERED,
        "t:0:1",
        "a",
    )
    assert await backend.counts(job) == (0, 0)  # no claim started a run


async def test_a_batch_is_claimed_and_written_like_its_jobs_one_by_one(backend: Backend) -> None:
    new, held = fresh(), fresh()
    await backend.claim(ask(held, "x"))
    claims = await backend.store.claim_many([ask(new, "a"), ask(held, "b")])
    assert [c.won for c in claims] == [True, False]
    assert backend.store.held.get(new) == "a"
    stored = await backend.store.write_many(
        [row(new, "a", JobStatus.SUCCEEDED, result=1), row(held, "b", JobStatus.SUCCEEDED)]
    )
    assert [s.status for s in stored if isinstance(s, StoredState)] == [
        JobStatus.SUCCEEDED,
        JobStatus.RUNNING,  # fenced: "b" never held it
    ]


async def test_a_claim_counts_a_run_only_when_it_starts_one(backend: Backend) -> None:
    ended, ran, stalled = fresh(), fresh(), fresh()
    await backend.claim(ask(ended, "a"))  # a claim that only ends the job (bad input)
    assert await backend.counts(ended) == (0, 0)
    claims = await backend.store.claim_many([ask(ran, "b", run=True)])
    assert claims[0].won
    assert await backend.counts(ran) == (1, 0)
    await backend.write(row(ran, "b", JobStatus.RETRYING, error="e"))
    await backend.claim(ask(ran, "c", attempt=2, run=True))
    assert await backend.counts(ran) == (2, 0)
    # takeovers up to the limit count their run; the one that reaches it is not run
    await backend.claim(ask(stalled, "d", run=True, max_takeovers=2))
    await backend.expire(stalled)
    first = await backend.claim(ask(stalled, "e", run=True, max_takeovers=2))
    assert (first.won, first.takeovers) == (True, 1)
    assert await backend.counts(stalled) == (2, 1)
    await backend.expire(stalled)
    second = await backend.claim(ask(stalled, "f", run=True, max_takeovers=2))
    assert (second.won, second.takeovers) == (True, 2)
    assert await backend.counts(stalled) == (2, 2)


async def test_two_replicas_batches_sharing_rows_in_opposite_orders_never_deadlock(
    database_url: str,
) -> None:
    """Claims, renewals and row writes of two replicas over the same rows, each replica's
    batches in the opposite order: every statement takes its rows in job id order, so they wait
    for each other and none is chosen as a deadlock victim (PostgreSQL's 40P01, which the
    worker would retry, costing a statement and a second of ``deadlock_timeout``)."""
    pool = await create_pool(database_url, min_size=2, max_size=8)
    async with pool.acquire() as conn:
        await migrate(conn)
    stores = [ResultStore(pool, worker=f"r{i}", lease_s=30.0) for i in range(2)]
    ids = [f"deadlock-{uuid.uuid4().hex[:8]}-{i:03d}" for i in range(60)]
    deadlocks = 0

    async def rounds(store: ResultStore, order: list[str]) -> None:
        nonlocal deadlocks
        for n in range(15):
            token = f"{store.worker}-{n}"
            try:
                await store.claim_many(
                    [ClaimRequest(job_id=i, type="echo", attempt=1, token=token) for i in order]
                )
                await store.renew()
                await store.write_many(
                    [
                        JobRow(
                            job_id=i,
                            type="echo",
                            status=JobStatus.RETRYING,
                            attempt=1,
                            claim_token=token,
                        )
                        for i in order
                    ]
                )
            except asyncpg.DeadlockDetectedError:
                deadlocks += 1

    try:
        await asyncio.gather(rounds(stores[0], ids), rounds(stores[1], ids[::-1]))
    finally:
        await pool.execute("DELETE FROM jobs WHERE job_id = ANY($1)", ids)
        await pool.close()
    assert deadlocks == 0
