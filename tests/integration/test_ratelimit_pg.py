"""The PostgreSQL rate limiter against the real database.

Every test uses a key of its own (a uuid), so tests share the table but never a bucket. Replicas
are simulated by limiters on separate pools, and in the accuracy test by real subprocesses, since
only they exercise separate event loops and clocks. Peaks are checked against the bound of the
module docstring, ``R + burst`` per second plus the tokens replicas hold (``max_lease`` each):
a starved event loop uses reserved tokens late, all at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobstream.streams.metrics import Metrics
from jobstream.streams.pg.pool import create_pool
from jobstream.streams.pg.ratelimit import PgRateLimiter, max_lease
from jobstream.streams.polling import wait_until
from jobstream.streams.settings import RateLimit

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# One replica: acquire as fast as 20 coroutines can from `start` (wall clock, shared by all
# children) for `duration` seconds, and print the wall-clock time of every token it got.
REPLICA = """
import asyncio, json, sys, time
from jobstream.streams.pg.pool import create_pool
from jobstream.streams.pg.ratelimit import PgRateLimiter
from jobstream.streams.settings import RateLimit

async def main(dsn, key, rate, start, duration):
    pool = await create_pool(dsn, min_size=1, max_size=4)
    limiter = PgRateLimiter(pool, {key: RateLimit(rate=rate)}, lease=5)
    stamps = []
    async def worker():
        while True:
            await limiter.acquire(key)
            stamps.append(time.time())
    await asyncio.sleep(max(0.0, start - time.time()))
    tasks = [asyncio.create_task(worker()) for _ in range(20)]
    await asyncio.sleep(max(0.0, start + duration - time.time()))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await limiter.close()
    await pool.close()
    stamps = [t for t in stamps if t < start + duration]
    print(json.dumps({"stamps": stamps, "round_trips": limiter.round_trips}))

dsn, key, rate, start, duration = sys.argv[1:6]
asyncio.run(main(dsn, key, float(rate), float(start), float(duration)))
"""


def _key() -> str:
    return f"test-{uuid.uuid4().hex}"


def observed_rate(stamps: list[float], burst: float) -> float:
    """The refill rate that explains the tokens seen, the bucket having started full.

    Saturated, a bucket hands out ``burst + R * span`` tokens over ``span``. Dropping the first
    ``burst`` stamps instead would overstate R whenever the burst takes a while to drain, as it
    does on a loaded machine (it refills meanwhile).
    """
    ts = sorted(stamps)
    return (len(ts) - burst) / (ts[-1] - ts[0])


def max_in_window(stamps: list[float], width: float = 1.0) -> int:
    """The most tokens in any half-open window of ``width`` seconds."""
    ts = sorted(stamps)
    best, lo = 0, 0
    for hi, t in enumerate(ts):
        while ts[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def eventually(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    async def holds() -> bool:
        return cond()

    await wait_until(holds, within_s=timeout, interval_s=0.005, error=AssertionError)


async def timed(step: Awaitable[None]) -> float:
    started = time.monotonic()
    await step
    return time.monotonic() - started


@pytest.fixture
async def pool(pg_pool: asyncpg.Pool) -> asyncpg.Pool:
    return pg_pool


@pytest.fixture
async def replica_pools(database_url: str, pool: asyncpg.Pool) -> AsyncIterator[list[asyncpg.Pool]]:
    """Two more pools: with ``pool``, three replicas that share only the database."""
    pools = [await create_pool(database_url, min_size=1, max_size=4) for _ in range(2)]
    yield pools
    for p in pools:
        await p.close()


@asynccontextmanager
async def limiter(
    pool: asyncpg.Pool, limits: dict[str, RateLimit], **kwargs: object
) -> AsyncIterator[PgRateLimiter]:
    lim = PgRateLimiter(pool, limits, **kwargs)  # type: ignore[arg-type]
    try:
        yield lim
    finally:
        await lim.close()


async def test_single_limiter_rate_within_5_percent(pool: asyncpg.Pool) -> None:
    key, rate = _key(), 20.0
    metrics = Metrics()
    stamps: list[float] = []
    async with limiter(pool, {key: RateLimit(rate=rate)}, metrics=metrics) as lim:

        async def worker() -> None:
            for _ in range(4):
                await lim.acquire(key)
                stamps.append(time.monotonic())

        await asyncio.gather(*(worker() for _ in range(50)))
        round_trips = lim.round_trips

    measured = observed_rate(stamps, burst=rate)
    print(f"\nsingle limiter: {measured:.3f}/s for R={rate}, {round_trips} round trips / 200")
    assert abs(measured - rate) / rate < 0.05
    assert max_in_window(stamps) <= rate + rate + max_lease(rate, 5)  # R + burst + held
    count = metrics.registry.get_sample_value(
        "jobstream_rate_limit_wait_seconds_count", {"key": key}
    )
    assert count == 200


def _run_replicas(
    dsn: str, key: str, rate: float, n: int, duration: float
) -> Iterator[dict[str, Any]]:
    start = time.time() + 4.0  # time for every interpreter to start and connect
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", REPLICA, dsn, key, str(rate), str(start), str(duration)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for _ in range(n)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=duration + 60)
        assert proc.returncode == 0, err
        yield json.loads(out.strip().splitlines()[-1])


async def test_three_processes_share_the_rate(database_url: str, pool: asyncpg.Pool) -> None:
    key, rate, duration = _key(), 20.0, 8.0
    results = await asyncio.to_thread(
        lambda: list(_run_replicas(database_url, key, rate, 3, duration))
    )
    stamps = [t for r in results for t in r["stamps"]]
    per_process = [len(r["stamps"]) for r in results]
    round_trips = sum(r["round_trips"] for r in results)
    measured = observed_rate(stamps, burst=rate)
    peak = max_in_window(stamps)
    print(
        f"\n3 processes: {measured:.3f}/s for R={rate} over {duration}s, per process "
        f"{per_process}, peak 1-s window {peak}, {round_trips} round trips / {len(stamps)} tokens"
    )
    assert abs(measured - rate) / rate < 0.05
    assert peak <= rate + rate + 3 * max_lease(rate, 5)  # R + burst + held by 3 replicas
    assert all(n > 0 for n in per_process)  # nobody starved


async def test_pause_blocks_other_replicas(
    pool: asyncpg.Pool, replica_pools: list[asyncpg.Pool]
) -> None:
    key = _key()
    limits = {key: RateLimit(rate=50)}
    async with (
        limiter(pool, limits) as a,
        limiter(replica_pools[0], limits) as warm,
        limiter(replica_pools[1], limits) as cold,
    ):
        for _ in range(30):  # `warm` leases ahead and holds tokens; `cold` has none
            await warm.acquire(key)
        paused_at = time.monotonic()
        await a.pause(key, 2.0)
        await eventually(lambda: warm.paused_for(key) > 1.5)  # the NOTIFY reached it

        async def gap(lim: PgRateLimiter) -> float:
            await lim.acquire(key)
            return time.monotonic() - paused_at

        gaps = await asyncio.gather(gap(a), gap(warm), gap(cold))
    print(f"\npause 2 s: gaps {[round(g, 3) for g in gaps]}")
    assert all(1.9 <= g < 3.0 for g in gaps), gaps


async def test_pause_is_seen_without_the_listener(
    pool: asyncpg.Pool, replica_pools: list[asyncpg.Pool]
) -> None:
    key = _key()
    limits = {key: RateLimit(rate=50)}
    async with limiter(pool, limits) as a, limiter(replica_pools[0], limits, listen=False) as b:
        await b.acquire(key)
        paused_at = time.monotonic()
        await a.pause(key, 2.0)
        for _ in range(10):  # what b reserved before the pause may pass; then it must stop
            await b.acquire(key)
        waited = time.monotonic() - paused_at
    assert 1.9 <= waited < 3.0


async def test_tokens_per_minute_budget_blocks_after_charges(
    pool: asyncpg.Pool, replica_pools: list[asyncpg.Pool]
) -> None:
    key = _key()
    limits = {key: RateLimit(rate=100, tokens_per_minute=60)}  # refills 1 token/s
    async with limiter(pool, limits) as a, limiter(replica_pools[0], limits) as b:
        await a.acquire(key)
        await a.charge_tokens(key, 30)  # within budget: no wait
        assert await timed(a.acquire(key)) < 0.5
        charged_at = time.monotonic()
        await a.charge_tokens(key, 32)  # 60 - 30 - 32 = -2: exhausted for ~2 s

        async def gap(lim: PgRateLimiter) -> float:
            await lim.acquire(key)
            return time.monotonic() - charged_at

        gaps = await asyncio.gather(gap(a), gap(b))
    print(f"\ntokens per minute: gaps {[round(g, 3) for g in gaps]}")
    assert all(1.8 <= g < 3.0 for g in gaps), gaps


async def test_round_trips_per_token(pool: asyncpg.Pool) -> None:
    key, lease = _key(), 5
    async with limiter(pool, {key: RateLimit(rate=100)}, lease=lease) as lim:

        async def worker() -> None:
            for _ in range(6):
                await lim.acquire(key)

        await asyncio.gather(*(worker() for _ in range(50)))
        round_trips = lim.round_trips
    print(f"\nround trips: {round_trips} for 300 tokens with lease {lease}")
    assert round_trips <= 300 / lease * 1.1 + 2  # + the row's creation and the give-back


async def test_sequential_caller_leases_more_than_one(pool: asyncpg.Pool) -> None:
    key = _key()
    async with limiter(pool, {key: RateLimit(rate=200)}, lease=5) as lim:
        for _ in range(300):
            await lim.acquire(key)
        round_trips = lim.round_trips
    assert round_trips < 300 / 2


async def test_close_gives_back_unused_tokens(pool: asyncpg.Pool) -> None:
    key = _key()
    async with limiter(pool, {key: RateLimit(rate=1000)}) as lim:
        for _ in range(30):  # demand grows, so the last lease holds tokens not yet handed out
            await lim.acquire(key)
        held = len(lim._states[key].ready)
        before = await pool.fetchval("SELECT tokens FROM rate_limit_buckets WHERE key = $1", key)
    after = await pool.fetchval("SELECT tokens FROM rate_limit_buckets WHERE key = $1", key)
    assert held > 0
    assert after >= min(1000.0, before + held) - 0.01  # refill only adds to it


async def test_changed_configuration_is_written_to_the_row(pool: asyncpg.Pool) -> None:
    key = _key()
    async with limiter(pool, {key: RateLimit(rate=10)}) as lim:
        await lim.acquire(key)
    async with limiter(pool, {key: RateLimit(rate=30, per=2.0, tokens_per_minute=600)}) as lim:
        await lim.acquire(key)
    row = await pool.fetchrow("SELECT * FROM rate_limit_buckets WHERE key = $1", key)
    assert row is not None
    assert (row["capacity"], row["refill_per_s"]) == (30.0, 15.0)
    assert (row["tpm_capacity"], row["tpm_per_s"], row["tpm_tokens"]) == (600.0, 10.0, 600.0)


async def test_deleted_row_is_recreated(pool: asyncpg.Pool) -> None:
    key = _key()
    async with limiter(pool, {key: RateLimit(rate=1000)}, lease=1) as lim:  # no tokens held
        await lim.acquire(key)
        await pool.execute("DELETE FROM rate_limit_buckets WHERE key = $1", key)
        await lim.acquire(key)
    assert await pool.fetchval("SELECT count(*) FROM rate_limit_buckets WHERE key = $1", key) == 1
