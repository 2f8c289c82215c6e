"""The timed scenarios of ``make bench``: many scheduled jobs due in the same minute, held as
PostgreSQL rows and published by the dispatcher, or held by a retry tier's forwarders (the
alternative the design weighed for short delays).

Both variants run the same jobs (echo, ids and due times from one seeded draw) through real
worker processes:

* ``timed-100k`` (``rows``): the jobs are submitted delayed by an hour (every worker parks its
  share as ``scheduled`` rows), then re-timed in one statement so that they fall due across one
  minute that starts a few seconds later. The dispatcher publishes them as they fall due.
  ``timed-burst`` is the same with every job due at the same instant: the dispatcher's rate.
* ``timed-tier`` (``tier``): the same due times, as events with ``not_before`` published to the
  first retry tier's topic in random order (delays of different lengths are submitted in no
  order of their due time); each replica's forwarders hold them (``asyncio.sleep``) and
  republish each when due.

Figures: the dispatcher's lateness (``dispatched_at - run_at``, rows only), the start lateness
(``started_at - run_at``: due to claimed, both variants), the dispatch rate (jobs published per
second: overall from the first due time to the last publish, and the busiest second), the time
until the last job succeeded, and the replicas' peak RSS while the jobs waited and ran.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from jobstream.streams.dev.bench.report import Scenario, latency_summary, peak_rss_mb
from jobstream.streams.dev.bench.sampling import RssSampler
from jobstream.streams.polling import wait_until

if TYPE_CHECKING:
    from jobstream.streams.dev.bench.run import Bench
    from jobstream.streams.dev.process import Child

LEAD_S = 15.0
"""The first job falls due this long after the due times are set: every replica is idle by
then, so the minute measures the dispatch and nothing before it."""
TIER_LEAD_S = 60.0
"""The tier's events carry their due time when they are published: the publish of 100,000 of
them must be over before the first is due."""
SEED = 18
BULK_TIMEOUT_S = 600.0
"""Statements over all the scenario's rows: the pool's 30 s command timeout is for workers."""
TIER_FORWARDERS = 5000
"""Events each replica's tier holds at once (``JOBSTREAM_RETRY_FORWARDERS``, its maximum):
the tier alternative at its most capable."""


def due_offsets(n: int, spread_s: float, seed: int = SEED) -> list[float]:
    """Seconds after the start of the minute at which each of ``n`` jobs falls due."""
    rng = random.Random(seed)
    return [rng.uniform(0, spread_s) if spread_s > 0 else 0.0 for _ in range(n)]


def busiest_second(instants: Sequence[datetime]) -> int:
    """The most jobs published within one wall-clock second."""
    counts = Counter(int(t.timestamp()) for t in instants)
    return max(counts.values(), default=0)


def timed_figures(
    rows: Sequence[Mapping[str, Any]], due: Mapping[str, datetime], *, rows_variant: bool
) -> dict[str, Any]:
    """The figures of a finished run: ``rows`` are the jobs' rows (``job_id``, ``started_at``,
    ``finished_at``, ``dispatched_at``), ``due`` each job's due time."""
    start_ms = [(r["started_at"] - due[r["job_id"]]).total_seconds() * 1000 for r in rows]
    first_due = min(due.values())
    finished = max(r["finished_at"] for r in rows)
    out: dict[str, Any] = {
        "start_lateness_ms": latency_summary(start_ms),
        "early": sum(1 for ms in start_ms if ms < 0),
        "last_succeeded_after_first_due_s": round((finished - first_due).total_seconds(), 3),
        "due_span_s": round((max(due.values()) - first_due).total_seconds(), 3),
    }
    if rows_variant:
        dispatched = [r["dispatched_at"] for r in rows]
        out["dispatch_lateness_ms"] = latency_summary(
            [(r["dispatched_at"] - due[r["job_id"]]).total_seconds() * 1000 for r in rows]
        )
        span = (max(dispatched) - first_due).total_seconds()
        out["dispatch_rate_per_s"] = round(len(rows) / span, 1) if span > 0 else None
        out["dispatch_busiest_second"] = busiest_second(dispatched)
    return out


async def run_timed(
    bench: Bench,
    spec: Scenario,
    prefix: str,
    jobs: int,
    children: list[Child],
    result: dict[str, Any],
) -> None:
    """One timed scenario; its figures go into ``result["timed"]`` (and the common keys)."""
    from jobstream.streams.dev.bench.run import _say, worker_settings
    from jobstream.streams.dev.replicas import free_port
    from jobstream.streams.topics import topic_names

    variant = "tier" if spec.name.endswith("tier") else "rows"
    spread = 0.0 if spec.name.endswith("burst") else 60.0
    topics = topic_names(prefix)
    await bench._ensure_topics(topics.all())
    extra = {"JOBSTREAM_RETRY_FORWARDERS": str(TIER_FORWARDERS)} if variant == "tier" else {}
    ports = [free_port() for _ in range(spec.replicas)]
    workers = [bench._start_worker(spec, prefix, i, p, extra) for i, p in enumerate(ports)]
    children.extend(workers)
    result["worker_settings"] = worker_settings(workers[0].env)
    await bench._wait_assigned(prefix, workers, marker="Worker ready", web_ports=ports)
    result["logs"] = [str(c.log_path) for c in children]

    ids = [f"{prefix}-{i:07d}" for i in range(jobs)]
    offsets = due_offsets(jobs, spread)
    rss = RssSampler({c.name: c.pid for c in workers}).start()
    try:
        if variant == "rows":
            due = await _rows(bench, prefix, ids, offsets, result)
        else:
            due = await _tier(bench, prefix, ids, offsets, topics.tiers[0].topic, result)
        _say(f"{spec.name}: {jobs} jobs due from {min(due.values()).isoformat()}")
        started = time.time()

        async def done() -> bool:
            for w in workers:
                if not w.alive:
                    raise RuntimeError(f"{w.name} exited early:\n{w.tail()}")
            n = await bench.pool.fetchval(
                "SELECT count(*) FROM jobs WHERE topic = $1 AND status = 'succeeded'",
                prefix,
                timeout=BULK_TIMEOUT_S,
            )
            result["completed"] = int(n)
            return int(n) >= jobs

        await wait_until(done, within_s=bench.timeout_s, interval_s=2.0, what="every timed job")
        result["duration_s"] = round(time.time() - started, 3)
    finally:
        result["rss_mb"] = peak_rss_mb(await rss.stop())
    rows = await bench.pool.fetch(
        "SELECT job_id, started_at, finished_at, dispatched_at, executions FROM jobs"
        " WHERE topic = $1",
        prefix,
        timeout=BULK_TIMEOUT_S,
    )
    result["statuses"] = {"succeeded": len(rows)}
    result["rows"] = {"executions_over_1": sum(1 for r in rows if r["executions"] > 1)}
    figures = timed_figures(rows, due, rows_variant=variant == "rows")
    figures |= {"variant": variant, "spread_s": spread, "forwarders": TIER_FORWARDERS}
    result["timed"] = figures
    # the common columns: a job's latency here is its start after its due time
    result["latency_ms"] = figures["start_lateness_ms"]
    result["jobs_per_s"] = figures.get("dispatch_rate_per_s")


async def _rows(
    bench: Bench, prefix: str, ids: list[str], offsets: list[float], result: dict[str, Any]
) -> dict[str, datetime]:
    """Submit the jobs an hour ahead, wait until every one is a scheduled row, then make them
    due across the minute starting ``LEAD_S`` from now (the database's clock)."""
    from jobstream.streams.dev.bench.run import _say
    from jobstream.streams.producer.client import JobClient

    later = datetime.now(UTC) + timedelta(hours=1)
    started = time.time()
    async with JobClient(bench.bootstrap, topic_prefix=prefix, options=bench.kafka_options) as c:
        for first in range(0, len(ids), bench.chunk):
            chunk = ids[first : first + bench.chunk]
            await c.submit_many(
                c.build("echo", {"n": first + k}, job_id=j, run_at=later)
                for k, j in enumerate(chunk)
            )
    result["publish_s"] = round(time.time() - started, 3)

    async def parked() -> bool:
        n = await bench.pool.fetchval(
            "SELECT count(*) FROM jobs WHERE topic = $1 AND status = 'scheduled'",
            prefix,
            timeout=BULK_TIMEOUT_S,
        )
        return int(n) >= len(ids)

    await wait_until(parked, within_s=bench.timeout_s, interval_s=2.0, what="the scheduled rows")
    parked_s = round(time.time() - started, 3)
    result["timed_parked_s"] = parked_s
    _say(f"{len(ids)} scheduled rows parked {parked_s}s after the first publish")
    start: datetime = await bench.pool.fetchval("SELECT now()") + timedelta(seconds=LEAD_S)
    due = {j: start + timedelta(seconds=o) for j, o in zip(ids, offsets, strict=True)}
    await bench.pool.execute(
        "UPDATE jobs AS j SET run_at = t.run_at FROM unnest($1::text[], $2::timestamptz[])"
        " AS t(job_id, run_at) WHERE j.job_id = t.job_id AND j.status = 'scheduled'",
        ids,
        [due[j] for j in ids],
        timeout=BULK_TIMEOUT_S,
    )
    return due


async def _tier(
    bench: Bench,
    prefix: str,
    ids: list[str],
    offsets: list[float],
    tier_topic: str,
    result: dict[str, Any],
) -> dict[str, datetime]:
    """The same jobs as events with ``not_before`` on a retry tier, in random order of their
    due time."""
    from aiokafka import AIOKafkaProducer

    from jobstream.models.job import JobEvent

    start = datetime.now(UTC) + timedelta(seconds=TIER_LEAD_S)
    due = {j: start + timedelta(seconds=o) for j, o in zip(ids, offsets, strict=True)}
    order = list(ids)
    random.Random(SEED + 1).shuffle(order)  # delays of many lengths: no order of due time
    producer = AIOKafkaProducer(
        bootstrap_servers=bench.bootstrap, linger_ms=5, acks="all", **bench.kafka_options
    )
    await producer.start()
    started = time.time()
    try:
        futures: list[asyncio.Future[Any]] = []
        for k, j in enumerate(order):
            event = JobEvent(id=j, type="echo", payload={"n": k}, not_before=due[j])
            futures.append(await producer.send(tier_topic, event.to_bytes(), key=j.encode()))
            if len(futures) >= bench.chunk:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    result["publish_s"] = round(time.time() - started, 3)
    return due
