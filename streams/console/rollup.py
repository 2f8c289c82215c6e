"""Throughput and latency per minute, kept in PostgreSQL once a minute is over.

Counting a day of jobs from the jobs table on every poll reads every row of the day (about
2.5 s for a million rows), so each finished minute is counted once and stored in
``console_minutes``: its succeeded / dead-lettered / retried counts and a histogram of the
latency (``finished_at - created_at``) of the jobs that finished in it. A window is then the
stored minutes plus the last few, counted live. Percentiles of any window come from the summed
histograms; buckets are a quarter-octave wide (each bound is 2^(1/4) times the previous, from
1 ms), so a percentile is within about 9 % of the exact value. The history outlives the
console and the jobs table's retention.

A minute is stored once it is :data:`SETTLE` old; a row written later with a finish time in an
already stored minute (a worker whose clock is minutes behind) is not counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from jobstream.streams.pg.pool import Connection

WINDOWS = {"1h": timedelta(hours=1), "1d": timedelta(days=1)}
SETTLE = timedelta(minutes=2)
FIRST_BOUND_S = 0.001
STEP = 2**0.25
BUCKETS = 100
"""Bounds from 1 ms to 2^25 ms (9.3 h); ``width_bucket`` adds one below and one above."""
BOUNDS = [FIRST_BOUND_S * STEP**k for k in range(BUCKETS)]

_COUNT = """
SELECT date_trunc('minute', finished_at) AS minute,
       width_bucket(extract(epoch FROM finished_at - created_at)::float8, $3::float8[]) AS b,
       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE status = 'dead_lettered') AS dead_lettered,
       count(*) FILTER (WHERE status = 'retrying' OR attempt > 1) AS retried,
       count(*) FILTER (WHERE status IN ('succeeded', 'dead_lettered')
                          AND created_at IS NOT NULL) AS finished
FROM jobs
WHERE finished_at >= $1 AND finished_at < $2
GROUP BY 1, 2
"""


@dataclass
class Minute:
    succeeded: int = 0
    dead_lettered: int = 0
    retried: int = 0
    hist: list[int] = field(default_factory=lambda: [0] * (BUCKETS + 1))

    def add(self, other: Minute) -> None:
        self.succeeded += other.succeeded
        self.dead_lettered += other.dead_lettered
        self.retried += other.retried
        self.hist = [a + b for a, b in zip(self.hist, other.hist, strict=True)]


def percentile(hist: list[int], q: float) -> float | None:
    """The ``q`` quantile in seconds, interpolated geometrically inside its bucket."""
    total = sum(hist)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(hist):
        if n and seen + n >= rank:
            lo = BOUNDS[i - 1] if i > 0 else 0.0
            hi = BOUNDS[i] if i < BUCKETS else BOUNDS[-1] * STEP
            frac = (rank - seen) / n
            return lo + (hi - lo) * frac if lo == 0 else lo * math.pow(hi / lo, frac)
        seen += n
    return BOUNDS[-1]


def _fold(records: Iterable[asyncpg.Record], minutes: dict[datetime, Minute]) -> None:
    for r in records:
        m = minutes.setdefault(r["minute"], Minute())
        m.succeeded += r["succeeded"]
        m.dead_lettered += r["dead_lettered"]
        m.retried += r["retried"]
        if r["b"] is not None and r["finished"]:
            m.hist[min(r["b"], BUCKETS)] += r["finished"]  # bucket BUCKETS+1 joins the last


def _minutes(start: datetime, end: datetime) -> list[datetime]:
    out, t = [], start
    while t < end:
        out.append(t)
        t += timedelta(minutes=1)
    return out


async def count(conn: Connection, start: datetime, end: datetime) -> dict[datetime, Minute]:
    """Every minute in [start, end), counted from the jobs table (empty minutes included)."""
    minutes = {m: Minute() for m in _minutes(start, end)}
    _fold(await conn.fetch(_COUNT, start, end, BOUNDS), minutes)
    return minutes


async def window(pool: asyncpg.Pool, name: str) -> dict[str, Any]:
    """Per-minute counts and latency for the window ``name``, plus its totals."""
    async with pool.acquire() as conn:
        now: datetime = await conn.fetchval("SELECT now()")
        this_minute = now.replace(second=0, microsecond=0)
        start = this_minute - WINDOWS[name] + timedelta(minutes=1)
        settled = max(this_minute - SETTLE, start)
        stored = {
            r["minute"]: Minute(r["succeeded"], r["dead_lettered"], r["retried"], r["latency_hist"])
            for r in await conn.fetch(
                "SELECT * FROM console_minutes WHERE minute >= $1 AND minute < $2", start, settled
            )
        }
        missing = [m for m in _minutes(start, settled) if m not in stored]
        if missing:
            fresh = await count(conn, missing[0], settled)
            await conn.executemany(
                "INSERT INTO console_minutes"
                " (minute, succeeded, dead_lettered, retried, latency_hist)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (minute) DO NOTHING",
                [
                    (m, v.succeeded, v.dead_lettered, v.retried, v.hist)
                    for m, v in fresh.items()
                    if m not in stored
                ],
            )
            stored.update(fresh)
        live = await count(conn, settled, this_minute + timedelta(minutes=1))
    every = {**stored, **live}
    total = Minute()
    series = []
    for m in sorted(every):
        v = every[m]
        total.add(v)
        if v.succeeded or v.dead_lettered or v.retried:
            series.append(
                {
                    "minute": m.isoformat(),
                    "succeeded": v.succeeded,
                    "dead_lettered": v.dead_lettered,
                    "retried": v.retried,
                    "p50_s": percentile(v.hist, 0.5),
                    "p95_s": percentile(v.hist, 0.95),
                }
            )
    return {
        "window": name,
        "now": now.isoformat(),
        "start": start.isoformat(),
        "series": series,
        "totals": {
            "succeeded": total.succeeded,
            "dead_lettered": total.dead_lettered,
            "retried": total.retried,
            "p50": percentile(total.hist, 0.5),
            "p95": percentile(total.hist, 0.95),
        },
        "latency_note": "from histograms with quarter-octave buckets: within about 9 %",
    }
