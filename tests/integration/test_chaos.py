"""Chaos: 20,000 mixed jobs through 3 replicas while one is SIGKILLed and another restarted.

The mix is 70 % echo (fast), 15 % sleep 0.2-1 s (slow), 10 % sleep failing its first 1-2
attempts (retryable, then ok) and 5 % sleep fatal=true. At 25 % of the rows terminal one replica
is SIGKILLed and a replacement started; at 50 % another gets SIGTERM (drain), exits, and is
started again. At the end every job id has exactly one row with the status its kind must end
in, nothing is missing, every succeeded job has an outcome and every fatal one a dead letter.

Duplicate handler executions (sum of ``executions`` beyond the attempts each job needs) and
re-emitted outcomes are what the kills cost; they are measured and reported, not asserted to
be zero. The figures are printed and written as JSON to ``chaos-results.json`` in the test's
tmp dir, and to ``$JOBSTREAM_CHAOS_REPORT`` when that is set.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobstream.streams.producer.client import JobClient
from jobstream.streams.topics import topic_names
from tests.integration.harness import WorkerFactory, quiescent, topic_reader, wait_for

pytestmark = pytest.mark.slow

N_JOBS = 20_000
MIX = {"echo": 0.70, "slow": 0.15, "retryable": 0.10, "fatal": 0.05}
PUBLISH_CHUNK = 2_000
DEADLINE_S = 600.0  # publish start -> every job terminal
WORKER_ENV = {"JOBSTREAM_CONCURRENCY": "50"}
TIERS = (1.0, 2.0, 3.0)  # the harness's JOBSTREAM_RETRY_TIERS_S
TERMINAL = ("succeeded", "dead_lettered")


@dataclass(frozen=True)
class Planned:
    job_id: str
    kind: str
    type: str
    payload: dict[str, Any]

    @property
    def expected_status(self) -> str:
        return "dead_lettered" if self.kind == "fatal" else "succeeded"

    @property
    def expected_attempt(self) -> int:
        return int(self.payload.get("fail_attempts", 0)) + 1

    @property
    def expected_executions(self) -> int:
        return self.expected_attempt  # each attempt writes (and counts) exactly once


def plan_jobs(prefix: str, rng: random.Random) -> list[Planned]:
    kinds = [k for k, share in MIX.items() for _ in range(round(N_JOBS * share))]
    assert len(kinds) == N_JOBS
    rng.shuffle(kinds)
    jobs = []
    for i, kind in enumerate(kinds):
        job_id = f"{prefix}-{kind}-{i}"
        if kind == "echo":
            jobs.append(Planned(job_id, kind, "echo", {"n": i}))
        elif kind == "slow":
            seconds = round(rng.uniform(0.2, 1.0), 3)
            jobs.append(Planned(job_id, kind, "sleep", {"seconds": seconds}))
        elif kind == "retryable":
            fails = rng.randint(1, 2)
            jobs.append(Planned(job_id, kind, "sleep", {"seconds": 0, "fail_attempts": fails}))
        else:
            jobs.append(Planned(job_id, kind, "sleep", {"seconds": 0, "fatal": True}))
    return jobs


class Progress:
    """Terminal rows among the test's job ids, polled at most once a second."""

    def __init__(self, pool: asyncpg.Pool, job_ids: list[str], started: float) -> None:
        self.pool = pool
        self.job_ids = job_ids
        self.started = started
        self.last = 0
        self._printed = 0.0

    async def terminal(self) -> int:
        self.last = int(
            await self.pool.fetchval(
                "SELECT count(*) FROM jobs WHERE job_id = ANY($1::text[])"
                " AND status IN ('succeeded', 'dead_lettered')",
                self.job_ids,
            )
        )
        elapsed = time.monotonic() - self.started
        if elapsed - self._printed >= 15:
            self._printed = elapsed
            print(f"  [{elapsed:6.1f}s] terminal {self.last}/{len(self.job_ids)}", flush=True)
        return self.last

    async def reach(self, fraction: float, what: str) -> float:
        """Wait until ``fraction`` of the jobs are terminal; returns the elapsed seconds."""
        target = int(len(self.job_ids) * fraction)

        async def reached() -> bool:
            return await self.terminal() >= target

        remaining = self.started + DEADLINE_S - time.monotonic()
        await wait_for(reached, timeout=max(remaining, 1.0), interval=1.0, what=what)
        return round(time.monotonic() - self.started, 1)


async def read_all(bootstrap: str, topic: str, timeout: float = 120) -> list[dict[str, Any]]:
    """Every record of ``topic`` (read up to the end offsets as of now), parsed as JSON."""
    async with topic_reader(bootstrap, topic) as reader:
        total = sum((await reader.end_offsets()).values())
        await reader.wait_count(total, timeout=timeout)
        return reader.json()


def write_report(figures: dict[str, Any], tmp_path: Path) -> None:
    text = json.dumps(figures, indent=2, sort_keys=True)
    (tmp_path / "chaos-results.json").write_text(text)
    target = os.environ.get("JOBSTREAM_CHAOS_REPORT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(text)
    print("chaos figures:\n" + text, flush=True)


@pytest.mark.timeout(DEADLINE_S + 300)
async def test_chaos_kill_and_restart_replicas_under_load_loses_nothing(
    workers: WorkerFactory,
    kafka_bootstrap: str,
    pg_pool: asyncpg.Pool,
    prefix: str,
    tmp_path: Path,
) -> None:
    seed = random.randrange(2**32)
    print(f"\nchaos: prefix={prefix} seed={seed}", flush=True)
    jobs = plan_jobs(prefix, random.Random(seed))
    by_id = {j.job_id: j for j in jobs}
    ids = list(by_id)
    names = topic_names(prefix, TIERS)

    first = [workers.start(f"w{i}", **WORKER_ENV) for i in (1, 2, 3)]
    await asyncio.gather(*(w.wait_assigned() for w in first))
    victim, restarted, survivor = first

    # -- publish everything, then break things while it flows ----------------------------------
    started = time.monotonic()
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
        for at in range(0, N_JOBS, PUBLISH_CHUNK):
            chunk = jobs[at : at + PUBLISH_CHUNK]
            await client.submit_many(
                client.build(j.type, j.payload, job_id=j.job_id) for j in chunk
            )
    publish_s = round(time.monotonic() - started, 1)
    print(f"  published {N_JOBS} jobs in {publish_s}s", flush=True)
    progress = Progress(pg_pool, ids, started)

    sigkill_at = await progress.reach(0.25, "25% of the jobs terminal")
    sigkill_progress = progress.last
    await asyncio.to_thread(victim.kill)  # SIGKILL
    replacement = workers.start("w4", **WORKER_ENV)
    print(f"  [{sigkill_at:6.1f}s] SIGKILL {victim.name}; started {replacement.name}", flush=True)

    sigterm_at = await progress.reach(0.50, "50% of the jobs terminal")
    sigterm_progress = progress.last
    restarted.signal(signal.SIGTERM)
    sigterm_exit = await asyncio.to_thread(restarted.wait, 90)
    drained_s = round(time.monotonic() - started - sigterm_at, 1)
    again = workers.start(restarted.name, **WORKER_ENV)
    print(
        f"  [{sigterm_at:6.1f}s] SIGTERM {restarted.name}: exit {sigterm_exit} after"
        f" {drained_s}s; started it again",
        flush=True,
    )

    all_terminal: float | None = None
    try:
        all_terminal = await progress.reach(1.0, f"all {N_JOBS} jobs terminal")
    except AssertionError as exc:
        print(f"  not all terminal by the deadline: {exc}", flush=True)
    wall_s = round(time.monotonic() - started, 1)

    # -- collect: rows, outcomes, dead letters ------------------------------------------------
    lag: dict[str, int] = {}
    consumed = [names.main, *(t.topic for t in names.tiers)]
    if all_terminal is not None:  # replays of already-finished records may still be running

        async def no_lag() -> dict[str, int] | None:
            nonlocal lag
            lag = await quiescent(kafka_bootstrap, prefix, consumed)
            return lag if not any(lag.values()) else None

        try:
            await wait_for(no_lag, timeout=120, interval=1.0, what="zero consumer lag")
        except AssertionError:
            print(f"  consumer lag did not reach zero: {lag}", flush=True)

    rows = {
        r["job_id"]: r
        for r in await pg_pool.fetch(
            "SELECT job_id, status, attempt, executions, worker FROM jobs"
            " WHERE job_id = ANY($1::text[])",
            ids,
        )
    }
    outcomes = await read_all(kafka_bootstrap, names.outcomes)
    letters = await read_all(kafka_bootstrap, names.dlq)

    outcome_ids = Counter(o["job_id"] for o in outcomes if o["status"] == "succeeded")
    fatal_letters = Counter(d["job_id"] for d in letters if d["reason"] == "fatal_error")
    missing = [i for i in ids if i not in rows]
    not_terminal = [i for i, r in rows.items() if r["status"] not in TERMINAL]
    wrong_status = [
        (i, by_id[i].kind, r["status"])
        for i, r in rows.items()
        if r["status"] in TERMINAL and r["status"] != by_id[i].expected_status
    ]
    wrong_attempt = [
        (i, r["attempt"])
        for i, r in rows.items()
        if r["status"] in TERMINAL and r["attempt"] != by_id[i].expected_attempt
    ]
    too_few = [i for i, r in rows.items() if r["executions"] < by_id[i].expected_executions]
    extra = {i: r["executions"] - by_id[i].expected_executions for i, r in rows.items()}
    succeeded = [i for i in ids if by_id[i].expected_status == "succeeded"]
    fatal = [i for i in ids if by_id[i].kind == "fatal"]

    figures = {
        "jobs_submitted": N_JOBS,
        "mix": dict(Counter(j.kind for j in jobs)),
        "replicas": 3,
        "concurrency": int(WORKER_ENV["JOBSTREAM_CONCURRENCY"]),
        "seed": seed,
        "prefix": prefix,
        "terminal_rows": sum(1 for r in rows.values() if r["status"] in TERMINAL),
        "missing": len(missing),
        "not_terminal": len(not_terminal),
        "wrong_status": len(wrong_status),
        "wrong_attempt": len(wrong_attempt),
        "duplicate_executions": sum(extra.values()),
        "jobs_executed_more_than_needed": dict(
            Counter(by_id[i].kind for i, n in extra.items() if n > 0)
        ),
        "outcomes": len(outcomes),
        "reemitted_outcomes": sum(1 for o in outcomes if o["reemitted"]),
        "succeeded_without_outcome": sum(1 for i in succeeded if not outcome_ids[i]),
        "dead_letters": len(letters),
        "fatal_without_dead_letter": sum(1 for i in fatal if not fatal_letters[i]),
        "fatal_with_several_dead_letters": sum(1 for i in fatal if fatal_letters[i] > 1),
        "rows_by_worker": dict(Counter(r["worker"] for r in rows.values())),
        "publish_s": publish_s,
        "sigkill": {"worker": victim.name, "at_s": sigkill_at, "terminal": sigkill_progress},
        "sigterm": {
            "worker": restarted.name,
            "at_s": sigterm_at,
            "terminal": sigterm_progress,
            "exit_code": sigterm_exit,
            "drain_s": drained_s,
        },
        "all_terminal_s": all_terminal,
        "wall_time_s": wall_s,
        "final_lag": lag,
        "workers_alive_at_end": {w.name: w.alive for w in (survivor, replacement, again)},
    }
    write_report(figures, tmp_path)

    # -- verdict ------------------------------------------------------------------------------
    assert not missing, f"{len(missing)} job(s) without a row, e.g. {missing[:10]}"
    assert not not_terminal, f"{len(not_terminal)} job(s) not terminal, e.g. {not_terminal[:10]}"
    assert len(rows) == N_JOBS  # job_id is the primary key: one row each
    assert not wrong_status, f"wrong terminal status, e.g. {wrong_status[:10]}"
    assert not wrong_attempt, f"wrong final attempt, e.g. {wrong_attempt[:10]}"
    assert not too_few, f"fewer executions than attempts, e.g. {too_few[:10]}"
    assert figures["succeeded_without_outcome"] == 0
    assert figures["fatal_without_dead_letter"] == 0
    assert sigterm_exit == 0, again.tail()
    for w in (survivor, replacement, again):
        assert w.alive, f"{w.name} died:\n{w.tail()}"
    assert not any(lag.values()), f"consumer group never caught up: {lag}"
