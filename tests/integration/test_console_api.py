"""Every endpoint of the console against the real PostgreSQL and Kafka: access, CSRF, filters,
pagination bounds, bad input, and replay through the DLQ tool's code path."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from yarl import URL

from jobstream.models.deadletter import DeadLetter, DeadLetterReason, b64
from jobstream.models.job import FailureRecord, JobEvent
from jobstream.streams.console.server import serve
from jobstream.streams.topics import topic_names
from tests.integration.console_support import (
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    client,
    console_settings,
    create_topics,
    csrf_of,
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
    jobs: list[dict[str, Any]]
    letters: list[DeadLetter]
    now: datetime
    dsn: str


def _job(i: int, now: datetime) -> dict[str, Any]:
    status = ("succeeded", "dead_lettered", "retrying")[i % 3]
    return {
        "job_id": f"job-{i:03d}",
        "type": "echo" if i % 2 else "sleep",
        "status": status,
        "attempt": 1 + (i % 3 == 2),
        "result": {"echo": {"secret": f"payload-{i}"}} if status == "succeeded" else None,
        "error": "boom" if status == "dead_lettered" else None,
        "error_class": "FatalError" if status == "dead_lettered" else None,
        "worker": f"w{i % 2}",
        "created_at": now - timedelta(minutes=30 + i),
        "finished_at": now - timedelta(minutes=i),
        "updated_at": now - timedelta(minutes=i),
    }


def _letter(
    prefix: str, i: int, reason: DeadLetterReason, job_type: str, now: datetime
) -> DeadLetter:
    event = JobEvent(id=f"job-{i:03d}", type=job_type, payload={"card": f"4111-{i}"})
    at = now - timedelta(minutes=i)
    return DeadLetter(
        id=DeadLetter.coordinates(prefix, 0, i),
        job_id=event.id,
        job_type=job_type,
        reason=reason,
        error_class="agents.errors.FatalError" if i % 2 else "RetryableError",
        error_message=f"failure {i}",
        traceback="Traceback (most recent call last):\n  File x\nFatalError: failure",
        attempt=2,
        history=[FailureRecord(attempt=1, error_class="RetryableError", message="first", at=at)],
        source_topic=prefix,
        source_partition=0,
        source_offset=i,
        first_failure_at=at,
        last_failure_at=at,
        original_key=b64(event.id.encode()),
        original_value=b64(event.to_bytes()),
        original_headers=[("authorization", b64(b"Bearer sk-live"))],
    )


@pytest.fixture
async def world(kafka_bootstrap: str, database_url: str, prefix: str) -> AsyncIterator[World]:
    now = datetime.now(UTC).replace(microsecond=0)
    names = topic_names(prefix, (1.0, 2.0, 3.0))
    await create_topics(kafka_bootstrap, [names.main, names.dlq, *(t.topic for t in names.tiers)])
    letters = [
        _letter(prefix, 1, DeadLetterReason.FATAL_ERROR, "echo", now),
        _letter(prefix, 4, DeadLetterReason.EXHAUSTED, "sleep", now),
        _letter(prefix, 7, DeadLetterReason.FATAL_ERROR, "echo", now),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for dl in letters:
            await producer.send_and_wait(names.dlq, dl.to_bytes(), key=dl.job_id.encode())
    finally:
        await producer.stop()
    async with private_database(database_url) as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        assert pool is not None
        jobs = [_job(i, now) for i in range(12)]
        await pool.executemany(
            "INSERT INTO jobs (job_id, type, status, attempt, result, error, error_class, worker,"
            " created_at, finished_at, updated_at, source)"
            " VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, $12)",
            [
                (
                    j["job_id"], j["type"], j["status"], j["attempt"],
                    json.dumps(j["result"]) if j["result"] else None, j["error"],
                    j["error_class"], j["worker"], j["created_at"], j["finished_at"],
                    j["updated_at"],
                    # the console's own topics: the main one, or a retry tier
                    f"{prefix}:0:{i}" if i % 4 else f"{names.tiers[0].topic}:1:{i}",
                )
                for i, j in enumerate(jobs)
            ],
        )  # fmt: skip
        await pool.execute(
            "INSERT INTO rate_limit_buckets (key, tokens, capacity, refill_per_s, paused_until)"
            " VALUES ('openrouter', 3, 50, 50, now() + interval '1 minute')"
        )
        settings = console_settings(kafka_bootstrap, dsn, prefix)
        try:
            async with running_console(settings) as base:
                yield World(base, prefix, pool, kafka_bootstrap, jobs, letters, now, dsn)
        finally:
            await pool.close()


async def _get(s: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with s.get(url, allow_redirects=False) as r:
        body = await r.text()
        ctype = r.headers.get("Content-Type", "")
        return r.status, json.loads(body) if ctype.startswith("application/json") else body


async def _post(s: aiohttp.ClientSession, url: str, body: Any, csrf: str | None) -> tuple[int, Any]:
    headers = {"X-CSRF-Token": csrf} if csrf else {}
    async with s.post(url, json=body, headers=headers, allow_redirects=False) as r:
        return r.status, json.loads(await r.text())


# --- access ------------------------------------------------------------------------------------


async def test_login_sessions_and_csrf(world: World) -> None:
    base = world.base
    async with client() as anon:
        status, body = await _get(anon, base + "api/jobs")
        assert status == 401
        assert "log in" in body["error"]
        async with anon.get(base + "jobs", allow_redirects=False) as r:
            assert r.status == 303
            assert r.headers["Location"] == "/login"
        # a login without the login page's CSRF token is refused
        async with anon.post(base + "login", data={"token": VIEWER_TOKEN}) as r:
            assert r.status == 403
        csrf = await csrf_of(anon, base + "login")
        async with anon.post(base + "login", data={"token": "wrong", "csrf": csrf}) as r:
            assert r.status == 401
            assert "not valid" in await r.text()
        async with anon.post(
            base + "login", data={"token": VIEWER_TOKEN, "csrf": csrf}, allow_redirects=False
        ) as r:
            assert r.status == 303
            cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert VIEWER_TOKEN not in cookie
        status, _ = await _get(anon, base + "api/jobs")
        assert status == 200
        # a forged cookie is no session
        anon.cookie_jar.clear()
        anon.cookie_jar.update_cookies({"jobstream_console": "forged.value.sig"}, URL(base))
        status, _ = await _get(anon, base + "api/jobs")
        assert status == 401

    async with client() as viewer:
        csrf = await login(viewer, base, VIEWER_TOKEN)
        page = await _get(viewer, base + "dead-letters")
        assert page[0] == 200
        assert "replay-panel" not in page[1]
        status, body = await _post(viewer, base + "api/replay", {"dry_run": True}, csrf)
        assert status == 403
        assert "operator" in body["error"]
        # logging out clears the cookie
        async with viewer.post(base + "logout", data={"csrf": csrf}, allow_redirects=False) as r:
            assert r.status == 303
        status, _ = await _get(viewer, base + "api/jobs")
        assert status == 401

    async with client() as operator:
        csrf = await login(operator, base, OPERATOR_TOKEN)
        status, body = await _post(operator, base + "api/replay", {"dry_run": True}, None)
        assert status == 403
        assert "CSRF" in body["error"]
        status, body = await _post(operator, base + "api/replay", {"dry_run": True}, "x" + csrf)
        assert status == 403
        status, body = await _post(operator, base + "api/replay", {"dry_run": True}, csrf)
        assert status == 200
        assert body["would_replay"] == 3
        async with operator.get(base + "api/overview") as r:
            assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
            assert r.headers["Cache-Control"] == "no-store"
        async with operator.get(base + "static/console.js") as r:
            assert r.status == 200
            assert "X-CSRF-Token" in await r.text()
        async with operator.get(base + "health") as r:
            assert r.status == 200

    async with client() as guesser:
        # guessing is throttled: after ten wrong tokens from one address (one was above),
        # even the right one waits a minute
        csrf = await csrf_of(guesser, base + "login")
        for _ in range(9):
            async with guesser.post(base + "login", data={"token": "guess", "csrf": csrf}) as r:
                assert r.status == 401
        async with guesser.post(base + "login", data={"token": VIEWER_TOKEN, "csrf": csrf}) as r:
            assert r.status == 429
            assert "Too many wrong tokens" in await r.text()


async def test_access_off_without_tokens_and_dev_open_on_loopback(
    kafka_bootstrap: str, database_url: str, prefix: str
) -> None:
    off = console_settings(
        kafka_bootstrap,
        database_url,
        prefix,
        console_viewer_token=None,
        console_operator_token=None,
    )
    assert await serve(off, kafka_bootstrap, database_url, "127.0.0.1", 0) == 2
    weak = console_settings(kafka_bootstrap, database_url, prefix, console_viewer_token="short")
    assert await serve(weak, kafka_bootstrap, database_url, "127.0.0.1", 0) == 2
    dev = off.model_copy(update={"console_dev_open": True})
    # dev-open never applies off loopback
    assert await serve(dev, kafka_bootstrap, database_url, "0.0.0.0", 0) == 2
    async with running_console(dev) as base, client() as s:
        status, body = await _get(s, base + "api/jobs?limit=1")
        assert status == 200
        status, body = await _post(s, base + "api/replay", {"dry_run": True}, None)
        assert status == 403
        assert "CSRF" in body["error"]
        csrf = await csrf_of(s, base)
        status, body = await _post(s, base + "api/replay", {"dry_run": True}, csrf)
        assert status == 409  # an operator, but this prefix has no topics


# --- jobs ----------------------------------------------------------------------------------------


async def test_jobs_filters_and_keyset_pages(world: World) -> None:
    base = world.base
    async with client() as s:
        await login(s, base, VIEWER_TOKEN)
        # every page in order, no row twice, none missing
        seen: list[str] = []
        url = base + "api/jobs?limit=5"
        pages = 0
        while url:
            status, body = await _get(s, url)
            assert status == 200, body
            assert len(body["items"]) <= 5
            seen.extend(j["job_id"] for j in body["items"])
            pages += 1
            url = (
                base + f"api/jobs?limit=5&after={body['next_cursor']}"
                if body["next_cursor"]
                else ""
            )
        assert pages == 3
        assert seen == [j["job_id"] for j in world.jobs]  # newest change first

        async def ids(query: str) -> list[str]:
            status, body = await _get(s, base + "api/jobs?" + query)
            assert status == 200, body
            return [j["job_id"] for j in body["items"]]

        assert await ids("status=dead_lettered") == [
            j["job_id"] for j in world.jobs if j["status"] == "dead_lettered"
        ]
        assert await ids("type=sleep&worker=w0") == [
            j["job_id"] for j in world.jobs if j["type"] == "sleep" and j["worker"] == "w0"
        ]
        assert await ids("since=5m30s") == [f"job-{i:03d}" for i in range(6)]
        until = (world.now - timedelta(minutes=9, seconds=30)).isoformat()
        assert await ids(f"until={quote(until)}") == ["job-010", "job-011"]
        assert await ids("status=succeeded&type=nope") == []

        for bad, says in [
            ("limit=0", "limit must be from 1 to 200"),
            ("limit=201", "limit must be from 1 to 200"),
            ("limit=ten", "limit must be an integer"),
            ("status=lost", "status must be one of"),
            ("since=yesterday", "neither an ISO-8601 time"),
            ("since=1h&until=2h", "since must be before until"),
            ("after=bm90LWEtY3Vyc29y", "cursor is not one this console made"),
            ("after=%%%", "cursor"),
            (f"type={'x' * 201}", "longer than 200"),
        ]:
            status, body = await _get(s, base + "api/jobs?" + bad)
            assert status == 400, (bad, body)
            assert says in body["error"], (bad, body)

        # one job, exact id
        status, body = await _get(s, base + "api/jobs/job-001")
        assert status == 200
        assert body["row"]["status"] == "dead_lettered"
        assert [d["id"] for d in body["dead_letters"]] == [world.letters[0].id]
        assert body["history"][0]["message"] == "first"
        status, body = await _get(s, base + "api/jobs/job-000")
        assert "payload-0" not in json.dumps(body)  # a viewer does not see results
        status, body = await _get(s, base + "api/jobs/nope")
        assert status == 404
        assert "no job" in body["error"]
        status, body = await _get(s, base + "api/jobs/" + "x" * 201)
        assert status == 400
        async with s.get(base + "jobs?id=job-003", allow_redirects=False) as r:
            assert r.status == 303
            assert r.headers["Location"] == "/jobs/job-003"
        status, page = await _get(s, base + "jobs?id=missing-one")
        assert status == 200
        assert "No job <code>missing-one</code>" in page
        status, page = await _get(s, base + "jobs?limit=0")
        assert status == 400
        assert "limit must be" in page
        status, page = await _get(s, base + "jobs/job-004")
        assert status == 200
        assert 'id="job-status">dead_lettered' in page


# --- overview ----------------------------------------------------------------------------------


async def test_overview_cluster_and_rate_limits(world: World) -> None:
    base = world.base
    async with client() as s:
        await login(s, base, VIEWER_TOKEN)
        status, hour = await _get(s, base + "api/overview")
        assert status == 200
        in_hour = [j for j in world.jobs if j["finished_at"] >= world.now - timedelta(hours=1)]
        assert hour["totals"]["succeeded"] == sum(j["status"] == "succeeded" for j in in_hour)
        assert hour["totals"]["dead_lettered"] == sum(
            j["status"] == "dead_lettered" for j in in_hour
        )
        assert sum(p["succeeded"] for p in hour["series"]) == hour["totals"]["succeeded"]
        assert hour["totals"]["p50"] == pytest.approx(30 * 60, rel=0.1)  # created 30 min earlier
        status, day = await _get(s, base + "api/overview?window=1d")
        assert status == 200
        assert day["window"] == "1d"
        status, body = await _get(s, base + "api/overview?window=1w")
        assert status == 400
        assert "window must be one of 1h, 1d" in body["error"]

        status, cluster = await _get(s, base + "api/cluster")
        assert status == 200
        assert cluster["error"] is None
        assert cluster["group"] == world.prefix
        assert {t["topic"] for t in cluster["topics"]} == {
            world.prefix,
            *(f"{world.prefix}.retry.{t}s" for t in (1, 2, 3)),
        }
        assert cluster["members"] == []  # no worker runs in this test

        status, limits = await _get(s, base + "api/rate-limits")
        assert status == 200
        (key,) = limits["keys"]
        assert key["key"] == "openrouter"
        assert key["paused_until"] is not None
        assert key["tokens"] == pytest.approx(3, abs=0.1)  # no refill before the pause ends
        assert "429" in key["pause_reason"]
        status, page = await _get(s, base)
        assert status == 200
        assert 'id="chart-throughput"' in page


# --- dead letters and replay ---------------------------------------------------------------------


async def test_dead_letter_filters_detail_and_payload_visibility(world: World) -> None:
    base = world.base
    first = world.letters[0]
    async with client() as viewer, client() as operator:
        await login(viewer, base, VIEWER_TOKEN)
        await login(operator, base, OPERATOR_TOKEN)

        async def ids(query: str) -> list[str]:
            status, body = await _get(viewer, base + "api/dead-letters?" + query)
            assert status == 200, body
            return [d["id"] for d in body["items"]]

        everything = await ids("")
        one, four, seven = (d.id for d in world.letters)  # failed 1, 4 and 7 minutes ago
        assert everything == [one, four, seven]  # newest failure first
        assert await ids("type=echo") == [one, seven]
        assert await ids("reason=exhausted") == [four]
        assert await ids("error_class=FatalError") == [one, seven]  # bare or dotted name
        assert await ids("key=job-004") == [four]
        assert await ids("since=5m30s") == [one, four]
        assert await ids("type=echo,sleep&reason=fatal_error") == [one, seven]
        status, st = await _get(viewer, base + "api/dead-letters/stats?type=echo")
        assert status == 200
        assert st["matched"] == 2
        assert st["by_reason"] == {"fatal_error": 2}
        for bad, says in [
            ("reason=lost", "unknown reason"),
            ("since=later", "neither an ISO-8601"),
            ("type=a,,b", "empty value"),
            ("limit=501", "limit must be from 1 to 500"),
        ]:
            status, body = await _get(viewer, base + "api/dead-letters?" + bad)
            assert status == 400, (bad, body)
            assert says in body["error"], (bad, body)

        url = base + "api/dead-letters/" + quote(first.id, safe="")
        status, seen_by_viewer = await _get(viewer, url)
        assert status == 200
        assert seen_by_viewer["traceback"].startswith("Traceback")
        assert seen_by_viewer["original_event"]["id"] == first.job_id
        text = json.dumps(seen_by_viewer)
        assert "4111" not in text
        assert "sk-live" not in text
        status, seen_by_operator = await _get(operator, url)
        assert seen_by_operator["original_event"]["payload"] == {"card": "4111-1"}
        status, body = await _get(viewer, base + "api/dead-letters/nope:0:0")
        assert status == 404
        status, page = await _get(viewer, base + "dead-letters/" + quote(first.id, safe=""))
        assert status == 200
        assert "Traceback" in page
        assert "4111" not in page


async def test_replay_preview_confirm_audit_and_idempotence(world: World) -> None:
    base = world.base
    async with client() as s, topic_reader(world.bootstrap, world.prefix) as main:
        csrf = await login(s, base, OPERATOR_TOKEN)
        for bad, says in [
            ([1, 2], "JSON object"),
            ({"dry_run": False}, "expect is required"),
            ({"nope": 1}, "nope: Extra inputs are not permitted"),
            ({"limit": 0}, "limit: Input should be greater than or equal to 1"),
            ({"reason": "lost"}, "unknown reason"),
            ({"ids": []}, "ids is empty"),
        ]:
            status, body = await _post(s, base + "api/replay", bad, csrf)
            assert status == 400, (bad, body)
            assert says in body["error"], (bad, body)
        async with s.post(
            base + "api/replay", data="not json", headers={"X-CSRF-Token": csrf}
        ) as r:
            assert r.status == 400
            assert "must be JSON" in (await r.json())["error"]

        echo = {"type": "echo"}
        status, plan = await _post(s, base + "api/replay", {**echo, "dry_run": True}, csrf)
        assert status == 200
        assert plan["would_replay"] == 2
        assert {i["id"] for i in plan["items"]} == {world.letters[0].id, world.letters[2].id}
        # a confirmation that does not match the fresh plan publishes nothing
        status, body = await _post(
            s, base + "api/replay", {**echo, "dry_run": False, "expect": 3}, csrf
        )
        assert status == 409
        assert "changed since the preview" in body["error"]
        status, done = await _post(
            s, base + "api/replay", {**echo, "dry_run": False, "expect": 2}, csrf
        )
        assert status == 200
        assert done["replayed"] == 2
        assert done["failed"] == 0
        records = await main.wait_count(2, timeout=30)
        headers = [dict(r.headers) for r in records]
        assert {h["jobstream-replayed-from"].decode() for h in headers} == {
            world.letters[0].id,
            world.letters[2].id,
        }
        # the audit, per dead letter, names the console operator
        status, dl = await _get(s, base + "api/dead-letters/" + quote(world.letters[0].id, safe=""))
        (entry,) = dl["audit"]
        assert entry["replayed_by"].startswith("console:operator@")
        status, listing = await _get(s, base + "api/dead-letters?type=echo")
        assert {d["replays"] for d in listing["items"]} == {1}
        # idempotent, as the CLI: a second run republishes nothing
        status, again = await _post(s, base + "api/replay", {**echo, "dry_run": True}, csrf)
        assert again["would_replay"] == 0
        assert again["skipped_already_replayed"] == 2
        # one dead letter by id, forced
        one = {"ids": [world.letters[0].id], "force": True, "reset_attempts": True}
        status, plan = await _post(s, base + "api/replay", {**one, "dry_run": True}, csrf)
        assert plan["would_replay"] == 1
        status, done = await _post(
            s, base + "api/replay", {**one, "dry_run": False, "expect": 1}, csrf
        )
        assert status == 200
        assert done["replayed"] == 1
        records = await main.wait_count(3, timeout=30)
        assert json.loads(records[2].value)["attempt"] == 1
        rows = await world.pool.fetch(
            "SELECT replay_count FROM dlq_replays WHERE dead_letter_id = $1", world.letters[0].id
        )
        assert [r["replay_count"] for r in rows] == [2]
        status, page = await _get(s, base + "dead-letters/" + quote(world.letters[0].id, safe=""))
        assert page.count("console:operator@") == 2
        assert re.search(r'id="replay-panel"', page)  # operators get the button


async def test_mounted_in_the_api_server(
    kafka_bootstrap: str, database_url: str, prefix: str
) -> None:
    from jobstream.streams.producer.server import ApiServer

    async with private_database(database_url) as dsn:
        for tokens, expect in [(True, 200), (False, 403)]:
            extra: dict[str, Any] = {"console_enabled": True, "console_dev_open": True}
            if not tokens:  # mounted, dev-open never applies: the parent owns the socket
                extra |= {"console_viewer_token": None, "console_operator_token": None}
            settings = console_settings(kafka_bootstrap, dsn, prefix, **extra)
            server = ApiServer(settings, bootstrap=kafka_bootstrap, dsn=dsn)
            await server.connect()
            try:
                (url,) = await server.listen("127.0.0.1", 0)
                base = url + "/console/"
                async with client() as s:
                    if tokens:
                        await login(s, base, VIEWER_TOKEN)
                    status, body = await _get(s, base + "api/jobs")
                    assert status == expect, body
                    if not tokens:
                        assert "console access is off" in body["error"]
                    status, _ = await _get(s, url + "/health")  # the API's own routes stay
                    assert status == 200
            finally:
                await server.stop()


async def test_jobstream_console_command(
    kafka_bootstrap: str, database_url: str, prefix: str
) -> None:
    """``jobstream console`` as an operator starts it: prints its URL, serves, stops on SIGTERM."""
    import asyncio
    import os
    import signal
    import sys

    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSTREAM_")}
    env |= {
        "JOBSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "JOBSTREAM_DATABASE_URL": database_url,
        "JOBSTREAM_TOPIC_PREFIX": prefix,
    }

    async def console(extra: dict[str, str]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jobstream", "console", "--port", "0",
            cwd=ROOT, env=env | extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip

    refused = await console({})
    _, err = await asyncio.wait_for(refused.communicate(), 60)
    assert refused.returncode == 2
    assert b"console access is off" in err

    proc = await console({"JOBSTREAM_CONSOLE_VIEWER_TOKEN": VIEWER_TOKEN})
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        found = re.search(r"jobstream console on (http://\S+) \(access: tokens\)", line)
        assert found, line
        async with client() as s:
            await login(s, found.group(1), VIEWER_TOKEN)
            status, body = await _get(s, found.group(1) + "api/jobs?limit=1")
            assert status == 200, body
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- hostile input, scope and what a viewer sees ------------------------------------------------


async def test_bad_input_is_a_400_never_a_503_or_500(world: World) -> None:
    """Each of these once reached PostgreSQL (a DataError, answered 503 "database unavailable")
    or overflowed a datetime (500)."""
    base = world.base
    async with client() as s:
        await login(s, base, OPERATOR_TOKEN)
        for path in [
            "api/jobs?type=%00",
            "api/jobs?worker=a%00b",
            "api/jobs/%00",
            "api/jobs/a%00b",
            "jobs/%00",
            "jobs?id=%00",
            "api/jobs?since=0001-01-01T00:00:00%2B14:00",
            "api/jobs?until=9999-12-31T23:59:59-14:00",
            "api/jobs?since=99999999999d",
            "api/jobs?since=" + "9" * 400 + "s",
            "api/dead-letters?since=99999999999d",
            "api/dead-letters?until=" + "9" * 400 + "d",
            "api/dead-letters?since=0001-01-01T00:00:00%2B14:00",
            "api/dead-letters/stats?until=9999-12-31T23:59:59-14:00",
            "dead-letters?since=99999999999d",
            "api/jobs?scope=everything",
            "api/jobs?after=" + "MDAwMS0wMS0wMVQwMDowMDowMCsxNDowMHx4",  # year 0 in UTC
        ]:
            async with s.get(base + path, allow_redirects=False) as r:
                body = await r.text()
                assert 400 <= r.status < 500, (path, r.status, body)
                assert "Retry-After" not in r.headers
                if "/api/" in "/" + path:
                    assert r.content_type == "application/json", (path, body)
                    assert "error" in json.loads(body)
        csrf = await csrf_of(s, base)
        replays: list[dict[str, Any]] = [
            {"dry_run": True, "since": "99999999999d"},
            {"dry_run": True, "until": "0001-01-01T00:00:00+14:00"},
            {"dry_run": True, "type": "x\u0000"},
        ]
        for replay in replays:
            status, answer = await _post(s, base + "api/replay", replay, csrf)
            assert status in (200, 400), (replay, status, answer)
            if "since" in replay or "until" in replay:
                assert status == 400, (replay, answer)
        delete = s.delete(base + "api/jobs", headers={"X-CSRF-Token": csrf}, allow_redirects=False)
        async with delete as r:
            assert r.status == 405
            assert r.content_type == "application/json"
        async with s.get(base + "api/nowhere", allow_redirects=False) as r:
            assert r.status == 404
            assert (await r.json())["error"]


async def test_only_this_prefixs_jobs_unless_asked_for_all(world: World) -> None:
    other = f"{world.prefix}-other"
    await world.pool.executemany(
        "INSERT INTO jobs (job_id, type, status, attempt, worker, updated_at, source)"
        " VALUES ($1, 'echo', 'succeeded', 1, 'w9', now(), $2)",
        [
            ("other-main", f"{other}:0:1"),
            ("other-retry", f"{other}.retry.1s:0:2"),
            ("like-wildcard", f"{world.prefix.replace('-', '_')}x:0:3"),
            ("no-source", None),
            ("by-worker", "worker"),
        ],
    )
    async with client() as s:
        await login(s, world.base, VIEWER_TOKEN)
        status, body = await _get(s, world.base + "api/jobs?limit=200")
        assert status == 200
        # a row that names no topic ("worker", as succeeded rows do today) cannot be told apart
        assert {j["job_id"] for j in body["items"]} == {
            *(j["job_id"] for j in world.jobs),
            "no-source",
            "by-worker",
        }
        status, body = await _get(s, world.base + "api/jobs?limit=200&scope=all")
        assert {j["job_id"] for j in body["items"]} == {
            *(j["job_id"] for j in world.jobs), "other-main", "other-retry", "like-wildcard",
            "no-source", "by-worker",
        }  # fmt: skip
        status, _ = await _get(s, world.base + "api/jobs/other-main")
        assert status == 404
        status, body = await _get(s, world.base + "api/jobs/other-main?scope=all")
        assert status == 200
        assert body["row"]["worker"] == "w9"


async def test_a_viewer_never_sees_a_claim_token(world: World) -> None:
    await world.pool.execute(
        "UPDATE jobs SET claim_token = 'claim-secret-4411', status = 'running',"
        " lease_until = now() + interval '1 minute' WHERE job_id = 'job-001'"
    )
    async with client() as s:
        await login(s, world.base, VIEWER_TOKEN)
        for path in ["api/jobs/job-001", "jobs/job-001", f"api/dead-letters/{world.letters[0].id}"]:
            async with s.get(world.base + path, allow_redirects=False) as r:
                assert r.status == 200, path
                assert "claim-secret-4411" not in await r.text(), path
    async with client() as s:
        await login(s, world.base, OPERATOR_TOKEN)
        _, body = await _get(s, world.base + "api/jobs/job-001")
        assert body["row"]["claim_token"] == "claim-secret-4411"


@pytest.mark.parametrize(
    ("extra", "forwarded", "secure"),
    [
        ({}, None, False),
        ({}, "https", False),  # nobody is trusted: a client can send the header too
        ({"console_trusted_proxies": ["10.0.0.0/8"]}, "https", False),  # not from a proxy
        ({"console_trusted_proxies": ["127.0.0.1"]}, "https", True),
        ({"console_trusted_proxies": ["127.0.0.0/8"]}, "http, https", True),  # the proxy's own
        ({"console_trusted_proxies": ["127.0.0.1"]}, "http", False),
        ({"console_secure_cookies": True}, None, True),
    ],
)
async def test_secure_cookies_behind_a_trusted_proxy_or_by_setting(
    world: World, extra: dict[str, Any], forwarded: str | None, secure: bool
) -> None:
    settings = console_settings(world.bootstrap, world.dsn, world.prefix, **extra)
    headers = {"X-Forwarded-Proto": forwarded} if forwarded else {}
    async with (
        running_console(settings) as base,
        client() as s,
        s.get(base + "login", headers=headers, allow_redirects=False) as r,
    ):
        assert r.status == 200
        cookie = r.cookies["jobstream_console"]  # the new session's, with its CSRF token
    assert bool(cookie["secure"]) is secure
    assert cookie["httponly"]
