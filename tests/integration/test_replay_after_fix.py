"""An operator's loop: a webhook receiver refuses jobs, they are dead-lettered; the receiver is
fixed; ``jobstream dlq replay`` turns the dead letters into successes, once."""

from __future__ import annotations

import json

import asyncpg
from aiohttp import web

from jobstream.streams.dev.replicas import free_port
from jobstream.streams.producer.client import JobClient
from tests.integration.harness import WorkerFactory, wait_for, wait_terminal


async def test_replay_after_fixing_the_cause(
    workers: WorkerFactory,
    kafka_bootstrap: str,
    database_url: str,
    pg_pool: asyncpg.Pool,
    prefix: str,
) -> None:
    state = {"status": 400}
    received: list[dict[str, object]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"ok": state["status"] == 200}, status=state["status"])

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        worker = workers.start(JOBSTREAM_WEBHOOK_ALLOW_HOSTS=json.dumps([f"127.0.0.1:{port}"]))
        await worker.wait_assigned()
        url = f"http://127.0.0.1:{port}/hook"
        async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
            ids = await client.submit_many(
                [client.build("http.webhook", {"url": url, "body": {"n": i}}) for i in range(5)]
            )
        await wait_terminal(pg_pool, ids, timeout=60)
        statuses = await pg_pool.fetch("SELECT status FROM jobs WHERE job_id = ANY($1)", ids)
        assert {r["status"] for r in statuses} == {"dead_lettered"}  # 4xx is fatal: no retry
        assert len(received) == 5

        state["status"] = 200  # the receiver is fixed
        code, out = await workers.cli("dlq", "replay", "--type", "http.webhook", "--rate", "0")
        assert code == 0, out

        async def all_succeeded() -> bool:
            q = "SELECT count(*) FROM jobs WHERE job_id = ANY($1) AND status = 'succeeded'"
            return bool(await pg_pool.fetchval(q, ids) == len(ids))

        await wait_for(all_succeeded, timeout=60, what="replayed jobs succeeded")
        rows = await pg_pool.fetch(
            "SELECT replay_of, executions FROM jobs WHERE job_id = ANY($1)", ids
        )
        assert all(r["replay_of"] for r in rows)  # each success names the dead letter it came from
        assert {r["executions"] for r in rows} == {2}

        # replaying again republishes nothing: the audit says they were replayed already
        code, out = await workers.cli("dlq", "replay", "--type", "http.webhook", "--json")
        assert code == 0, out
        print(out)
        assert len(received) == 10
    finally:
        await runner.cleanup()
