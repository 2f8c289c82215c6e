"""Timed work as operators and producers see it, on the real stack: a delayed job submitted
through ``POST /jobs`` of a real worker, visible by id as ``scheduled`` with its time, listed with
filters, re-timed and run now through the API, the CLI and the console (each change audited);
schedules added, paused, resumed, run now and removed at run time; a job past its expiry never
runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest

from jobstream.models.schedules import ScheduleSpec
from jobstream.streams.pg import schedules
from jobstream.streams.producer.client import JobClient
from tests.integration.console_support import (
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    client,
    console_settings,
    login,
    running_console,
)
from tests.integration.harness import WorkerFactory, wait_for

pytestmark = pytest.mark.slow


async def _status(pool: asyncpg.Pool, job_id: str) -> str | None:
    value: str | None = await pool.fetchval("SELECT status FROM jobs WHERE job_id = $1", job_id)
    return value


async def _audit(pool: asyncpg.Pool, prefix: str, target: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT action, by, detail FROM timed_audit WHERE topic = $1 AND target = $2 ORDER BY id",
        prefix,
        target,
    )
    return [dict(r) for r in rows]


@pytest.mark.timeout(180)
async def test_a_delayed_job_through_the_api_listed_retimed_and_run_now(
    workers: WorkerFactory, pg_pool: asyncpg.Pool, prefix: str, http: aiohttp.ClientSession
) -> None:
    worker = workers.start("w1")
    await worker.wait_assigned()
    api = f"http://127.0.0.1:{worker.web_port}"

    async with http.post(
        f"{api}/jobs", json={"type": "echo", "id": f"{prefix}-later", "delay_s": 3600}
    ) as r:
        assert r.status == 202, await r.text()
    job_id = f"{prefix}-later"
    await wait_for(
        lambda: _is(pg_pool, job_id, "scheduled"), timeout=30, what="the delayed job's row"
    )

    async with http.get(f"{api}/jobs/{job_id}") as r:
        shown = await r.json()
    assert shown["status"] == "scheduled"
    run_at = datetime.fromisoformat(shown["run_at"])
    assert timedelta(minutes=59) < run_at - datetime.now(UTC) <= timedelta(hours=1)

    async with http.get(f"{api}/scheduled", params={"type": "echo", "due_before": "2h"}) as r:
        listed = (await r.json())["items"]
    assert [i["id"] for i in listed] == [job_id]
    async with http.get(f"{api}/scheduled", params={"due_before": "30m"}) as r:
        assert (await r.json())["items"] == []  # outside the window
    async with http.get(f"{api}/scheduled", params={"type": "sleep"}) as r:
        assert (await r.json())["items"] == []

    later = (run_at + timedelta(hours=1)).isoformat()
    async with http.post(f"{api}/scheduled/{job_id}/retime", json={"run_at": later}) as r:
        moved = await r.json()
        assert r.status == 200, moved
    assert datetime.fromisoformat(moved["run_at"]) == run_at + timedelta(hours=1)

    code, out = await workers.cli("status", job_id)  # jobstream status shows it too
    assert code == 0, out
    row = json.loads(out)
    assert row["status"] == "scheduled"
    assert datetime.fromisoformat(row["run_at"]) == run_at + timedelta(hours=1)

    async with http.post(f"{api}/scheduled/{job_id}/run-now") as r:
        assert r.status == 200, await r.text()
    await wait_for(lambda: _is(pg_pool, job_id, "succeeded"), timeout=30, what="the run-now")
    executions = await pg_pool.fetchval("SELECT executions FROM jobs WHERE job_id = $1", job_id)
    assert executions == 1

    async with http.post(f"{api}/scheduled/{job_id}/run-now") as r:  # not scheduled any more
        assert r.status == 404
        assert (await r.json())["error"] == "not_scheduled"
    audit = await _audit(pg_pool, prefix, job_id)
    assert [a["action"] for a in audit] == ["retime", "run-now"]
    assert all(a["by"].startswith("api from 127.0.0.1") for a in audit)

    code, out = await workers.cli("doctor", "--json")  # its dispatcher check sees the holder
    dispatcher = next(c for c in json.loads(out)["checks"] if c["name"] == "dispatcher")
    assert dispatcher["status"] == "ok", dispatcher
    assert dispatcher["detail"].startswith("held by w1 for ")


@pytest.mark.timeout(120)
async def test_a_retime_past_the_expiry_is_refused(
    workers: WorkerFactory, pg_pool: asyncpg.Pool, prefix: str, http: aiohttp.ClientSession
) -> None:
    worker = workers.start("w1")
    await worker.wait_assigned()
    api = f"http://127.0.0.1:{worker.web_port}"
    job_id = f"{prefix}-short"
    body = {"type": "echo", "id": job_id, "delay_s": 600, "ttl_s": 1200}
    async with http.post(f"{api}/jobs", json=body) as r:
        assert r.status == 202
    await wait_for(lambda: _is(pg_pool, job_id, "scheduled"), timeout=30, what="its row")
    async with http.post(f"{api}/scheduled/{job_id}/retime", json={"delay_s": 3600}) as r:
        assert r.status == 409
        assert (await r.json())["error"] == "would_expire"
    assert await _audit(pg_pool, prefix, job_id) == []  # nothing happened, nothing audited


@pytest.mark.timeout(120)
async def test_a_job_not_started_by_its_expiry_ends_expired_without_running(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=1)
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as jobs:
        job_id = await jobs.submit("echo", {"n": 1}, job_id=f"{prefix}-stale", expires_at=expires)
    # no worker ran before the expiry: the first one to see the job must not run it

    async def past() -> bool:
        return bool(await pg_pool.fetchval("SELECT now() > $1", expires))

    await wait_for(past, timeout=10, what="the expiry")
    workers.start("w1")
    await wait_for(lambda: _is(pg_pool, job_id, "expired"), timeout=90, what="the expired row")
    executions = await pg_pool.fetchval("SELECT executions FROM jobs WHERE job_id = $1", job_id)
    assert executions == 0


@pytest.mark.timeout(240)
async def test_schedules_added_paused_resumed_run_now_and_removed_at_run_time(
    workers: WorkerFactory, pg_pool: asyncpg.Pool, prefix: str, http: aiohttp.ClientSession
) -> None:
    worker = workers.start("w1")
    await worker.wait_assigned()
    api = f"http://127.0.0.1:{worker.web_port}"
    name = f"{prefix}-tick"
    body = {"name": name, "type": "echo", "payload": {"from": "schedule"}, "every_s": 1}
    async with http.post(f"{api}/schedules", json=body) as r:
        added = await r.json()
        assert r.status == 201, added
    assert added["next_at"] is not None
    async with http.post(f"{api}/schedules", json=body) as r:
        assert r.status == 409  # the name is taken

    async def ticks() -> int:
        n = await pg_pool.fetchval(
            "SELECT count(*) FROM jobs WHERE job_id LIKE $1 AND status = 'succeeded'",
            f"schedule:{name}:2%",
        )
        return int(n)

    await wait_for(lambda: _at_least(ticks, 2), timeout=60, what="two ticks run")

    async with http.post(f"{api}/schedules/{name}/pause") as r:
        paused = await r.json()
    assert paused["paused"] is True
    assert paused["next_at"] is None
    paused_at: datetime = await pg_pool.fetchval("SELECT now()")

    # three ticks' worth of time while paused: none of those ticks is a job
    async def three_ticks_later() -> bool:
        return bool(await pg_pool.fetchval("SELECT now() > $1", paused_at + timedelta(seconds=3)))

    await wait_for(three_ticks_later, timeout=10, what="three seconds of the pause")
    late = await pg_pool.fetch(
        "SELECT job_id FROM jobs WHERE job_id LIKE $1 AND created_at > $2",
        f"schedule:{name}:2%",
        paused_at + timedelta(seconds=1),  # a tick being fired as the pause came is its own
    )
    assert late == []

    async with http.post(f"{api}/schedules/{name}/run-now") as r:
        ran = await r.json()
        assert r.status == 202, ran
    assert ran["id"].startswith(f"schedule:{name}:now:")
    await wait_for(lambda: _is(pg_pool, ran["id"], "succeeded"), timeout=30, what="the run-now")
    async with http.get(f"{api}/schedules/{name}") as r:
        view = await r.json()
    assert view["paused"] is True  # a run-now leaves the schedule as it was
    assert view["last_job_id"] == ran["id"]

    before = await ticks()
    async with http.post(f"{api}/schedules/{name}/resume") as r:
        resumed = await r.json()
    assert resumed["paused"] is False
    assert datetime.fromisoformat(resumed["next_at"]) > paused_at
    await wait_for(lambda: _at_least(ticks, before + 2), timeout=60, what="ticks after resume")

    async with http.delete(f"{api}/schedules/{name}") as r:
        assert r.status == 200
    async with http.get(f"{api}/schedules/{name}") as r:
        assert r.status == 404
        assert (await r.json())["error"] == "no_schedule"
    actions = [a["action"] for a in await _audit(pg_pool, prefix, name)]
    assert actions == ["add", "pause", "run-now", "resume", "remove"]

    # one the app's code declares is not removed at run time (the next dispatcher adds it back)
    db_now: datetime = await pg_pool.fetchval("SELECT now()")
    app_spec = ScheduleSpec(name=f"{prefix}-app", job_type="echo", cron="0 3 * * *")
    await schedules.sync_app(pg_pool, prefix, [app_spec], db_now)
    async with http.delete(f"{api}/schedules/{prefix}-app") as r:
        assert r.status == 409
        assert (await r.json())["error"] == "declared_in_app"


@pytest.mark.timeout(240)
async def test_the_cli_manages_schedules_and_scheduled_jobs(
    workers: WorkerFactory, kafka_bootstrap: str, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    code, out = await workers.cli(
        "submit", "echo", "--id", f"{prefix}-cli", "--delay", "2h", "--ttl", "3h"
    )
    assert code == 0, out
    code, out = await workers.cli(
        "schedules", "add", "nightly", "--type", "echo", "--cron", "30 2 * * *",
        "--timezone", "Europe/Berlin", "--missed", "catch_up", "--catch-up-max", "3",
    )  # fmt: skip
    assert code == 0, out
    code, out = await workers.cli("schedules", "list", "--json")
    assert code == 0, out
    [nightly] = json.loads(out)
    assert nightly["rule"] == "cron 30 2 * * * (Europe/Berlin)"
    assert nightly["missed"] == "catch_up"
    assert nightly["catch_up_max"] == 3
    next_at = datetime.fromisoformat(nightly["next_at"]).astimezone(
        __import__("zoneinfo").ZoneInfo("Europe/Berlin")
    )
    assert (next_at.hour, next_at.minute) == (2, 30) or next_at.hour == 3  # a DST gap moves it

    worker = workers.start("w1")  # parks the delayed job and dispatches the run-now
    await worker.wait_assigned()
    job_id = f"{prefix}-cli"
    await wait_for(lambda: _is(pg_pool, job_id, "scheduled"), timeout=60, what="its row")
    code, out = await workers.cli("scheduled", "list", "--type", "echo", "--json")
    assert code == 0, out
    [item] = json.loads(out)
    assert item["id"] == job_id
    assert item["expires_at"] is not None
    code, out = await workers.cli("scheduled", "retime", job_id, "--in", "4h")
    assert code == 2, out  # past its expiry
    code, out = await workers.cli("scheduled", "run-now", job_id)
    assert code == 0, out
    await wait_for(lambda: _is(pg_pool, job_id, "succeeded"), timeout=30, what="the run-now")

    code, out = await workers.cli("schedules", "run-now", "nightly")
    assert code == 0, out
    ran = out.strip()
    assert ran.startswith("schedule:nightly:now:")
    await wait_for(lambda: _is(pg_pool, ran, "succeeded"), timeout=30, what="the schedule's job")
    for args, expected in (
        (("schedules", "pause", "nightly"), 0),
        (("schedules", "resume", "nightly"), 0),
        (("schedules", "remove", "nightly"), 0),
        (("schedules", "remove", "nightly"), 1),
        (("scheduled", "run-now", "no-such-job"), 1),
    ):
        code, out = await workers.cli(*args)
        assert code == expected, (args, out)
    audit = await _audit(pg_pool, prefix, "nightly")
    assert [a["action"] for a in audit] == ["add", "run-now", "pause", "resume", "remove"]
    assert all(a["by"].startswith("cli:") for a in audit)


@pytest.mark.timeout(180)
async def test_the_console_lists_scheduled_jobs_and_schedules_and_operators_act_audited(
    workers: WorkerFactory,
    kafka_bootstrap: str,
    database_url: str,
    pg_pool: asyncpg.Pool,
    prefix: str,
) -> None:
    async with JobClient(kafka_bootstrap, topic_prefix=prefix) as jobs:
        job_id = await jobs.submit("echo", {"secret": "s3"}, job_id=f"{prefix}-c", delay=3600)
    db_now: datetime = await pg_pool.fetchval("SELECT now()")
    spec = ScheduleSpec(name="hourly", job_type="echo", payload={"k": "v"}, cron="0 * * * *")
    assert await schedules.add(pg_pool, prefix, spec, db_now)
    worker = workers.start("w1")
    await worker.wait_assigned()
    await wait_for(lambda: _is(pg_pool, job_id, "scheduled"), timeout=60, what="its row")

    settings = console_settings(kafka_bootstrap, database_url, prefix)
    async with running_console(settings) as base, client() as viewer, client() as operator:
        await login(viewer, base, VIEWER_TOKEN)
        csrf = await login(operator, base, OPERATOR_TOKEN)

        async with viewer.get(base + "scheduled", params={"type": "echo", "due_before": "2h"}) as r:
            page = await r.text()
        assert r.status == 200
        assert job_id in page
        assert "run-now" not in page  # a viewer sees no actions
        async with viewer.get(base + "scheduled", params={"due_after": "2h"}) as r:
            assert job_id not in await r.text()
        async with viewer.get(base + "api/schedules") as r:
            [hourly] = (await r.json())["items"]
        assert hourly["payload"].startswith("(hidden")  # a viewer does not see payloads
        async with viewer.post(
            base + f"api/scheduled/{quote(job_id)}/run-now", headers={"X-CSRF-Token": "x"}
        ) as r:
            assert r.status == 403

        async with operator.post(
            base + "schedules/hourly/pause", data={"csrf": csrf}, allow_redirects=False
        ) as r:
            assert r.status == 303
            assert "done=" in r.headers["Location"]
        async with operator.get(base + "schedules") as r:
            page = await r.text()
        assert ">paused<" in page
        assert "console:operator@" in page  # the audit, on the page

        later = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
        async with operator.post(
            base + f"scheduled/{quote(job_id)}/retime",
            data={"csrf": csrf, "run_at": later, "back": "?type=echo"},
            allow_redirects=False,
        ) as r:
            assert r.status == 303
            assert "type=echo" in r.headers["Location"]
        async with operator.post(
            base + f"api/scheduled/{quote(job_id)}/run-now", headers={"X-CSRF-Token": csrf}
        ) as r:
            assert r.status == 200, await r.text()
        await wait_for(lambda: _is(pg_pool, job_id, "succeeded"), timeout=30, what="the run")
        async with operator.post(
            base + f"scheduled/{quote(job_id)}/run-now", data={"csrf": csrf}, allow_redirects=False
        ) as r:
            assert r.status == 303
            assert "failed=" in r.headers["Location"]  # not scheduled any more: said, not raised

    audit = await _audit(pg_pool, prefix, job_id)
    assert [a["action"] for a in audit] == ["retime", "run-now"]
    assert all(a["by"].startswith("console:operator@") for a in audit)
    assert [a["action"] for a in await _audit(pg_pool, prefix, "hourly")] == ["pause"]


async def _is(pool: asyncpg.Pool, job_id: str, status: str) -> bool:
    return await _status(pool, job_id) == status


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)


async def _park(pool: asyncpg.Pool, prefix: str, job_id: str) -> None:
    """A scheduled row due now, as a worker parks a delayed job."""
    from jobstream.models.job import JobEvent

    now: datetime = await pool.fetchval("SELECT now()")
    event = JobEvent(id=job_id, type="echo", payload={}, not_before=now)
    await pool.execute(
        "INSERT INTO jobs (job_id, type, status, attempt, created_at, run_at, event, executions,"
        " topic) VALUES ($1, 'echo', 'scheduled', 1, $2, $2, $3, 0, $4)",
        job_id,
        now,
        event.model_dump(mode="json"),
        prefix,
    )


@pytest.mark.timeout(120)
async def test_a_batch_taken_by_a_holder_that_died_before_publishing_goes_with_the_next(
    workers: WorkerFactory, pg_pool: asyncpg.Pool, prefix: str
) -> None:
    from jobstream.streams.pg import scheduled

    job_id = f"{prefix}-taken"
    await _park(pg_pool, prefix, job_id)
    [taken] = await scheduled.due(pg_pool, prefix, 10)  # a holder took it, then died
    assert taken.job_id == job_id
    assert await scheduled.due(pg_pool, prefix, 10) == []  # taken: not taken twice
    workers.start("w1")  # the next holder publishes it again at once, not REDISPATCH_S later
    started: datetime = await pg_pool.fetchval("SELECT now()")
    await wait_for(lambda: _is(pg_pool, job_id, "succeeded"), timeout=60, what="the job ran")
    ran_at: datetime = await pg_pool.fetchval(
        "SELECT started_at FROM jobs WHERE job_id = $1", job_id
    )
    assert (ran_at - started).total_seconds() < scheduled.REDISPATCH_S


async def test_a_failed_publish_gives_the_batch_back(pg_pool: asyncpg.Pool, prefix: str) -> None:
    from jobstream.streams.metrics import Metrics
    from jobstream.streams.topics import topic_names
    from jobstream.streams.worker.dispatcher import Dispatcher

    class Refusing:
        async def send(self, *args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("the broker is away")

    job_id = f"{prefix}-refused"
    await _park(pg_pool, prefix, job_id)
    dispatcher = Dispatcher(
        pg_pool,
        Refusing(),  # type: ignore[arg-type]
        topics=topic_names(prefix),
        metrics=Metrics(),
        worker="test",
    )
    dispatcher._synced = True
    with pytest.raises(ConnectionError):
        await dispatcher.round()
    marked = await pg_pool.fetchval("SELECT dispatched_at FROM jobs WHERE job_id = $1", job_id)
    assert marked is None  # the next round takes it again
    from jobstream.streams.pg import scheduled

    assert [d.job_id for d in await scheduled.due(pg_pool, prefix, 10)] == [job_id]


async def test_a_due_row_is_published_as_its_event_due_now_under_its_own_key(
    pg_pool: asyncpg.Pool, prefix: str
) -> None:
    """What the dispatcher publishes is made by PostgreSQL from the stored event: the workers'
    own decode reads it back as the event, due now, with its expiry, keyed by its producer's
    key; text PostgreSQL stores (accents, emoji) goes through unescaped."""
    from jobstream.agents.decode import decode_event
    from jobstream.models.job import JobEvent
    from jobstream.streams.pg import scheduled

    now: datetime = await pg_pool.fetchval("SELECT now()")
    events = [
        JobEvent(id=f"{prefix}-a", type="echo", payload={"n": "ü 🎉"}, not_before=now,
                 expires_at=now + timedelta(hours=1)),
        JobEvent(id=f"{prefix}-b", type="echo", payload={}, not_before=now, partition_key="c-7"),
    ]  # fmt: skip
    for e in events:
        await pg_pool.execute(
            "INSERT INTO jobs (job_id, type, status, attempt, created_at, run_at, event,"
            " executions, topic) VALUES ($1, 'echo', 'scheduled', 1, $2, $2, $3, 0, $4)",
            e.id,
            now,
            e.model_dump(mode="json"),
            prefix,
        )
    taken = {d.job_id: d for d in await scheduled.due(pg_pool, prefix, 10)}
    assert set(taken) == {e.id for e in events}
    for e in events:
        d = taken[e.id]
        decoded = decode_event(d.record, max_bytes=1_000_000)
        assert decoded == e.model_copy(update={"not_before": None})
        assert d.key == e.key()
    assert "ü 🎉" in taken[f"{prefix}-a"].record.decode()
