"""``jobstream submit`` and ``jobstream status`` as an operator runs them."""

from __future__ import annotations

import json

import asyncpg

from tests.integration.harness import WorkerFactory, wait_terminal


async def test_submit_then_status(
    workers: WorkerFactory,
    kafka_bootstrap: str,
    database_url: str,
    pg_pool: asyncpg.Pool,
    prefix: str,
) -> None:
    worker = workers.start()
    await worker.wait_assigned()
    code, out = await workers.cli("submit", "echo", "--payload", '{"n": 7}', "--count", "3")
    assert code == 0, out
    ids = [line for line in out.split() if len(line) == 32]
    assert len(ids) == 3
    assert len(set(ids)) == 3

    await wait_terminal(pg_pool, ids, timeout=60)
    code, out = await workers.cli("status", ids[0])
    assert code == 0, out
    row = json.loads(out[out.index("{") :])
    assert (row["job_id"], row["status"], row["result"]["echo"]) == (ids[0], "succeeded", {"n": 7})

    code, out = await workers.cli("status", "no-such-job")
    assert code == 1
    assert "no row yet" in out
    code, out = await workers.cli("submit", "echo", "--payload", "[1]")
    assert code == 2
    assert "JSON object" in out
