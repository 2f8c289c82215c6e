"""Job control in the console against the real PostgreSQL and Kafka: what each role sees on a
job's page (progress, dedupe key, cancel state), the operators' cancel (CSRF, audit, the
outcome record of a job that never started, 409 for a finished one) and the jobs list's
cancel filters."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest

from jobstream.streams.topics import topic_names
from tests.integration.console_support import (
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    client,
    console_settings,
    create_topics,
    login,
    private_database,
    running_console,
)
from tests.integration.harness import topic_reader


@dataclass
class World:
    base: str
    prefix: str
    pool: asyncpg.Pool
    bootstrap: str


@pytest.fixture
async def world(kafka_bootstrap: str, database_url: str, prefix: str) -> AsyncIterator[World]:
    names = topic_names(prefix, (1.0, 2.0, 3.0))
    await create_topics(kafka_bootstrap, names.all())
    async with private_database(database_url) as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        assert pool is not None
        rows = [
            ("run-1", "sleep", "running", 0.4, "page 2 of 5", None),
            ("wait-1", "echo", "scheduled", None, None, f"{prefix}-key"),
            ("done-1", "echo", "succeeded", None, None, None),
        ]
        await pool.execute(
            "INSERT INTO jobs (job_id, type, status, attempt, topic, run_at)"
            " VALUES ('other-1', 'echo', 'scheduled', 1, 'someone-else', now())"
        )
        for job_id, job_type, status, progress, detail, key in rows:
            await pool.execute(
                "INSERT INTO jobs (job_id, type, status, attempt, progress, progress_detail,"
                " progress_at, dedupe_key, topic, run_at, lease_until, claim_token, finished_at,"
                " event)"
                " VALUES ($1, $2, $3, 1, $4, $5, now(), $6, $7,"
                " CASE WHEN $3 = 'scheduled' THEN now() + interval '1 hour' END,"
                " CASE WHEN $3 = 'running' THEN now() + interval '1 minute' END,"
                " CASE WHEN $3 = 'running' THEN 'tok' END,"
                " CASE WHEN $3 = 'succeeded' THEN now() END,"
                " CASE WHEN $3 = 'scheduled' THEN jsonb_build_object('id', $1::text,"
                " 'type', $2::text, 'payload', jsonb_build_object('card', 'card-4111')) END)",
                job_id, job_type, status, progress, detail, key, prefix,
            )  # fmt: skip
        await pool.execute(
            "INSERT INTO dedupe_keys (key, job_id, mode, expires_at)"
            " VALUES ($1, 'wait-1', 'throttle', now() + interval '10 minutes')",
            f"{prefix}-key",
        )
        settings = console_settings(kafka_bootstrap, dsn, prefix)
        try:
            async with running_console(settings) as base:
                yield World(base, prefix, pool, kafka_bootstrap)
        finally:
            await pool.close()


async def _get(s: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with s.get(url, allow_redirects=False) as r:
        text = await r.text()
        json_body = r.headers.get("Content-Type", "").startswith("application/json")
        return r.status, json.loads(text) if json_body else text


async def _cancel(s: aiohttp.ClientSession, url: str, csrf: str | None) -> tuple[int, Any]:
    headers = {"X-CSRF-Token": csrf} if csrf else {}
    async with s.post(url, json={}, headers=headers, allow_redirects=False) as r:
        return r.status, json.loads(await r.text())


async def test_a_viewer_sees_control_but_cannot_cancel(world: World) -> None:
    async with client() as viewer:
        csrf = await login(viewer, world.base, VIEWER_TOKEN)
        status, page = await _get(viewer, world.base + "jobs/run-1")
        assert status == 200
        assert 'id="job-control"' in page
        assert '<progress id="job-progress" max="1" value="0.4">' in page
        assert "40% · page 2 of 5" in page
        assert "job-cancel" not in page.replace("job-cancel-state", "").replace(
            "job-cancel-result", ""
        )
        status, page = await _get(viewer, world.base + "jobs/wait-1")
        assert f"<code>{world.prefix}-key</code> (throttle; held until" in page
        assert "card-4111" not in page  # the outbox event's payload: hidden from a viewer
        assert "(hidden: " in page
        status, body = await _cancel(viewer, world.base + "api/jobs/run-1/cancel", csrf)
        assert status == 403
        assert "operator" in body["error"]
        status, body = await _get(viewer, world.base + "api/jobs/run-1")
        assert body["control"]["progress"] == pytest.approx(0.4)
        assert body["control"]["cancellable"] is True


async def test_an_operator_cancels_audited_and_the_list_filters_them(world: World) -> None:
    base = world.base
    names = topic_names(world.prefix)
    async with client() as op, topic_reader(world.bootstrap, names.outcomes) as outcomes:
        csrf = await login(op, base, OPERATOR_TOKEN)
        status, page = await _get(op, base + "jobs/run-1")
        assert 'id="job-cancel"' in page
        status, _ = await _cancel(op, base + "api/jobs/run-1/cancel", None)
        assert status == 403  # no CSRF token

        status, body = await _cancel(op, base + "api/jobs/run-1/cancel", csrf)
        assert (status, body["cancel"], body["status"]) == (200, "requested", "running")
        status, body = await _cancel(op, base + "api/jobs/wait-1/cancel", csrf)
        assert (status, body["cancel"], body["was"]) == (200, "cancelled", "scheduled")
        status, body = await _cancel(op, base + "api/jobs/done-1/cancel", csrf)
        assert (status, body["cancel"], body["status"]) == (409, "finished", "succeeded")
        assert "finished already" in body["error"]
        # another prefix's job is not this console's to cancel (unless scope=all)
        status, body = await _cancel(op, base + "api/jobs/other-1/cancel", csrf)
        assert status == 404
        assert "another topic prefix" in body["error"]
        # an id with no row: operators may cancel it from its (404) page; it never runs
        status, page = await _get(op, base + "jobs/ghost-1")
        assert status == 404
        assert 'id="job-cancel"' in page
        status, body = await _cancel(op, base + "api/jobs/ghost-1/cancel", csrf)
        assert (status, body["cancel"]) == (200, "cancelled")
        status, body = await _cancel(op, base + "api/jobs/%00/cancel", csrf)
        assert status == 400

        # the outcome records of the two that never started, published by the console
        await outcomes.wait_count(2, timeout=30)
        assert {(o["job_id"], o["status"]) for o in outcomes.json()} == {
            ("wait-1", "cancelled"),
            ("ghost-1", "cancelled"),
        }
        audit = await world.pool.fetch("SELECT job_id, answer, by FROM control_audit ORDER BY id")
        assert [(a["job_id"], a["answer"]) for a in audit] == [
            ("run-1", "requested"),
            ("wait-1", "cancelled"),
            ("done-1", "finished"),
            ("ghost-1", "cancelled"),
        ]
        assert all(a["by"].startswith("console:operator@") for a in audit)
        status, page = await _get(op, base + "jobs/wait-1")
        assert 'id="control-audit"' in page
        assert "console:operator@" in page
        assert 'id="job-cancel"' not in page  # finished now: no button

        status, body = await _get(op, base + "api/jobs?status=cancelled")
        assert {j["job_id"] for j in body["items"]} == {"wait-1", "ghost-1"}
        status, body = await _get(op, base + "api/jobs?cancel=requested")
        assert {j["job_id"] for j in body["items"]} == {"run-1", "wait-1", "ghost-1"}
        status, body = await _get(op, base + "api/jobs?cancel=maybe")
        assert status == 400
        assert "cancel must be requested" in body["error"]
        status, page = await _get(op, base + "jobs?status=cancelled")
        assert 'id="filter-cancelled"' in page
