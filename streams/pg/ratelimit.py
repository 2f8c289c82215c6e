"""A global rate limiter per upstream key, shared by every replica through one PostgreSQL row.

Why PostgreSQL: the replicas already share it, so a global limit needs no new infrastructure.
Each key is a token bucket row (``rate_limit_buckets``); every replica refills and takes from it
in one atomic statement, with the refill computed from the *database* clock
(``clock_timestamp()`` minus the row's ``updated_at``), so replicas with skewed clocks agree.

Algorithm
---------
* **Leases.** A DB round trip per request would make the row the bottleneck, so a replica takes
  ``want`` tokens at once and hands them out locally. ``want`` adapts to local demand (coroutines
  waiting now, and an EWMA of the acquire rate times the lease window) and never exceeds
  ``max_lease = min(lease, floor(refill_per_s * LEASE_WINDOW_S))`` (at least 1): no replica takes
  more than ~100 ms of the global rate at once, so a replica cannot hoard what others need.
* **Reservations instead of polling.** The statement may grant tokens *ahead* of the refill (the
  row goes into debt, down to ``refill_per_s * HORIZON_S``) and returns the level it took them
  from; the replica then knows when each token becomes valid, ``(i - level) / refill_per_s``
  seconds after the answer, and hands each to one waiter that sleeps exactly that long. Tokens are
  therefore used on the bucket's own schedule. Polling instead ("sleep until the next token, take
  what is there") returns one token per trip as soon as replicas contend, whatever the lease size.
* **Local frontier.** A replica asks again only when its reservations reach less than
  ``LEASE_WINDOW_S`` into the future; saturated, it thus keeps 0.1-0.2 s reserved and makes one
  round trip per lease. ``N`` saturated replicas together keep about ``N * LEASE_WINDOW_S`` of debt,
  under ``HORIZON_S`` for up to ten replicas; past that some answers grant nothing and say how long
  until a full lease can be reserved; the replica sleeps that long, capped at ``POLL_CAP_S`` so
  tokens given back by another replica are seen.
* **One refill in flight per key** per process: the first waiter starts the lease as a task, the
  others await the same task (shielded, so a cancelled waiter neither loses the tokens nor lets a
  second lease start).
* **Expiry.** A leased token unused ``LEASE_TTL_S`` after it became valid is dropped locally and
  given back on the next round trip (capped at capacity). A token kept longer would let the rate
  burst later.
* **Pause.** ``pause(key, s)`` (a 429 with Retry-After) sets ``paused_until`` on the row, keeps the
  bucket at no more than zero (no burst when the pause ends) and sends ``NOTIFY``; every replica
  listening voids the tokens it holds for the key at once; the lease statement grants nothing
  before ``paused_until``, and its answer voids them on a replica that missed the notification.
* **Tokens per minute.** A second bucket in the same row (capacity ``tokens_per_minute``, refill
  ``tokens_per_minute / 60`` per second) that only :meth:`PgRateLimiter.charge_tokens` drains, after
  the call, since usage is only known then. It may go negative; no lease is granted while it is
  not positive, for ``-balance / refill`` seconds.

Error bound
-----------
Tokens become valid on the schedule of one token bucket with capacity ``C`` and rate ``r``: the
database serialises every grant on the row lock, and giving a token back only ever restores what
the bucket would have held had it not been taken. A token is used at or after its valid time: the
replica anchors the answer's offsets on its own clock when the answer *arrives*, which errs late by
half a round trip, never early. The only slack is a token valid before a window but used inside
it: one held unused (at most ``max_lease`` per replica, for at most ``LEASE_TTL_S``), or one whose
waiter ran late because its event loop was starved. So for ``N`` replicas the requests in any
window of ``T`` seconds number at most ``C + r*T + N*max_lease`` (``<= C + r*T +
N*r*LEASE_WINDOW_S``); saturated replicas hold no unused token, and the bound is ``C + r*T``.
Over a long saturated window the observed rate is ``r`` within
``(N*max_lease + 1) / (r*T)``, plus ``C / T`` if the window starts on a full bucket: with ``N = 3``
and ``T = 10 s`` at most 3 % + 1/(rT) whatever ``r``; measured, it is a fraction of that (see the
integration tests). What is not enforced: a replica whose listener is down still uses up to
``2 * LEASE_WINDOW_S`` of reservations it made before a pause, and a token-per-minute budget is
overrun by the calls in flight when it runs out.

A key's row is created on first use, with the bucket full; its configuration is (re)written by each
process on first use, so during a rolling change of limits the last process to start wins.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from jobstream.models.errors import ConfigurationError, RetryableError
from jobstream.streams.metrics import Metrics
from jobstream.streams.settings import RateLimit

log = logging.getLogger(__name__)

LEASE_WINDOW_S = 0.1
"""A lease never exceeds this much of the global rate: bounds hoarding and the burst slack."""

HORIZON_S = 1.0
"""How far ahead of the refill leases may reserve, all replicas together (the row's debt limit)."""

LEASE_TTL_S = 1.0
"""A leased token unused this long after it became valid is given back."""

POLL_CAP_S = 0.5
"""Longest sleep on an empty bucket before asking again (tokens may have been given back)."""

MIN_SLEEP_S = 0.005
"""Floor on every wait, so a wait rounded to zero cannot spin."""

MAX_PAUSE_S = 3600.0
"""A Retry-After beyond this is taken as a broken header, not as a day-long outage."""

DEMAND_TAU_S = 1.0
"""Time constant of the acquire-rate estimate that sizes leases for a sequential caller."""

NOTIFY_CHANNEL = "jobstream_rate_limit"

_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)

# fillfactor: the row is rewritten on every lease; free room on the page keeps updates HOT.

# The row, locked, with both buckets refilled up to the database clock. The request bucket does
# not refill before paused_until; the token-per-minute bucket always does. `t` is taken after the
# lock is held in the usual case; if it was taken before, the greatest() guards keep it safe (no
# refill is counted twice, updated_at never goes back).
_CURRENT = """
cur AS (
    SELECT b.key, c.t, b.capacity, b.refill_per_s, b.paused_until, b.tpm_per_s,
           coalesce(b.paused_until > c.t, false) AS paused,
           least(b.capacity, b.tokens + b.refill_per_s * greatest(0.0, extract(
               epoch FROM c.t - greatest(b.updated_at, coalesce(b.paused_until, b.updated_at))
           )::float8)) AS avail,
           least(b.tpm_capacity, b.tpm_tokens + b.tpm_per_s * greatest(0.0, extract(
               epoch FROM c.t - b.updated_at
           )::float8)) AS tpm_avail
    FROM rate_limit_buckets AS b
    CROSS JOIN LATERAL (SELECT clock_timestamp() AS t) AS c
    WHERE b.key = $1
    FOR UPDATE OF b
)"""

_ENSURE_SQL = """
INSERT INTO rate_limit_buckets AS b
    (key, tokens, capacity, refill_per_s, tpm_tokens, tpm_capacity, tpm_per_s, updated_at)
VALUES ($1, $2, $2, $3, $4, $4, $5, clock_timestamp())
ON CONFLICT (key) DO UPDATE
SET capacity = EXCLUDED.capacity,
    refill_per_s = EXCLUDED.refill_per_s,
    tpm_capacity = EXCLUDED.tpm_capacity,
    tpm_per_s = EXCLUDED.tpm_per_s,
    tpm_tokens = CASE WHEN EXCLUDED.tpm_capacity IS NULL THEN NULL
                      ELSE coalesce(b.tpm_tokens, EXCLUDED.tpm_tokens) END
WHERE (b.capacity, b.refill_per_s, b.tpm_capacity, b.tpm_per_s)
      IS DISTINCT FROM (EXCLUDED.capacity, EXCLUDED.refill_per_s,
                        EXCLUDED.tpm_capacity, EXCLUDED.tpm_per_s)
"""

# $1 key, $2 want, $3 tokens given back, $4 horizon (s). Grants n <= want tokens, possibly ahead
# of the refill (debt down to -refill*horizon); `avail` is the level the grant was taken from.
_LEASE_SQL = f"""
WITH {_CURRENT},
back AS (
    SELECT cur.*,
           CASE WHEN paused THEN avail ELSE least(capacity, avail + $3::float8) END AS level
    FROM cur
),
g AS (
    SELECT back.*,
           CASE WHEN paused OR coalesce(tpm_avail <= 0, false) THEN 0
                ELSE greatest(0, least($2::int, floor(level + refill_per_s * $4::float8)))::int
           END AS n
    FROM back
)
UPDATE rate_limit_buckets AS b
SET tokens = g.level - g.n,
    tpm_tokens = g.tpm_avail,
    updated_at = greatest(b.updated_at, g.t)
FROM g
WHERE b.key = g.key
RETURNING g.n, g.level AS avail, g.refill_per_s,
          CASE WHEN g.paused THEN extract(epoch FROM g.paused_until - g.t)::float8 END
              AS pause_wait,
          CASE WHEN g.tpm_avail <= 0 THEN -g.tpm_avail / g.tpm_per_s END AS tpm_wait,
          greatest(0.0, ($2::int - g.level - g.refill_per_s * $4::float8) / g.refill_per_s)
              AS bucket_wait
"""

# $1 key, $2 tokens given back.
_RETURN_SQL = f"""
WITH {_CURRENT}
UPDATE rate_limit_buckets AS b
SET tokens = CASE WHEN cur.paused THEN cur.avail
                  ELSE least(cur.capacity, cur.avail + $2::float8) END,
    tpm_tokens = cur.tpm_avail,
    updated_at = greatest(b.updated_at, cur.t)
FROM cur
WHERE b.key = cur.key
RETURNING b.tokens
"""

# $1 key, $2 upstream tokens used.
_CHARGE_SQL = f"""
WITH {_CURRENT}
UPDATE rate_limit_buckets AS b
SET tokens = cur.avail,
    tpm_tokens = cur.tpm_avail - $2::float8,
    updated_at = greatest(b.updated_at, cur.t)
FROM cur
WHERE b.key = cur.key
RETURNING b.tpm_tokens AS balance, b.tpm_per_s
"""

# $1 key, $2 seconds, $3 channel. Debt is kept (conservative after a 429), credit is dropped.
_PAUSE_SQL = f"""
WITH {_CURRENT},
upd AS (
    UPDATE rate_limit_buckets AS b
    SET paused_until = greatest(cur.paused_until, cur.t + make_interval(secs => $2::float8)),
        tokens = least(cur.avail, 0.0),
        tpm_tokens = cur.tpm_avail,
        updated_at = greatest(b.updated_at, cur.t)
    FROM cur
    WHERE b.key = cur.key
    RETURNING b.key, extract(epoch FROM b.paused_until - cur.t)::float8 AS wait
)
SELECT upd.wait, pg_notify($3::text, json_build_object('key', upd.key, 'wait', upd.wait)::text)
FROM upd
"""


# ---------------------------------------------------------------------------------------------
# pure parts


@dataclass(frozen=True)
class BucketConfig:
    """A :class:`RateLimit` in the units the row stores (per second, capacity of at least 1)."""

    capacity: float
    refill_per_s: float
    tpm_capacity: float | None
    tpm_per_s: float | None


def bucket_config(limit: RateLimit) -> BucketConfig:
    """Capacity below one token could never grant anything, so it is raised to one."""
    capacity = max(1.0, limit.burst if limit.burst is not None else limit.rate)
    tpm = limit.tokens_per_minute
    return BucketConfig(
        capacity=capacity,
        refill_per_s=limit.rate / limit.per,
        tpm_capacity=tpm,
        tpm_per_s=None if tpm is None else tpm / 60.0,
    )


def max_lease(refill_per_s: float, lease: int) -> int:
    """The most tokens one replica may hold: ``lease``, but never more than a lease window."""
    return max(1, min(lease, math.floor(refill_per_s * LEASE_WINDOW_S + 1e-9)))


def lease_want(cap: int, needy: int, demand_per_s: float) -> int:
    """Tokens to ask for: enough for the coroutines waiting now or the recent demand, within cap.

    The demand term lets one coroutine calling in a loop lease several tokens per round trip; a
    replica that calls rarely takes one, so it does not strand tokens in a lease.
    """
    expected = math.ceil(demand_per_s * LEASE_WINDOW_S - 1e-9)
    return max(1, min(cap, max(needy, expected)))


def ready_offsets(n: int, level: float, refill_per_s: float) -> list[float]:
    """Seconds after the answer at which each of ``n`` tokens taken from ``level`` is valid."""
    return [max(0.0, (i - level) / refill_per_s) for i in range(1, n + 1)]


class DemandEstimate:
    """An exponentially weighted rate of events per second, decaying with ``tau``."""

    def __init__(self, tau: float = DEMAND_TAU_S) -> None:
        self.tau = tau
        self._rate = 0.0
        self._at: float | None = None

    def hit(self, now: float) -> None:
        self._rate = self.value(now) + 1.0 / self.tau
        self._at = now

    def value(self, now: float) -> float:
        if self._at is None:
            return 0.0
        return self._rate * math.exp(-max(0.0, now - self._at) / self.tau)


# ---------------------------------------------------------------------------------------------
# the limiter


@dataclass(eq=False)
class _KeyState:
    config: BucketConfig
    max_lease: int
    demand: DemandEstimate = field(default_factory=DemandEstimate)
    ready: list[float] = field(default_factory=list)  # local valid-from times, ascending
    needy: int = 0  # coroutines in acquire() without a token
    returning: int = 0  # expired tokens to give back on the next round trip
    blocked_until: float = 0.0  # local clock: no point asking the DB before this
    frontier: float = 0.0  # local clock: when the last token leased becomes valid
    epoch: int = 0  # bumped when held tokens are void (pause); claims of older epochs are void
    ensured: bool = False
    inflight: asyncio.Task[None] | None = None


class PgRateLimiter:
    """Limits calls per upstream key across all replicas; see the module docstring.

    With ``listen`` (the default) the limiter holds one pool connection for ``LISTEN``, so a pause
    reaches every replica within milliseconds; without it, a replica still uses what it reserved
    before the pause (``2 * LEASE_WINDOW_S`` at most). ``round_trips`` counts the rate-limit
    statements sent, so tests can check the cost per token. Close the limiter before the pool
    (the pool waits for the listener's connection); acquire still works after :meth:`close`,
    only without the listener.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        limits: Mapping[str, RateLimit],
        *,
        lease: int = 5,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        listen: bool = True,
    ) -> None:
        if lease < 1:
            raise ConfigurationError(f"rate limit lease must be at least 1 token, not {lease}")
        self._pool = pool
        self._metrics = metrics
        self._clock = clock
        self._listen = listen
        self._states: dict[str, _KeyState] = {}
        for key, limit in limits.items():
            config = bucket_config(limit)
            self._states[key] = _KeyState(config, max_lease(config.refill_per_s, lease))
        self.round_trips = 0
        self._closed = False
        self._listener: Any = None  # the pool connection holding LISTEN
        self._listener_lock = asyncio.Lock()
        self._listen_retry_at = 0.0

    # -- public API ---------------------------------------------------------------------------

    async def acquire(self, key: str | None) -> None:
        """Wait for one call's worth of the key's rate; a key without a limit passes at once.

        Raises :class:`RetryableError` when the database cannot be reached: without the shared
        bucket no replica can know the global rate, and failing is safer than flooding upstream.
        """
        if key is None:
            return
        st = self._states.get(key)
        if st is None:
            return
        started = self._clock()
        st.demand.hit(started)
        st.needy += 1
        needy = True
        try:
            while True:
                now = self._clock()
                self._expire(st, now)
                if st.ready:
                    valid_from = st.ready.pop(0)
                    st.needy -= 1
                    needy = False
                    if valid_from > now:
                        epoch = st.epoch
                        try:
                            await asyncio.sleep(valid_from - now)
                        except asyncio.CancelledError:
                            if st.epoch == epoch:  # nobody used it: the next waiter may
                                bisect.insort(st.ready, valid_from)
                            raise
                        if st.epoch != epoch:  # paused while we waited for it
                            st.needy += 1
                            needy = True
                            continue
                    break
                not_before = max(st.blocked_until, st.frontier - LEASE_WINDOW_S)
                if not_before > now:
                    await asyncio.sleep(max(MIN_SLEEP_S, min(not_before - now, POLL_CAP_S)))
                    continue
                await self._refill(key, st)
        finally:
            if needy:
                st.needy -= 1
        if self._metrics is not None:
            self._metrics.rate_limit_wait.labels(key=key).observe(self._clock() - started)

    async def pause(self, key: str, seconds: float) -> None:
        """Stop every replica taking tokens for ``key`` for ``seconds`` (a 429's Retry-After).

        It takes effect on this replica before the database is reached; if the database is
        unreachable it raises :class:`RetryableError` so the caller can retry for the others.
        """
        st = self._states.get(key)
        if st is None or not seconds > 0:
            return
        if seconds > MAX_PAUSE_S:
            log.warning("pause of %r for %.0f s capped at %.0f s", key, seconds, MAX_PAUSE_S)
            seconds = MAX_PAUSE_S
        self._block(st, seconds)  # locally at once, even if the database is unreachable
        row = await self._with_row(key, st, _PAUSE_SQL, key, float(seconds), NOTIFY_CHANNEL)
        self._block(st, row["wait"])

    async def charge_tokens(self, key: str, tokens: float) -> None:
        """Report upstream usage after a call; acquires wait while the minute's budget is spent.

        Raises :class:`RetryableError` if the database is unreachable, like :meth:`acquire`.
        """
        st = self._states.get(key)
        if st is None or st.config.tpm_per_s is None or not tokens > 0:
            return
        row = await self._with_row(key, st, _CHARGE_SQL, key, float(tokens))
        balance = row["balance"]
        if balance is not None and balance <= 0:
            # tokens not yet handed out would be spent over budget; the bucket may have them back
            st.returning += len(st.ready)
            st.ready.clear()
            st.frontier = 0.0
            wait = -balance / row["tpm_per_s"] + MIN_SLEEP_S
            st.blocked_until = max(st.blocked_until, self._clock() + wait)

    def paused_for(self, key: str) -> float:
        """Seconds this replica still holds back ``key`` for (a pause or an exhausted budget)."""
        st = self._states.get(key)
        if st is None:
            return 0.0
        return max(0.0, st.blocked_until - self._clock())

    async def close(self) -> None:
        """Give back the tokens leased and not handed out, and stop listening; best effort."""
        self._closed = True
        pending = [st.inflight for st in self._states.values() if st.inflight is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for key, st in self._states.items():
            give_back = st.returning + len(st.ready)
            st.returning = 0
            st.ready.clear()
            if give_back and st.ensured:
                try:
                    self.round_trips += 1
                    await self._pool.fetchrow(_RETURN_SQL, key, float(give_back))
                except _DB_ERRORS as exc:
                    log.warning("could not give back %d tokens of %r: %r", give_back, key, exc)
        async with self._listener_lock:
            await self._drop_listener()

    # -- leases -------------------------------------------------------------------------------

    async def _refill(self, key: str, st: _KeyState) -> None:
        task = st.inflight
        if task is None:
            task = asyncio.create_task(self._lease(key, st), name=f"rate-limit-lease:{key}")
            st.inflight = task
            task.add_done_callback(_retrieve)
        await asyncio.shield(task)

    async def _lease(self, key: str, st: _KeyState) -> None:
        try:
            await self._ensure_listener()
            want = lease_want(st.max_lease, st.needy, st.demand.value(self._clock()))
            # tokens given back are lost if the trip fails: that errs on the safe side
            give_back, st.returning = st.returning, 0
            epoch = st.epoch
            row = await self._with_row(key, st, _LEASE_SQL, key, want, float(give_back), HORIZON_S)
            now = self._clock()
            n: int = row["n"]
            if n and st.epoch == epoch:
                offsets = ready_offsets(n, row["avail"], row["refill_per_s"])
                st.ready.extend(now + off for off in offsets)
                st.ready.sort()
                st.frontier = max(st.frontier, st.ready[-1])
            elif row["pause_wait"] is not None:
                # a pause this replica had not heard of: what its waiters hold is void too
                self._block(st, row["pause_wait"] + MIN_SLEEP_S)
            elif not n:
                if row["tpm_wait"] is not None:
                    wait = row["tpm_wait"] + MIN_SLEEP_S
                else:
                    wait = min(row["bucket_wait"], POLL_CAP_S)
                st.blocked_until = max(st.blocked_until, now + max(wait, MIN_SLEEP_S))
        finally:
            if st.inflight is asyncio.current_task():
                st.inflight = None

    def _expire(self, st: _KeyState, now: float) -> None:
        cut = now - LEASE_TTL_S
        stale = bisect.bisect_left(st.ready, cut)
        if stale:
            del st.ready[:stale]
            st.returning += stale

    def _block(self, st: _KeyState, seconds: float) -> None:
        """Void the tokens held for a paused key: the pause reset the bucket, they are not due."""
        st.ready.clear()
        st.frontier = 0.0
        st.epoch += 1
        st.blocked_until = max(st.blocked_until, self._clock() + seconds)

    # -- database -----------------------------------------------------------------------------

    async def _with_row(self, key: str, st: _KeyState, sql: str, *args: object) -> Any:
        """Run one statement on the key's row, creating the row first if this process has not."""
        try:
            for _ in range(2):
                if not st.ensured:
                    c = st.config
                    self.round_trips += 1
                    await self._pool.execute(
                        _ENSURE_SQL, key, c.capacity, c.refill_per_s, c.tpm_capacity, c.tpm_per_s
                    )
                    st.ensured = True
                self.round_trips += 1
                row = await self._pool.fetchrow(sql, *args)
                if row is not None:
                    return row
                st.ensured = False  # the row was deleted under us: recreate it once
        except _DB_ERRORS as exc:
            if self._metrics is not None:
                self._metrics.db_errors.labels(op="rate_limit").inc()
            raise RetryableError(f"rate limiter for {key!r} unavailable: {exc!r}") from exc
        raise RetryableError(f"rate limit row for {key!r} keeps disappearing")

    async def _ensure_listener(self) -> None:
        if not self._listen or self._closed:
            return
        if self._listener is not None and not self._listener.is_closed():
            return
        if self._clock() < self._listen_retry_at:
            return
        async with self._listener_lock:
            if self._closed or (self._listener is not None and not self._listener.is_closed()):
                return
            await self._drop_listener()
            try:
                conn = await self._pool.acquire(timeout=2.0)
            except _DB_ERRORS as exc:
                self._listen_retry_at = self._clock() + 30.0
                log.warning("rate limiter cannot listen for pauses (polling only): %r", exc)
                return
            try:
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
            except _DB_ERRORS as exc:
                await self._pool.release(conn)
                self._listen_retry_at = self._clock() + 30.0
                log.warning("rate limiter cannot listen for pauses (polling only): %r", exc)
                return
            self._listener = conn

    async def _drop_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is None:
            return
        try:
            if not conn.is_closed():
                await conn.remove_listener(NOTIFY_CHANNEL, self._on_notify)
        except _DB_ERRORS as exc:  # releasing resets the connection anyway
            log.debug("could not UNLISTEN: %r", exc)
        try:
            await self._pool.release(conn)
        except _DB_ERRORS as exc:  # a closed pool: nothing left to free
            log.debug("could not release the listener connection: %r", exc)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            msg = json.loads(str(payload))
            key, wait = str(msg["key"]), float(msg["wait"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed rate-limit notification %r", payload)
            return
        st = self._states.get(key)
        if st is not None and wait > 0:
            self._block(st, wait)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a lease's failure as seen: its waiters may all have been cancelled."""
    if not task.cancelled():
        task.exception()
