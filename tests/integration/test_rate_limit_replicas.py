"""The global rate limit across three worker processes, against the fake OpenRouter server.

The fake enforces its own limit of R req/s (429 + Retry-After above it); the replicas share
an R req/s limit through PostgreSQL. The rate the server observes must stay within 5 % of R
and it must (almost) never have to say 429.
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg

from jobstream.streams.dev.fake_openrouter import FakeConfig, FakeOpenRouter
from jobstream.streams.producer.client import JobClient
from tests.integration.harness import WorkerFactory, wait_terminal

RATE = 20.0
BURST = 5
JOBS = 320


async def test_three_replicas_share_one_rate_limit(
    workers: WorkerFactory,
    kafka_bootstrap: str,
    pg_pool: asyncpg.Pool,
    prefix: str,
    tmp_path: Path,
) -> None:
    key = f"openrouter-{prefix}"  # a bucket of its own: other tests may use "openrouter"
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"llm.chat": {"rate_limit_key": key}}))
    async with FakeOpenRouter(FakeConfig(rate_limit=RATE, latency_ms=30)) as fake:
        assert fake.base_url is not None  # set once it listens
        env: dict[str, str] = {
            "JOBSTREAM_OPENROUTER_BASE_URL": fake.base_url,
            "JOBSTREAM_OPENROUTER_API_KEY": "test-key",
            # a smaller burst than the server's leaves it headroom for network jitter
            "JOBSTREAM_RATE_LIMITS": json.dumps({key: {"rate": RATE, "per": 1, "burst": BURST}}),
            "JOBSTREAM_POLICY_FILE": str(policy),
            "JOBSTREAM_CONCURRENCY": "50",
        }
        replicas = [workers.start(f"r{i}", **env) for i in range(3)]
        for replica in replicas:
            await replica.wait_assigned()
        async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
            ids = await client.submit_many(
                [
                    client.build("llm.chat", {"messages": [{"role": "user", "content": f"q{i}"}]})
                    for i in range(JOBS)
                ]
            )
        await wait_terminal(pg_pool, ids, timeout=JOBS / RATE * 3 + 30)
        stats = fake.stats

    rows = await pg_pool.fetch(
        "SELECT status, worker FROM jobs WHERE job_id = ANY($1::text[])", ids
    )
    assert {r["status"] for r in rows} == {"succeeded"}
    assert len({r["worker"] for r in rows}) == 3  # all three replicas called the upstream

    ok = stats.timestamps(200)
    # The shared bucket starts full (BURST tokens), so the first requests may come at once;
    # the steady rate is measured from the arrival after them to the last one.
    start = BURST * 2
    observed = (len(ok) - 1 - start) / (ok[-1] - ok[start])
    print(f"observed {observed:.2f} req/s for a limit of {RATE}, 429s: {stats.rate_limited}")
    assert abs(observed - RATE) <= 0.05 * RATE, observed
    assert stats.rate_limited <= 2, stats.by_status
