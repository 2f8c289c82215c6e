"""``jobstream submit`` and ``jobstream status`` as an operator runs them."""

from __future__ import annotations

import json
import os

import asyncpg

from tests.integration.harness import WorkerFactory, run_cli, wait_terminal


async def test_submit_then_status(
    workers: WorkerFactory,
    kafka_bootstrap: str,
    database_url: str,
    pg_pool: asyncpg.Pool,
    prefix: str,
) -> None:
    worker = workers.start()
    await worker.wait_assigned()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSTREAM_")}
    env |= {
        "JOBSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "JOBSTREAM_DATABASE_URL": database_url,
        "JOBSTREAM_TOPIC_PREFIX": prefix,
    }
    code, out = await run_cli("submit", "echo", "--payload", '{"n": 7}', "--count", "3", env=env)
    assert code == 0, out
    ids = [line for line in out.split() if len(line) == 32]
    assert len(ids) == 3 and len(set(ids)) == 3

    await wait_terminal(pg_pool, ids, timeout=60)
    code, out = await run_cli("status", ids[0], env=env)
    assert code == 0, out
    row = json.loads(out[out.index("{") :])
    assert (row["job_id"], row["status"], row["result"]["echo"]) == (ids[0], "succeeded", {"n": 7})

    code, out = await run_cli("status", "no-such-job", env=env)
    assert code == 1 and "no row yet" in out
    code, out = await run_cli("submit", "echo", "--payload", "[1]", env=env)
    assert code == 2 and "JSON object" in out
