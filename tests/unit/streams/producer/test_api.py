"""The producer API's HTTP behaviour over a real aiohttp server, with in-memory Kafka and rows.

Only what HTTP decides is tested here (validation, auth, limits, status codes, error bodies);
that the events really land in Kafka and rows come from PostgreSQL is the integration tier's.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from pydantic import BaseModel, SecretStr, model_validator

from jobstream.agents.app import resolve
from jobstream.agents.builtin import builtin
from jobstream.agents.handlers.basic import echo
from jobstream.agents.registry import JobType, Registry
from jobstream.streams.httpserver import HttpLimits, start_http_server
from jobstream.streams.metrics import Metrics
from jobstream.streams.producer import api
from jobstream.streams.producer.api import MAX_BATCH, api_routes
from jobstream.streams.settings import Settings
from jobstream.streams.topics import TopicNames, topic_names

TOKEN = "s3cret-token"


class Boom(BaseModel):
    """A payload model with a bug: it raises something pydantic does not turn into errors."""

    @model_validator(mode="before")
    @classmethod
    def explode(cls, data: Any) -> Any:
        raise RuntimeError("payload model bug with a secret inside")


def registry() -> Registry:
    r = Registry()
    for name in ("echo", "sleep"):
        r.register(resolve(builtin.jobs[name], Settings()))
    r.register(JobType(name="boom", payload_model=Boom, handler=echo))
    return r


class FakePublisher:
    """Records sends; can fail at send time, fail at delivery, or never deliver."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []
        self.fail_send: Exception | None = None
        self.fail_delivery: Exception | None = None
        self.hang = False

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[None]:
        if self.fail_send is not None:
            raise self.fail_send
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail_delivery is not None:
            fut.set_exception(self.fail_delivery)
        elif not self.hang:
            self.sent.append((topic, key, value))
            fut.set_result(None)
        return fut

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(value or b"") for _, _, value in self.sent]


class FakeStore:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.broken = False

    async def get(self, job_id: str) -> dict[str, Any] | None:
        if self.broken:
            raise ConnectionRefusedError("database is down")
        return self.rows.get(job_id)


@dataclass
class FakeRuntime:
    settings: Settings
    publisher: FakePublisher = field(default_factory=FakePublisher)
    store: FakeStore | None = field(default_factory=FakeStore)
    registry: Registry = field(default_factory=registry)
    metrics: Metrics = field(default_factory=Metrics)
    pool: Any = None

    @property
    def topics(self) -> TopicNames:
        return topic_names(self.settings.topic_prefix)


Make = Callable[..., Awaitable[tuple[TestClient[web.Request, web.Application], FakeRuntime]]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def build(
        **settings: Any,
    ) -> tuple[TestClient[web.Request, web.Application], FakeRuntime]:
        rt = FakeRuntime(Settings(topic_prefix="tapi", **settings))
        app = web.Application(  # as streams/worker/health.py does
            client_max_size=rt.settings.api_max_body_bytes, middlewares=[api.json_errors]
        )
        app.add_routes(api_routes(rt))
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client, rt

    yield build
    for client in clients:
        await client.close()


async def post_json(client: TestClient[Any, Any], body: Any, **kw: Any) -> Any:
    return await client.post("/jobs", data=json.dumps(body), headers=_json(kw.pop("headers", {})))


def _json(headers: dict[str, str]) -> dict[str, str]:
    return {"Content-Type": "application/json", **headers}


def locs(body: dict[str, Any]) -> list[list[Any]]:
    return [e["loc"] for e in body["errors"]]


# --- POST /jobs: the happy paths ---------------------------------------------------------------


async def test_a_job_is_published_keyed_by_its_id_and_answered_202_with_location(
    make: Make,
) -> None:
    client, rt = await make()
    posted = {"type": "echo", "payload": {"greeting": "hi"}, "metadata": {"team": "a"}}
    resp = await post_json(client, posted)

    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "queued"
    assert resp.headers["Location"] == f"/jobs/{body['id']}"
    [(topic, key, _)] = rt.publisher.sent
    assert topic == "tapi"
    assert key == body["id"].encode()
    [event] = rt.publisher.events()
    assert {k: event[k] for k in posted} == posted
    assert event["id"] == body["id"]
    assert event["attempt"] == 1
    assert event["v"] == 1
    assert event["history"] == []


async def test_the_callers_id_and_partition_key_are_kept(make: Make) -> None:
    client, rt = await make()
    resp = await post_json(
        client, {"type": "echo", "id": "order-17", "partition_key": "customer-3"}
    )
    assert resp.status == 202
    assert (await resp.json())["id"] == "order-17"
    [(_, key, _)] = rt.publisher.sent
    assert key == b"customer-3"  # keyed like JobClient: partition_key wins over the id


async def test_a_null_id_gets_a_server_id(make: Make) -> None:
    client, _ = await make()
    resp = await post_json(client, {"type": "echo", "id": None})
    assert resp.status == 202
    assert len((await resp.json())["id"]) == 32


async def test_the_location_of_an_id_with_reserved_characters_leads_back_to_it(
    make: Make,
) -> None:
    client, rt = await make()
    resp = await post_json(client, {"type": "echo", "id": "a/b c?d"})
    location = resp.headers["Location"]
    assert location == "/jobs/a%2Fb%20c%3Fd"
    assert rt.store is not None
    rt.store.rows["a/b c?d"] = {"job_id": "a/b c?d", "status": "succeeded", "attempt": 1}
    got = await client.get(location)
    assert got.status == 200
    assert (await got.json())["id"] == "a/b c?d"


async def test_a_batch_is_published_in_order_and_answers_ids_in_order(make: Make) -> None:
    client, rt = await make()
    jobs = [{"type": "echo", "payload": {"n": i}, "partition_key": "same"} for i in range(5)]
    jobs[2]["id"] = "third"
    resp = await post_json(client, jobs)

    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "queued"
    assert body["ids"][2] == "third"
    assert [e["id"] for e in rt.publisher.events()] == body["ids"]
    assert [e["payload"]["n"] for e in rt.publisher.events()] == list(range(5))
    assert "Location" not in resp.headers


async def test_a_full_batch_is_accepted(make: Make) -> None:
    client, rt = await make()
    resp = await post_json(client, [{"type": "echo"}] * MAX_BATCH)
    assert resp.status == 202
    assert len(set((await resp.json())["ids"])) == MAX_BATCH
    assert len(rt.publisher.sent) == MAX_BATCH


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "application/json;charset=UTF8", "application/x+json"],
)
async def test_json_content_types_with_utf8_are_accepted(make: Make, content_type: str) -> None:
    client, _ = await make()
    resp = await client.post(
        "/jobs", data=b'{"type": "echo"}', headers={"Content-Type": content_type}
    )
    assert resp.status == 202


# --- POST /jobs: validation ---------------------------------------------------------------------


async def test_an_unknown_type_is_refused_naming_the_known_ones(make: Make) -> None:
    client, rt = await make()
    resp = await post_json(client, {"type": "ecko", "payload": {}})
    assert resp.status == 400
    body = await resp.json()
    assert locs(body) == [["type"]]
    assert "'ecko'" in body["errors"][0]["msg"]
    assert "boom, echo, sleep" in body["errors"][0]["msg"]
    assert body["known_types"] == ["boom", "echo", "sleep"]
    assert rt.publisher.sent == []


async def test_the_payload_is_checked_against_the_job_types_model(make: Make) -> None:
    client, rt = await make()
    resp = await post_json(client, {"type": "sleep", "payload": {"seconds": -1, "snooze": True}})
    assert resp.status == 400
    body = await resp.json()
    assert sorted(locs(body)) == [["payload", "seconds"], ["payload", "snooze"]]
    assert all(set(e) == {"loc", "msg", "type"} for e in body["errors"])  # never the input
    assert rt.publisher.sent == []


@pytest.mark.parametrize(
    ("job", "loc"),
    [
        ({"payload": {}}, ["type"]),
        ({"type": ""}, ["type"]),
        ({"type": "echo", "payload": []}, ["payload"]),
        ({"type": "echo", "metadata": {"n": 1}}, ["metadata", "n"]),
        ({"type": "echo", "id": "x" * 201}, ["id"]),
        ({"type": "echo", "partition_key": 5}, ["partition_key"]),
    ],
)
async def test_job_event_field_errors_name_the_field(
    make: Make, job: dict[str, Any], loc: list[Any]
) -> None:
    client, rt = await make()
    resp = await post_json(client, job)
    assert resp.status == 400
    assert loc in locs(await resp.json())
    assert rt.publisher.sent == []


@pytest.mark.parametrize("worker_field", ["attempt", "history", "not_before", "v", "created_at"])
async def test_fields_owned_by_the_workers_are_refused(make: Make, worker_field: str) -> None:
    client, rt = await make()
    resp = await post_json(client, {"type": "echo", worker_field: 3})
    assert resp.status == 400
    assert [worker_field] in locs(await resp.json())
    assert rt.publisher.sent == []


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"type": "echo",', "not valid JSON"),
        (b'{"type": "echo", "payload": {"x": NaN}}', "NaN"),
        (b'"echo"', "got a string"),
        (b"42", "got a number"),
        (b"null", "got null"),
        (b"", "not valid JSON"),
        (b'{"type": "\xff"}', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ],
)
async def test_bodies_that_are_not_a_job_get_a_json_400(
    make: Make, raw: bytes, fragment: str
) -> None:
    client, rt = await make()
    resp = await client.post("/jobs", data=raw, headers=_json({}))
    assert resp.status == 400
    body = await resp.json()
    assert locs(body) == [[]]
    assert fragment in body["errors"][0]["msg"]
    assert rt.publisher.sent == []


async def test_a_batch_is_all_or_nothing_and_locates_errors_by_index(make: Make) -> None:
    client, rt = await make()
    jobs: list[Any] = [
        {"type": "echo"},
        {"type": "sleep", "payload": {"seconds": "long"}},
        {"type": "echo"},
        "not a job",
        {"type": "nope"},
    ]
    resp = await post_json(client, jobs)
    assert resp.status == 400
    body = await resp.json()
    assert locs(body) == [[1, "payload", "seconds"], [3], [4, "type"]]
    assert "known_types" in body
    assert rt.publisher.sent == []


async def test_an_empty_batch_is_refused(make: Make) -> None:
    client, _ = await make()
    resp = await post_json(client, [])
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["type"] == "batch_empty"


async def test_a_batch_over_the_limit_is_refused_before_validation(make: Make) -> None:
    client, rt = await make()
    resp = await post_json(client, [{"type": "echo"}] * (MAX_BATCH + 1))
    assert resp.status == 400
    body = await resp.json()
    assert body["errors"][0]["type"] == "batch_too_long"
    assert body["max_batch"] == MAX_BATCH
    assert rt.publisher.sent == []


async def test_duplicate_ids_in_a_batch_are_refused(make: Make) -> None:
    client, rt = await make()
    resp = await post_json(client, [{"type": "echo", "id": "a"}, {"type": "echo", "id": "a"}])
    assert resp.status == 400
    body = await resp.json()
    assert locs(body) == [[1, "id"]]
    assert "item 0" in body["errors"][0]["msg"]
    assert rt.publisher.sent == []


async def test_an_event_the_workers_would_refuse_as_oversize_is_refused_now(make: Make) -> None:
    client, rt = await make(max_event_bytes=1024, api_max_body_bytes=4096)
    resp = await post_json(client, {"type": "echo", "payload": {"pad": "x" * 1000}})
    assert resp.status == 400
    body = await resp.json()
    assert body["errors"][0]["type"] == "event_too_large"
    assert rt.publisher.sent == []


# --- POST /jobs: media type and size -----------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "application/json; charset=latin-1"},
        {},
    ],
)
async def test_a_body_that_is_not_json_is_415(make: Make, headers: dict[str, str]) -> None:
    client, rt = await make()
    resp = await client.post("/jobs", data=b'{"type": "echo"}', headers=headers)
    assert resp.status == 415
    body = await resp.json()
    assert body["error"] == "unsupported_media_type"
    assert "application/json" in body["detail"]
    assert rt.publisher.sent == []


async def test_a_body_over_the_limit_is_a_json_413(make: Make) -> None:
    client, rt = await make(api_max_body_bytes=1024)
    resp = await post_json(client, {"type": "echo", "payload": {"pad": "x" * 2000}})
    assert resp.status == 413
    body = await resp.json()
    assert body["error"] == "body_too_large"
    assert body["max_body_bytes"] == 1024
    assert "1024" in body["detail"]
    assert rt.publisher.sent == []


async def test_a_chunked_body_over_the_limit_is_a_json_413(make: Make) -> None:
    client, rt = await make(api_max_body_bytes=1024)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is counted
        yield b'{"type": "echo", "payload": {"pad": "'
        for _ in range(10):
            yield b"x" * 200
        yield b'"}}'

    resp = await client.post("/jobs", data=chunks(), headers=_json({}))
    assert resp.status == 413
    assert (await resp.json())["error"] == "body_too_large"
    assert rt.publisher.sent == []


async def test_the_limit_counts_the_body_after_content_encoding(make: Make) -> None:
    client, rt = await make(api_max_body_bytes=1024)
    raw = json.dumps({"type": "echo", "payload": {"pad": "x" * 100_000}}).encode()
    small = gzip.compress(raw)
    assert len(small) < 1024
    headers = _json({"Content-Encoding": "gzip"})
    resp = await client.post("/jobs", data=small, headers=headers)
    assert resp.status == 413
    assert rt.publisher.sent == []
    ok = gzip.compress(b'{"type": "echo"}')
    assert (await client.post("/jobs", data=ok, headers=headers)).status == 202


async def test_a_body_of_exactly_the_limit_is_accepted(make: Make) -> None:
    client, _ = await make(api_max_body_bytes=1024)
    empty = json.dumps({"type": "echo", "payload": {"pad": ""}}).encode()
    raw = json.dumps({"type": "echo", "payload": {"pad": "x" * (1024 - len(empty))}}).encode()
    assert len(raw) == 1024
    resp = await client.post("/jobs", data=raw, headers=_json({}))
    assert resp.status == 202


# --- auth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer ünïcode"],
)
async def test_without_the_right_token_it_is_401(make: Make, authorization: str | None) -> None:
    client, rt = await make(api_token=SecretStr(TOKEN))
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = await post_json(client, {"type": "echo"}, headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await resp.json())["error"] == "unauthorized"
    got = await client.get("/jobs/anything", headers=headers)
    assert got.status == 401
    assert rt.publisher.sent == []


async def test_auth_comes_before_anything_else(make: Make) -> None:
    client, _ = await make(api_token=SecretStr(TOKEN), api_max_body_bytes=1024)
    resp = await client.post("/jobs", data=b"x" * 5000, headers={"Content-Type": "text/plain"})
    assert resp.status == 401


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
async def test_with_the_token_it_passes(make: Make, scheme: str) -> None:
    client, _ = await make(api_token=SecretStr(TOKEN))
    auth = {"Authorization": f"{scheme} {TOKEN}"}
    resp = await post_json(client, {"type": "echo"}, headers=auth)
    assert resp.status == 202
    assert (await client.get("/jobs/nope", headers=auth)).status == 404


async def test_an_empty_configured_token_lets_nobody_in(make: Make) -> None:
    client, _ = await make(api_token=SecretStr(""))
    resp = await post_json(client, {"type": "echo"}, headers={"Authorization": "Bearer "})
    assert resp.status == 401


# --- POST /jobs: Kafka failures and bugs -------------------------------------------------------


async def assert_503_with_retry_hint(resp: Any) -> dict[str, Any]:
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    assert resp.content_type == "application/json"
    text = await resp.text()
    assert "Traceback" not in text
    body: dict[str, Any] = json.loads(text)
    assert body["error"] == "kafka_unavailable"
    assert body["retry_after_s"] == 5
    assert "same ids" in body["detail"]
    return body


async def test_kafka_refusing_the_send_is_503_with_a_retry_hint(make: Make) -> None:
    client, rt = await make()
    rt.publisher.fail_send = KafkaConnectionError("broker 127.0.0.1:9 unreachable")
    body = await assert_503_with_retry_hint(
        await post_json(client, {"type": "echo", "id": "keep-me"})
    )
    assert body["ids"] == ["keep-me"]


async def test_kafka_failing_the_delivery_is_503(make: Make) -> None:
    client, rt = await make()
    rt.publisher.fail_delivery = KafkaTimeoutError()
    body = await assert_503_with_retry_hint(await post_json(client, [{"type": "echo"}] * 3))
    assert len(body["ids"]) == 3


async def test_kafka_never_confirming_is_503_after_the_publish_timeout(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "PUBLISH_TIMEOUT_S", 0.05)
    client, rt = await make()
    rt.publisher.hang = True
    await assert_503_with_retry_hint(await post_json(client, {"type": "echo"}))


async def test_an_unexpected_error_is_a_json_500_without_details(make: Make) -> None:
    client, rt = await make()
    resp = await post_json(client, {"type": "boom"})
    assert resp.status == 500
    text = await resp.text()
    assert json.loads(text) == {"error": "internal_error", "detail": "unexpected server error"}
    assert "secret" not in text
    assert rt.publisher.sent == []


# --- GET /jobs/{id} ------------------------------------------------------------------------------


async def test_a_stored_row_is_shown_with_iso_timestamps(make: Make) -> None:
    client, rt = await make()
    finished = datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=UTC)
    assert rt.store is not None
    rt.store.rows["j1"] = {
        "job_id": "j1",
        "type": "echo",
        "status": "succeeded",
        "attempt": 2,
        "result": {"echo": {"a": 1}},
        "error": None,
        "error_class": None,
        "executions": 3,
        "worker": "w1",
        "source": None,
        "replay_of": None,
        "created_at": finished,
        "finished_at": finished,
        "updated_at": finished,
    }
    resp = await client.get("/jobs/j1")
    assert resp.status == 200
    body = await resp.json()
    assert body["id"] == "j1"
    assert body["status"] == "succeeded"
    assert body["attempt"] == 2
    assert body["executions"] == 3
    assert body["result"] == {"echo": {"a": 1}}
    assert body["finished_at"] == "2026-03-01T12:30:05.123456+00:00"
    assert "job_id" not in body


async def test_an_id_without_a_row_is_404_unknown(make: Make) -> None:
    client, _ = await make()
    resp = await client.get("/jobs/never-seen")
    assert resp.status == 404
    body = await resp.json()
    assert (body["id"], body["status"]) == ("never-seen", "unknown")


async def test_an_id_longer_than_any_job_id_is_400(make: Make) -> None:
    client, _ = await make()
    resp = await client.get("/jobs/" + "x" * 201)
    assert resp.status == 400


async def test_a_store_that_is_down_or_missing_is_503(make: Make) -> None:
    client, rt = await make()
    assert rt.store is not None
    rt.store.broken = True
    resp = await client.get("/jobs/j1")
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    assert (await resp.json())["error"] == "database_unavailable"
    rt.store = None
    assert (await client.get("/jobs/j1")).status == 503


# --- metrics, the standalone server's own routes, the CLI --------------------------------------


async def test_requests_and_submissions_are_counted(make: Make) -> None:
    client, rt = await make()
    await post_json(client, [{"type": "echo"}, {"type": "sleep"}])
    await post_json(client, {"type": "nope"})
    await client.get("/jobs/x")
    sample = rt.metrics.registry.get_sample_value
    assert sample("jobstream_api_requests_total", {"route": "submit", "status": "202"}) == 1
    assert sample("jobstream_api_requests_total", {"route": "submit", "status": "400"}) == 1
    assert sample("jobstream_api_requests_total", {"route": "status", "status": "404"}) == 1
    assert sample("jobstream_api_jobs_submitted_total", {"type": "sleep"}) == 1
    api_routes(rt)  # mounting twice on one registry must not register the metrics twice


# --- hostile input: every refusal a 4xx with the JSON error shape --------------------------------


async def raw_request(client: TestClient[Any, Any], request: bytes) -> tuple[int, bytes]:
    """Bytes no HTTP client library would send (header bytes that are not UTF-8)."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("presented", [b"\xff\xfe", b"s3cret-token\xff", b"\xc3\x28"])
async def test_a_token_that_is_not_utf8_is_a_401_not_a_500(make: Make, presented: bytes) -> None:
    client, _ = await make(api_token=SecretStr(TOKEN))
    status, body = await raw_request(
        client,
        b"GET /jobs/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        b"Authorization: Bearer " + presented + b"\r\n\r\n",
    )
    assert status == 401
    assert json.loads(body)["error"] == "unauthorized"


def nested_payload(levels: int) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for _ in range(levels - 1):
        payload = {"a": payload}
    return payload


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"type": "echo", "payload": {"x": "\\ud800"}}', ["payload"]),
        (b'{"type": "echo", "payload": {"x\\udfff": 1}}', ["payload"]),
        (b'{"type": "echo", "payload": {"x": "a\\u0000b"}}', ["payload"]),
        (b'{"type": "echo\\u0000"}', ["type"]),
        (b'{"type": "echo", "metadata": {"k": "\\ud83d"}}', ["metadata"]),
        (b'{"type": "echo", "id": "a\\u0000"}', ["id"]),
        (b'{"type": "echo", "payload": {"x": 1e999}}', ["payload"]),
        (json.dumps({"type": "echo", "payload": nested_payload(256)}).encode(), ["payload"]),
        (json.dumps({"type": "echo", "payload": nested_payload(400)}).encode(), ["payload"]),
        (json.dumps([{"type": "echo", "payload": nested_payload(300)}]).encode(), [0, "payload"]),
    ],
)
async def test_what_a_worker_would_dead_letter_as_undecodable_is_a_400(
    make: Make, body: bytes, where: list[Any]
) -> None:
    """Lone surrogates, NUL, depth and numbers past a double: once a 500 or a 202 followed by
    a dead letter; now the same rule as the workers' decode, answered before publishing."""
    client, rt = await make()
    resp = await client.post("/jobs", data=body, headers=_json({}))
    assert resp.status == 400, await resp.text()
    answer = await resp.json()
    assert answer["error"] == "invalid_request"
    assert locs(answer) == [where]
    assert rt.publisher.sent == []


async def test_the_deepest_payload_a_worker_decodes_is_accepted(make: Make) -> None:
    from jobstream.agents.decode import MAX_DEPTH, decode_event

    client, rt = await make()
    resp = await post_json(client, {"type": "echo", "payload": nested_payload(MAX_DEPTH - 1)})
    assert resp.status == 202
    [(_, _, value)] = rt.publisher.sent
    assert decode_event(value, max_bytes=rt.settings.max_event_bytes).type == "echo"
    resp = await post_json(client, {"type": "echo", "payload": nested_payload(MAX_DEPTH)})
    assert resp.status == 400


@pytest.mark.parametrize("job_id", ["a%00b", "%00", "%00%00"])
async def test_an_id_no_row_can_have_is_400_not_503(make: Make, job_id: str) -> None:
    client, _ = await make()
    resp = await client.get(f"/jobs/{job_id}")
    assert resp.status == 400
    assert "Retry-After" not in resp.headers
    assert (await resp.json())["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nowhere", 404, "not_found"),
        ("DELETE", "/jobs", 405, "method_not_allowed"),
        ("PUT", "/jobs/x", 405, "method_not_allowed"),
    ],
)
async def test_the_routers_refusals_are_json_too(
    make: Make, method: str, path: str, status: int, code: str
) -> None:
    client, _ = await make()
    resp = await client.request(method, path)
    assert resp.status == status
    assert resp.content_type == "application/json"
    assert (await resp.json())["error"] == code


async def test_a_broken_chunked_body_is_a_400_that_quotes_none_of_it() -> None:
    """Served as production serves it (streams.httpserver): the broken chunk arrives while the
    handler reads the body, and fails that read at once."""
    rt = FakeRuntime(Settings(topic_prefix="tapi"))
    app = web.Application(middlewares=[api.json_errors])
    app.add_routes(api_routes(rt))
    runner = await start_http_server(app, host="127.0.0.1", port=0, limits=HttpLimits())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])
        writer.write(
            b"POST /jobs HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5\r\n{"typ\r\n'
        )
        await writer.drain()
        await asyncio.sleep(0.05)  # the handler is reading the body when the broken chunk comes
        writer.write(b"zz\r\nChunkPayloadMarker\r\n0\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    finally:
        await runner.cleanup()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["errors"][0]["type"] == "body_invalid"
    assert b"ChunkPayloadMarker" not in answer
    assert b"zz" not in body
    assert rt.publisher.sent == []
