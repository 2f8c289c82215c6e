"""The producer API's timed fields and routes, over a real aiohttp server with in-memory Kafka:
``delay_s``/``run_at``/``ttl_s``/``expires_at`` on ``POST /jobs``, a scheduled job's status, and
every refusal of the scheduled/schedules routes that comes before the database (a 4xx in the
JSON error shape). What the routes do to PostgreSQL is tested in the integration tier
(tests/integration/test_timed_ops.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobstream.streams.producer.api import read_timing
from tests.unit.streams.producer.test_api import TOKEN, Make, locs, make, post_json

__all__ = ["make"]  # the fixture, shared with test_api


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def test_delay_s_makes_a_delayed_job_and_ttl_s_its_expiry(make: Make) -> None:
    client, rt = await make()
    before = datetime.now(UTC)
    resp = await post_json(client, {"type": "echo", "delay_s": 600, "ttl_s": 3600})
    after = datetime.now(UTC)
    assert resp.status == 202, await resp.text()
    [event] = rt.publisher.events()
    not_before, expires = _at(event["not_before"]), _at(event["expires_at"])
    assert before + timedelta(seconds=600) <= not_before <= after + timedelta(seconds=600)
    assert before + timedelta(seconds=3600) <= expires <= after + timedelta(seconds=3600)


async def test_run_at_with_an_offset_is_kept_as_that_instant(make: Make) -> None:
    client, rt = await make()
    at = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    local = at.astimezone(datetime.now().astimezone().tzinfo).isoformat()
    expires = (at + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    resp = await post_json(client, {"type": "echo", "run_at": local, "expires_at": expires})
    assert resp.status == 202, await resp.text()
    [event] = rt.publisher.events()
    assert _at(event["not_before"]) == at
    assert _at(event["expires_at"]) == at + timedelta(hours=1)


async def test_a_time_already_past_runs_now_and_null_fields_are_absent(make: Make) -> None:
    client, rt = await make()
    resp = await post_json(
        client,
        {"type": "echo", "run_at": "2020-01-01T00:00:00Z", "ttl_s": None, "delay_s": None},
    )
    assert resp.status == 202, await resp.text()
    [event] = rt.publisher.events()
    assert event["not_before"] is None
    assert event["expires_at"] is None


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"delay_s": "10m"}, "delay_s"),
        ({"delay_s": True}, "delay_s"),
        ({"delay_s": -1}, "delay_s"),
        ({"delay_s": 10**400}, "delay_s"),
        ({"delay_s": 11 * 365 * 86400}, "delay_s"),
        ({"run_at": "2027-01-01T03:00:00"}, "run_at"),  # no offset
        ({"run_at": "next tuesday"}, "run_at"),
        ({"run_at": 1767225600}, "run_at"),
        ({"run_at": "9999-12-31T23:59:59-14:00"}, "run_at"),
        ({"delay_s": 5, "run_at": "2030-01-01T00:00:00Z"}, "run_at"),
        ({"ttl_s": 0}, "ttl_s"),
        ({"ttl_s": [1]}, "ttl_s"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),  # already past
        ({"expires_at": "0001-01-01T00:00:00+14:00"}, "expires_at"),
        ({"ttl_s": 60, "expires_at": "2030-01-01T00:00:00Z"}, "expires_at"),
        ({"delay_s": 600, "ttl_s": 60}, "ttl_s"),  # would expire before it may run
        ({"run_at": "2030-01-01T00:00:00Z", "expires_at": "2029-01-01T00:00:00Z"}, "expires_at"),
    ],
)
async def test_bad_timing_is_a_400_at_the_field_and_nothing_is_published(
    make: Make, fields: dict[str, Any], loc: str
) -> None:
    client, rt = await make()
    resp = await post_json(client, {"type": "echo", **fields})
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "invalid_request"
    assert [loc] in locs(body), body
    assert all(e["type"] in ("timing_invalid",) for e in body["errors"]), body
    assert rt.publisher.sent == []


async def test_a_batch_names_the_item_whose_timing_is_bad(make: Make) -> None:
    client, rt = await make()
    resp = await post_json(client, [{"type": "echo", "delay_s": 1}, {"type": "echo", "ttl_s": -5}])
    assert resp.status == 400
    assert locs(await resp.json()) == [[1, "ttl_s"]]
    assert rt.publisher.sent == []


def test_read_timing_reads_nothing_from_a_job_without_it() -> None:
    timing, errors = read_timing({"type": "echo"})
    assert not timing
    assert errors == []


async def test_the_status_of_a_scheduled_job_shows_its_time_and_expiry(make: Make) -> None:
    client, rt = await make()
    assert rt.store is not None
    run_at = datetime(2027, 1, 1, 2, 0, tzinfo=UTC)
    rt.store.rows["later"] = {
        "job_id": "later",
        "type": "echo",
        "status": "scheduled",
        "attempt": 1,
        "run_at": run_at,
        "expires_at": run_at + timedelta(hours=1),
        "event": {"payload": {"secret": "x"}},
    }
    resp = await client.get("/jobs/later")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "scheduled"
    assert body["run_at"] == "2027-01-01T02:00:00+00:00"
    assert body["expires_at"] == "2027-01-01T03:00:00+00:00"
    assert "event" not in body  # the outbox holds the payload: never shown


# --- the scheduled and schedules routes: refusals before the database -------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/scheduled"),
        ("POST", "/scheduled/j1/run-now"),
        ("POST", "/scheduled/j1/retime"),
        ("GET", "/schedules"),
        ("POST", "/schedules"),
        ("POST", "/schedules/nightly/pause"),
        ("POST", "/schedules/nightly/run-now"),
        ("DELETE", "/schedules/nightly"),
    ],
)
async def test_the_timed_routes_sit_behind_the_api_token(
    make: Make, method: str, path: str
) -> None:
    client, _ = await make(api_token=TOKEN)
    resp = await client.request(method, path)
    assert resp.status == 401
    assert (await resp.json())["error"] == "unauthorized"


async def test_without_a_pool_the_timed_routes_answer_503(make: Make) -> None:
    client, _ = await make()
    for method, path in (("GET", "/scheduled"), ("GET", "/schedules")):
        resp = await client.request(method, path)
        assert resp.status == 503
        assert (await resp.json())["error"] == "database_unavailable"


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("due_after=tomorrow", "due_after"),
        ("due_before=2027-01-01T00:00:00", "due_before"),
        ("limit=0", "limit"),
        ("limit=many", "limit"),
        ("status=scheduled", "status"),
    ],
)
async def test_bad_filters_of_the_scheduled_list_are_400(make: Make, query: str, loc: str) -> None:
    client, _ = await make()
    resp = await client.get(f"/scheduled?{query}")
    assert resp.status == 400
    assert [loc] in locs(await resp.json())


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"run_at": "2030-01-01T00:00:00Z", "delay_s": 5},
        {"run_at": "2030-01-01T00:00:00"},
        {"delay_s": "soon"},
        {"delay_s": -3},
        {"when": "later"},
        [1, 2],
    ],
)
async def test_a_bad_retime_is_400(make: Make, body: Any) -> None:
    client, _ = await make()
    resp = await post_json_to(client, "/scheduled/j1/retime", body)
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"name": "n", "type": "echo"}, []),  # neither cron nor every_s
        ({"name": "n", "type": "echo", "cron": "61 * * * *"}, []),
        ({"name": "n", "type": "echo", "cron": "* * * * *", "every_s": 5}, []),
        ({"name": "n", "type": "echo", "every_s": 5, "timezone": "Mars/Olympus"}, ["timezone"]),
        ({"name": "n", "type": "echo", "every_s": 5, "missed": "sometimes"}, ["missed"]),
        ({"name": "n", "type": "echo", "every_s": -5}, ["every_s"]),
        ({"name": "n n", "type": "echo", "every_s": 5}, ["name"]),
        ({"name": "n", "type": "nope", "every_s": 5}, ["type"]),
        ({"name": "n", "type": "sleep", "every_s": 5, "payload": {"seconds": "x"}}, ["payload"]),
        ({"name": "n", "type": "echo", "every_s": 5, "owner": "me"}, ["owner"]),
    ],
)
async def test_a_bad_schedule_is_400_before_the_database(
    make: Make, body: dict[str, Any], loc: list[str]
) -> None:
    client, _ = await make()
    resp = await post_json_to(client, "/schedules", body)
    assert resp.status == 400, await resp.text()
    got = await resp.json()
    assert got["error"] == "invalid_request"
    if loc:
        assert any(e["loc"][: len(loc)] == loc for e in got["errors"]), got


async def test_a_schedule_body_that_is_not_json_is_refused_like_post_jobs(make: Make) -> None:
    client, _ = await make()
    resp = await client.post("/schedules", data=b"name=n", headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    resp = await client.post("/schedules", data=b"{", headers={"Content-Type": "application/json"})
    assert resp.status == 400


async def post_json_to(client: Any, path: str, body: Any) -> Any:
    import json

    return await client.post(
        path, data=json.dumps(body), headers={"Content-Type": "application/json"}
    )
