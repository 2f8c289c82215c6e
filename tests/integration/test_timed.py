"""Timed jobs on the real stack: 10,000 delayed jobs due across the next two minutes and a
schedule that ticks every second, through three replicas while the dispatcher's holder is
SIGKILLed and another replica is drained and restarted.

Every delayed job ends succeeded with one terminal row, none started before its time; every
tick of the schedule is one job. The lateness of the delayed jobs (their start after their
time) is measured and reported, with the share of jobs whose due time fell in the dispatcher's
failover.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobstream.models.schedules import ScheduleSpec, tick_job_id
from jobstream.streams.pg import schedules
from jobstream.streams.producer.client import JobClient
from tests.integration.harness import WorkerFactory, wait_for

pytestmark = pytest.mark.slow

N_JOBS = 10_000
SPREAD_S = 120.0
LEAD_S = 30.0
"""The first job is due this long after the submit starts: time for the workers to keep them
as rows first, also on a busy machine (a job whose time has passed when a worker reads it runs
at once instead, without a row)."""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def leader(pool: asyncpg.Pool, prefix: str) -> str | None:
    holder: str | None = await pool.fetchval(
        "SELECT holder FROM leases WHERE name = $1 AND until > now()", f"dispatcher:{prefix}"
    )
    return holder.split(":", 1)[0] if holder else None  # worker:pid:instance


@pytest.mark.timeout(600)
async def test_delayed_jobs_and_a_schedule_through_a_kill_and_a_drain(
    workers: WorkerFactory,
    kafka_bootstrap: str,
    pg_pool: asyncpg.Pool,
    prefix: str,
    tmp_path: Path,
) -> None:
    seed = random.randrange(2**32)
    load_before = os.getloadavg()[0]  # the machine is shared: the figures say how busy it was
    rng = random.Random(seed)
    replicas = {name: workers.start(name) for name in ("w1", "w2", "w3")}
    await asyncio.gather(*(w.wait_assigned() for w in replicas.values()))

    # a schedule every second, catching up what a failover misses
    name = f"{prefix}-every-second"
    spec = ScheduleSpec(name=name, job_type="echo", every_s=1, missed="catch_up", catch_up_max=60)
    db_now: datetime = await pg_pool.fetchval("SELECT now()")
    assert await schedules.add(pg_pool, prefix, spec, db_now)
    schedule_from = db_now

    started = time.monotonic()
    first_due = datetime.now(UTC) + timedelta(seconds=LEAD_S)
    due_at = {
        f"{prefix}-d{i}": first_due + timedelta(seconds=rng.uniform(0, SPREAD_S))
        for i in range(N_JOBS)
    }
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        ids = await client.submit_many(
            client.build("echo", {"n": i}, job_id=job_id, run_at=at)
            for i, (job_id, at) in enumerate(due_at.items())
        )
    submit_s = round(time.monotonic() - started, 1)
    assert len(ids) == N_JOBS

    async def parked() -> bool:
        n = await pg_pool.fetchval("SELECT count(*) FROM jobs WHERE job_id = ANY($1)", ids)
        return int(n) == N_JOBS

    await wait_for(parked, timeout=90, what="every delayed job kept as a row")
    parked_late = int(
        await pg_pool.fetchval(
            "SELECT count(*) FROM jobs WHERE job_id = ANY($1) AND run_at IS NULL", ids
        )
    )

    # -- a third of the way in: SIGKILL the replica holding the dispatcher's lease --------------
    await asyncio.sleep(max(0.0, LEAD_S + SPREAD_S / 3 - (time.monotonic() - started)))
    victim_name = await leader(pg_pool, prefix)
    assert victim_name in replicas, victim_name
    killed_at = datetime.now(UTC)
    await asyncio.to_thread(replicas[victim_name].kill)
    replicas[victim_name + "b"] = workers.start(victim_name + "b")

    # -- two thirds: SIGTERM another, which drains and starts again -------------------------
    await asyncio.sleep(max(0.0, LEAD_S + 2 * SPREAD_S / 3 - (time.monotonic() - started)))
    drained = next(n for n in ("w1", "w2", "w3") if n != victim_name)
    drained_at = datetime.now(UTC)
    replicas[drained].signal(signal.SIGTERM)
    assert await asyncio.to_thread(replicas[drained].wait, 90) == 0, replicas[drained].tail()
    replicas[drained + "b"] = workers.start(drained + "b")

    async def all_done() -> bool:
        n = await pg_pool.fetchval(
            "SELECT count(*) FROM jobs WHERE job_id = ANY($1) AND status = 'succeeded'", ids
        )
        return int(n) == N_JOBS

    await wait_for(all_done, timeout=240, interval=1.0, what="every delayed job succeeded")
    schedule_until: datetime = await pg_pool.fetchval("SELECT now()")

    rows = await pg_pool.fetch(
        "SELECT job_id, status, run_at, dispatched_at, started_at, executions FROM jobs"
        " WHERE job_id = ANY($1)",
        ids,
    )
    # against the time each job was given (a job read after its time has no run_at: it ran at
    # once), so every job counts
    early = [r["job_id"] for r in rows if r["started_at"] < due_at[r["job_id"]]]
    lateness = [(r["started_at"] - due_at[r["job_id"]]).total_seconds() for r in rows]

    def within(r: asyncpg.Record, at: datetime) -> bool:
        due = due_at[r["job_id"]]
        return bool(at - timedelta(seconds=1) <= due <= at + timedelta(seconds=20))

    def late(r: asyncpg.Record) -> float:
        return float((r["started_at"] - due_at[r["job_id"]]).total_seconds())

    failover = [late(r) for r in rows if within(r, killed_at)]
    drain = [late(r) for r in rows if within(r, drained_at)]
    # the steady state: jobs due away from the kill and the drain (a killed replica's partitions
    # wait for the group's session timeout, whatever the dispatcher does)
    steady = [late(r) for r in rows if not within(r, killed_at) and not within(r, drained_at)]
    reruns = sum(1 for r in rows if r["executions"] > 1)
    # the dispatcher's part alone: its publish after the job's time (a job started twice, or
    # whose publish was repeated, keeps the last publish)
    dispatch = [
        (r["dispatched_at"] - r["run_at"]).total_seconds() for r in rows if r["dispatched_at"]
    ]

    # every tick between the schedule's start and the end is one job, none missing
    await wait_for(
        lambda: _ticks_done(pg_pool, name), timeout=60, what="the schedule's last ticks run"
    )
    ticks = [
        tick_job_id(name, t)
        for t in _ticks(spec, schedule_from, schedule_until - timedelta(seconds=5))
    ]
    tick_rows = await pg_pool.fetch(
        "SELECT job_id, status FROM jobs WHERE job_id LIKE $1", f"schedule:{name}:%"
    )
    fired = {r["job_id"]: r["status"] for r in tick_rows}
    missing_ticks = [t for t in ticks if t not in fired]

    figures: dict[str, Any] = {
        "seed": seed,
        "jobs": N_JOBS,
        "spread_s": SPREAD_S,
        "submit_s": submit_s,
        "killed": victim_name,
        "drained": drained,
        "early": len(early),
        "run_at_once_not_parked": parked_late,
        "lateness_p50_s": round(percentile(lateness, 0.50), 3),
        "lateness_p99_s": round(percentile(lateness, 0.99), 3),
        "lateness_max_s": round(max(lateness), 3),
        "lateness_mean_s": round(statistics.mean(lateness), 3),
        "dispatch_lateness_p50_s": round(percentile(dispatch, 0.50), 3),
        "dispatch_lateness_p99_s": round(percentile(dispatch, 0.99), 3),
        "steady_lateness_p50_s": round(percentile(steady, 0.50), 3),
        "steady_lateness_p99_s": round(percentile(steady, 0.99), 3),
        "jobs_due_in_failover": len(failover),
        "failover_lateness_p50_s": round(percentile(failover, 0.50), 3) if failover else None,
        "failover_lateness_max_s": round(max(failover), 3) if failover else None,
        "jobs_due_in_drain": len(drain),
        "drain_lateness_p99_s": round(percentile(drain, 0.99), 3) if drain else None,
        "reruns_after_the_kill": reruns,
        "schedule_ticks_checked": len(ticks),
        "schedule_ticks_missing": len(missing_ticks),
        "schedule_jobs": len(fired),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    text = json.dumps(figures, indent=2)
    print("timed figures:\n" + text, flush=True)
    for target in (tmp_path / "timed-results.json", os.environ.get("JOBSTREAM_TIMED_REPORT")):
        if target:
            await asyncio.to_thread(Path(target).write_text, text)

    assert len(rows) == N_JOBS
    assert {r["status"] for r in rows} == {"succeeded"}
    assert not early, f"{len(early)} job(s) started before their time, e.g. {early[:5]}"
    assert all(1 <= r["executions"] <= 2 for r in rows)
    assert not missing_ticks, f"{len(missing_ticks)} tick(s) never ran, e.g. {missing_ticks[:5]}"
    assert set(fired.values()) == {"succeeded"}
    for w in replicas.values():
        if w.name not in (victim_name, drained):
            assert w.alive, w.tail()


async def _ticks_done(pool: asyncpg.Pool, name: str) -> bool:
    running = await pool.fetchval(
        "SELECT count(*) FROM jobs WHERE job_id LIKE $1 AND status <> 'succeeded'",
        f"schedule:{name}:%",
    )
    return int(running) == 0


def _ticks(spec: ScheduleSpec, start: datetime, end: datetime) -> list[datetime]:
    out: list[datetime] = []
    for tick in spec.ticks_after(start):
        if tick > end:
            return out
        out.append(tick)
    return out
