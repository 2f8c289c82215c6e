"""The rate limiter's pure parts, and its local bookkeeping against a scripted pool.

The SQL itself (refill, debt, pause, budgets) is only meaningful against PostgreSQL and is
tested in ``tests/integration/test_ratelimit_pg.py``; here the pool answers as the statements
would, so what is checked is what the replica does with the answers.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

import jobstream.streams.pg.ratelimit as rl
from jobstream.models.errors import ConfigurationError, RetryableError
from jobstream.streams.metrics import Metrics
from jobstream.streams.pg.ratelimit import (
    NOTIFY_CHANNEL,
    POLL_CAP_S,
    BucketConfig,
    DemandEstimate,
    PgRateLimiter,
    bucket_config,
    lease_want,
    max_lease,
    ready_offsets,
)
from jobstream.streams.settings import RateLimit

# -- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (RateLimit(rate=50), BucketConfig(50.0, 50.0, None, None)),
        (RateLimit(rate=120, per=60), BucketConfig(120.0, 2.0, None, None)),
        (RateLimit(rate=10, burst=3), BucketConfig(3.0, 10.0, None, None)),
        (RateLimit(rate=10, burst=0.5), BucketConfig(1.0, 10.0, None, None)),
        (RateLimit(rate=0.5, per=1), BucketConfig(1.0, 0.5, None, None)),
        (RateLimit(rate=5, tokens_per_minute=90_000), BucketConfig(5.0, 5.0, 90_000.0, 1500.0)),
    ],
)
def test_bucket_config(limit: RateLimit, expected: BucketConfig) -> None:
    assert bucket_config(limit) == expected


@pytest.mark.parametrize(
    ("refill_per_s", "lease", "expected"),
    [
        (50.0, 5, 5),  # the default: 100 ms of 50/s is exactly the lease
        (20.0, 5, 2),  # a lease never covers more than the lease window
        (5.0, 5, 1),  # below 10/s every trip takes one token
        (0.01, 5, 1),
        (10_000.0, 5, 5),  # the setting caps fast keys
        (10_000.0, 1, 1),
        (30.0, 5, 3),  # floor(30 * 0.1) despite binary rounding
    ],
)
def test_max_lease(refill_per_s: float, lease: int, expected: int) -> None:
    assert max_lease(refill_per_s, lease) == expected


@pytest.mark.parametrize(
    ("cap", "needy", "demand", "expected"),
    [
        (5, 50, 0.0, 5),  # many waiters: a full lease
        (5, 1, 0.0, 1),  # one caller, no history: one token, nothing stranded
        (5, 1, 40.0, 4),  # one caller in a loop at 40/s: 100 ms of it
        (5, 1, 500.0, 5),
        (5, 0, 0.0, 1),
        (1, 9, 99.0, 1),
    ],
)
def test_lease_want(cap: int, needy: int, demand: float, expected: int) -> None:
    assert lease_want(cap, needy, demand) == expected


def test_ready_offsets_follow_the_bucket() -> None:
    assert ready_offsets(3, 5.0, 10.0) == [0.0, 0.0, 0.0]
    offsets = ready_offsets(5, 3.5, 10.0)
    assert offsets[:3] == [0.0, 0.0, 0.0]
    assert offsets[3:] == pytest.approx([0.05, 0.15])
    assert ready_offsets(2, -1.0, 20.0) == pytest.approx([0.1, 0.15])  # in debt: behind others
    assert ready_offsets(0, 3.0, 1.0) == []


def test_demand_estimate_converges_and_decays() -> None:
    est = DemandEstimate(tau=1.0)
    assert est.value(0.0) == 0.0
    for i in range(300):  # 100/s for 3 s
        est.hit(i / 100)
    assert est.value(2.99) == pytest.approx(100.0, rel=0.05)
    assert est.value(2.99 + 5.0) == pytest.approx(100.0 * math.exp(-5.0), rel=0.05)


def test_lease_below_one_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        PgRateLimiter(object(), {}, lease=0)  # type: ignore[arg-type]


# -- local bookkeeping against a scripted pool -------------------------------------------------


def answer(
    n: int,
    *,
    avail: float = 100.0,
    rate: float = 100.0,
    pause_wait: float | None = None,
    tpm_wait: float | None = None,
    bucket_wait: float = 0.0,
) -> dict[str, Any]:
    return {
        "n": n,
        "avail": avail,
        "refill_per_s": rate,
        "pause_wait": pause_wait,
        "tpm_wait": tpm_wait,
        "bucket_wait": bucket_wait,
    }


class FakePool:
    """Answers the limiter's statements as PostgreSQL would, from a script; records them."""

    def __init__(self, *answers: dict[str, Any], fail: BaseException | None = None) -> None:
        self.answers = list(answers)
        self.fail = fail
        self.leases: list[tuple[int, float]] = []  # (want, given back)
        self.ensured = 0
        self.returned: list[float] = []
        self.charge_balance = 1.0
        self.gate: asyncio.Event | None = None

    async def execute(self, sql: str, *args: Any) -> None:
        if self.fail is not None:
            raise self.fail
        assert sql is rl._ENSURE_SQL
        self.ensured += 1

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        if sql is rl._LEASE_SQL:
            self.leases.append((args[1], args[2]))
            if self.gate is not None:
                await self.gate.wait()
            return self.answers.pop(0) if self.answers else answer(args[1])
        if sql is rl._PAUSE_SQL:
            return {"wait": args[1]}
        if sql is rl._CHARGE_SQL:
            return {"balance": self.charge_balance, "tpm_per_s": 1.0}
        if sql is rl._RETURN_SQL:
            self.returned.append(args[1])
            return {"tokens": 0.0}
        raise AssertionError(f"unexpected statement {sql[:60]!r}")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


KEY = "upstream"


async def until(cond: Callable[[], object], steps: int = 1000) -> None:
    """Let the other tasks run until ``cond`` holds; fail rather than spin forever."""
    for _ in range(steps):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def make(pool: FakePool, **kwargs: Any) -> PgRateLimiter:
    limits = kwargs.pop("limits", {KEY: RateLimit(rate=100)})
    return PgRateLimiter(pool, limits, listen=False, **kwargs)  # type: ignore[arg-type]


async def test_no_key_or_unconfigured_key_never_touches_the_database() -> None:
    lim = PgRateLimiter(object(), {KEY: RateLimit(rate=1)}, listen=False)  # type: ignore[arg-type]
    await lim.acquire(None)
    await lim.acquire("elsewhere")
    await lim.pause("elsewhere", 10)
    await lim.pause(KEY, 0)
    await lim.charge_tokens("elsewhere", 100)
    await lim.charge_tokens(KEY, 100)  # no tokens_per_minute on this key
    assert lim.paused_for(KEY) == 0.0
    assert lim.round_trips == 0
    await lim.close()


async def test_concurrent_waiters_share_one_lease() -> None:
    pool = FakePool(answer(5))
    pool.gate = asyncio.Event()
    lim = make(pool)
    waiters = [asyncio.create_task(lim.acquire(KEY)) for _ in range(5)]
    await until(lambda: pool.leases)
    for _ in range(10):  # every waiter runs up to the in-flight lease
        await asyncio.sleep(0)
    assert len(pool.leases) == 1
    assert pool.leases[0][0] == 5  # five waiting: a full lease
    pool.gate.set()
    await asyncio.gather(*waiters)
    assert len(pool.leases) == 1
    assert lim.round_trips == 2  # the row's creation, then the lease
    await lim.close()


async def test_reserved_tokens_are_handed_out_at_their_time() -> None:
    pool = FakePool(answer(2, avail=-1.0, rate=20.0))  # valid in 0.10 and 0.15 s
    lim = make(pool)
    started = time.monotonic()
    elapsed: list[float] = []

    async def one() -> None:
        await lim.acquire(KEY)
        elapsed.append(time.monotonic() - started)

    await asyncio.gather(one(), one())
    assert len(pool.leases) == 1
    assert sorted(elapsed)[0] >= 0.095
    assert sorted(elapsed)[1] >= 0.145
    await lim.close()


async def test_empty_answer_waits_at_most_the_poll_cap() -> None:
    pool = FakePool(answer(0, bucket_wait=30.0))
    lim = make(pool)
    started = time.monotonic()
    await lim.acquire(KEY)
    assert POLL_CAP_S * 0.9 <= time.monotonic() - started < POLL_CAP_S + 0.5
    assert len(pool.leases) == 2
    await lim.close()


async def test_paused_answer_waits_for_the_whole_pause() -> None:
    pool = FakePool(answer(0, pause_wait=30.0))
    lim = make(pool)
    task = asyncio.create_task(lim.acquire(KEY))
    await until(lambda: lim.paused_for(KEY))
    assert len(pool.leases) == 1
    assert 29.0 < lim.paused_for(KEY) <= 30.1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await lim.close()


async def test_pause_voids_held_tokens() -> None:
    pool = FakePool()
    clock = Clock()
    lim = make(pool, clock=clock)
    for _ in range(50):  # demand makes it lease ahead: tokens are held
        await lim.acquire(KEY)
    await lim.pause(KEY, 2.0)
    assert lim.paused_for(KEY) == pytest.approx(2.0)
    leases = len(pool.leases)
    clock.now += 2.5
    await lim.acquire(KEY)
    assert len(pool.leases) == leases + 1  # the held tokens were not used
    await lim.close()
    assert pool.returned == []  # nor given back: the pause reset the bucket


async def test_expired_tokens_are_given_back_with_the_next_lease() -> None:
    pool = FakePool(answer(3))
    clock = Clock()
    lim = make(pool, clock=clock)
    await lim.acquire(KEY)  # one used, two held
    clock.now += 1.5  # past the lease TTL
    await lim.acquire(KEY)
    assert [back for _, back in pool.leases] == [0.0, 2.0]
    await lim.close()


async def test_close_gives_back_held_tokens() -> None:
    pool = FakePool(answer(4))
    lim = make(pool)
    await lim.acquire(KEY)
    await lim.close()
    assert pool.returned == [3.0]


async def test_cancelled_waiter_passes_its_token_on() -> None:
    pool = FakePool(answer(1, avail=0.0, rate=10.0))  # valid in 0.1 s
    lim = make(pool)
    first = asyncio.create_task(lim.acquire(KEY))
    await until(lambda: not lim._states[KEY].needy)  # it holds the token, sleeping on it
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await lim.acquire(KEY)
    assert len(pool.leases) == 1
    await lim.close()


async def test_exhausted_token_budget_blocks_and_gives_back() -> None:
    pool = FakePool(answer(3))
    lim = make(pool, limits={KEY: RateLimit(rate=100, tokens_per_minute=60)})
    await lim.acquire(KEY)
    pool.charge_balance = -2.0  # two tokens over, refilling at 1/s
    await lim.charge_tokens(KEY, 50)
    assert 1.95 < lim.paused_for(KEY) <= 2.1
    await lim.close()
    assert pool.returned == [2.0]


async def test_database_failure_is_retryable_and_counted() -> None:
    metrics = Metrics()
    lim = make(FakePool(fail=asyncpg.PostgresConnectionError("gone")), metrics=metrics)
    with pytest.raises(RetryableError):
        await lim.acquire(KEY)
    with pytest.raises(RetryableError):
        await lim.pause(KEY, 1.0)
    assert lim.paused_for(KEY) > 0.9  # the pause holds here even so
    failures = metrics.registry.get_sample_value("jobstream_db_errors_total", {"op": "rate_limit"})
    assert failures == 2
    await lim.close()


async def test_wait_is_observed_per_key() -> None:
    metrics = Metrics()
    lim = make(FakePool(), metrics=metrics)
    for _ in range(3):
        await lim.acquire(KEY)
    await lim.acquire(None)
    await lim.acquire("unlimited")
    count = metrics.registry.get_sample_value(
        "jobstream_rate_limit_wait_seconds_count", {"key": KEY}
    )
    assert count == 3
    await lim.close()


async def test_notification_pauses_and_malformed_ones_are_ignored() -> None:
    lim = make(FakePool())
    lim._on_notify(None, 0, NOTIFY_CHANNEL, "not json")
    lim._on_notify(None, 0, NOTIFY_CHANNEL, json.dumps({"key": "other", "wait": 5}))
    assert lim.paused_for(KEY) == 0.0
    lim._on_notify(None, 0, NOTIFY_CHANNEL, json.dumps({"key": KEY, "wait": 5}))
    assert 4.9 < lim.paused_for(KEY) <= 5.0
    await lim.close()


async def test_sequential_caller_gets_bigger_leases() -> None:
    pool = FakePool()
    lim = make(pool)
    for _ in range(100):
        await lim.acquire(KEY)
    wants = [want for want, _ in pool.leases]
    assert wants[0] == 1
    assert max(wants) == 5
    assert len(pool.leases) < 50
    await lim.close()
