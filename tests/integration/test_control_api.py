"""Job control through the HTTP API of real workers: a dedupe key on ``POST /jobs`` (202 for the
new job, 200 for the one folded into it), ``POST /jobs/{id}/cancel`` in each state, and the
bounded long poll ``GET /jobs/{id}?wait=S``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import asyncpg

from tests.integration.harness import WorkerFactory, wait_for

APP = "tests.control_app:app"


async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    body: dict[str, Any] = await resp.json()
    return body


async def test_dedupe_cancel_and_long_poll_over_http(
    workers: WorkerFactory, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    a = workers.start("a", JOBSTREAM_APP=APP)
    b = workers.start("b", JOBSTREAM_APP=APP)
    await asyncio.gather(a.wait_assigned(), b.wait_assigned())
    base_a, base_b = (f"http://127.0.0.1:{w.web_port}" for w in (a, b))
    async with aiohttp.ClientSession() as http:

        async def post(base: str, body: Any) -> tuple[int, dict[str, Any]]:
            async with http.post(f"{base}/jobs", json=body) as r:
                return r.status, await _json(r)

        # one key through two replicas' APIs at once: one new job, the rest answered with it
        job = {"type": "steps", "payload": {"n": 1, "steps": 2, "seconds": 1}}
        key = {"key": f"{prefix}-http", "mode": "simple"}
        answers = await asyncio.gather(
            *(post(base_a if i % 2 else base_b, {**job, "dedupe": key}) for i in range(10))
        )
        statuses = sorted(s for s, _ in answers)
        assert statuses == [200] * 9 + [202], answers
        ids = {body["id"] for _, body in answers}
        assert len(ids) == 1
        assert sum(body["deduplicated"] for _, body in answers) == 9
        [job_id] = ids

        # the long poll answers when the job finished, not at its bound
        started = time.monotonic()
        async with http.get(f"{base_a}/jobs/{job_id}?wait=30") as r:
            assert r.status == 200
            done = await _json(r)
        assert done["status"] == "succeeded"
        assert done["dedupe_key"] == key["key"]
        assert time.monotonic() - started < 20

        # an unknown id waits out its bound, then answers 404 as without waiting
        started = time.monotonic()
        async with http.get(f"{base_b}/jobs/{prefix}-nobody?wait=1") as r:
            assert r.status == 404
        assert time.monotonic() - started >= 1

        # cancel: a running job (202, requested), then it is finished (409 with its status)
        async with http.post(
            f"{base_a}/jobs",
            json={"type": "steps", "payload": {"steps": 600, "seconds": 600}},
        ) as r:
            long_id = (await _json(r))["id"]

        async def progressing() -> dict[str, Any] | None:
            async with http.get(f"{base_b}/jobs/{long_id}") as r:
                body = await _json(r)
            return body if r.status == 200 and body.get("progress") is not None else None

        seen = await wait_for(progressing, timeout=30, what="progress in GET /jobs/{id}")
        assert seen["status"] == "running"
        assert seen["progress_detail"].startswith("step ")
        async with http.post(f"{base_b}/jobs/{long_id}/cancel") as r:
            assert r.status == 202
            assert await _json(r) == {
                "id": long_id,
                "cancel": "requested",
                "status": "running",
                "was": "running",
            }
        async with http.get(f"{base_a}/jobs/{long_id}?wait=30") as r:
            ended = await _json(r)
        assert ended["status"] == "cancelled"
        assert ended["cancel_requested_at"] is not None
        async with http.post(f"{base_a}/jobs/{long_id}/cancel") as r:
            assert r.status == 409
            body = await _json(r)
        assert (body["error"], body["status"], body["id"]) == (
            "already_finished",
            "cancelled",
            long_id,
        )

        # an id not submitted yet: cancelled now (200), and its submit later never runs
        ghost = f"{prefix}-ghost"
        async with http.post(f"{base_a}/jobs/{ghost}/cancel") as r:
            assert r.status == 200
            assert (await _json(r))["cancel"] == "cancelled"
        status, _ = await post(base_b, {"type": "echo", "id": ghost})
        assert status == 202
        async with http.get(f"{base_b}/jobs/{ghost}?wait=5") as r:
            assert (await _json(r))["status"] == "cancelled"
    by = await pg_pool.fetch(
        "SELECT by FROM control_audit WHERE job_id = ANY($1) ORDER BY id", [long_id, ghost]
    )
    assert [r["by"] for r in by] == ["api from 127.0.0.1"] * 3
    row = await pg_pool.fetchrow("SELECT executions FROM jobs WHERE job_id = $1", ghost)
    assert row is not None
    assert row["executions"] == 0
