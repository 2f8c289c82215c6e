"""The job-control parts of the producer API that HTTP decides: the ``dedupe`` object, the
cancel route and ``?wait=`` refused as 4xx in the API's error shape, and the answers without a
database. What they do to real rows is ``tests/integration/test_control_api.py``'s."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.unit.streams.producer.test_api import TOKEN, Make, locs, make, post_json

__all__ = ["make"]  # the fixture, shared with the API's other tests


@pytest.mark.parametrize(
    ("dedupe", "why"),
    [
        ("k", "an object with key, mode and ttl_s"),
        ({"mode": "simple"}, "dedupe.key is a string"),
        ({"key": ""}, "non-empty"),
        ({"key": "k", "mode": "often"}, "one of simple, throttle, debounce"),
        ({"key": "k", "mode": "throttle"}, "throttle needs a ttl"),
        ({"key": "k", "ttl_s": "5"}, "a number of seconds"),
        ({"key": "k", "ttl_s": -1}, "more than 0"),
        ({"key": "k", "window": 5}, "not window"),
        ({"key": "a\x00b"}, "U\\+0000"),
    ],
)
async def test_a_bad_dedupe_object_is_a_400_naming_it_and_nothing_is_published(
    make: Make, dedupe: Any, why: str
) -> None:
    client, rt = await make()
    resp = await post_json(client, {"type": "echo", "dedupe": dedupe})
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "invalid_request"
    assert locs(body) == [["dedupe"]]
    assert re.search(why, body["errors"][0]["msg"]), body["errors"]
    assert rt.publisher.sent == []


async def test_in_a_batch_the_dedupe_error_names_its_item(make: Make) -> None:
    client, _ = await make()
    resp = await post_json(client, [{"type": "echo"}, {"type": "echo", "dedupe": {"key": 3}}])
    assert resp.status == 400
    assert locs(await resp.json()) == [[1, "dedupe"]]


async def test_debounce_without_a_delay_is_a_400(make: Make) -> None:
    client, rt = await make()
    resp = await post_json(client, {"type": "echo", "dedupe": {"key": "k", "mode": "debounce"}})
    assert resp.status == 400
    body = await resp.json()
    assert locs(body) == [["dedupe", "mode"]]
    assert "debounce needs a delay" in body["errors"][0]["msg"]
    assert rt.publisher.sent == []


async def test_control_without_a_database_is_a_503_that_says_when_to_retry(make: Make) -> None:
    client, rt = await make()
    for resp in (
        await post_json(client, {"type": "echo", "dedupe": {"key": "k"}}),
        await client.post("/jobs/abc/cancel"),
        await client.get("/jobs/abc?wait=1"),
    ):
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "5"
        assert (await resp.json())["error"] == "database_unavailable"
    assert rt.publisher.sent == []


@pytest.mark.parametrize("wait", ["soon", "-1", "61", "nan", "inf", "1e400"])
async def test_a_wait_that_is_not_a_bounded_number_is_a_400(make: Make, wait: str) -> None:
    client, _ = await make()
    resp = await client.get(f"/jobs/abc?wait={wait}")
    assert resp.status == 400
    assert locs(await resp.json()) == [["wait"]]


async def test_a_cancel_of_an_id_no_job_can_have_is_a_400(make: Make) -> None:
    client, _ = await make()
    for job_id in ("x" * 201, "a%00b"):
        resp = await client.post(f"/jobs/{job_id}/cancel")
        assert resp.status == 400
        assert locs(await resp.json()) == [["id"]]


async def test_a_cancel_needs_the_token_and_post(make: Make) -> None:
    client, _ = await make(api_token=TOKEN)
    resp = await client.post("/jobs/abc/cancel")
    assert resp.status == 401
    assert (await resp.json())["error"] == "unauthorized"
    resp = await client.get("/jobs/abc/cancel", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 405
    assert (await resp.json())["error"] == "method_not_allowed"


async def test_a_status_shows_progress_and_control_fields(make: Make) -> None:
    client, rt = await make()
    assert rt.store is not None
    rt.store.rows["p"] = {
        "job_id": "p", "status": "running", "attempt": 1, "progress": 0.25,
        "progress_detail": "page 1 of 4", "dedupe_key": "user-1",
    }  # fmt: skip
    body = await (await client.get("/jobs/p")).json()
    assert (body["progress"], body["progress_detail"], body["dedupe_key"]) == (
        0.25,
        "page 1 of 4",
        "user-1",
    )
    rt.store.rows["q"] = {"job_id": "q", "status": "succeeded", "attempt": 1}
    body = await (await client.get("/jobs/q")).json()
    assert body["progress"] is None
    assert "cancel_requested_at" not in body
