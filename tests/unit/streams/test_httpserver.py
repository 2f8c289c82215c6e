"""The HTTP read deadlines, the connection cap and client disconnects, over raw sockets.

Every test starts a real server on 127.0.0.1 with :func:`start_http_server` and short limits,
and talks to it with plain asyncio streams, so a client can do what no HTTP library does on
purpose: stall mid-header, stall mid-body, vanish mid-body. "Closed by the server" is always
observed as EOF on the client's side, waited for with an upper bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from jobstream.agents.app import resolve
from jobstream.agents.builtin import builtin
from jobstream.agents.registry import Registry
from jobstream.streams.httpserver import HttpLimits, start_http_server
from jobstream.streams.metrics import Metrics
from jobstream.streams.polling import wait_until
from jobstream.streams.producer.api import api_routes
from jobstream.streams.producer.server import ApiServer
from jobstream.streams.settings import Settings
from jobstream.streams.topics import TopicNames, topic_names

FAST = HttpLimits(header_timeout_s=0.5, body_timeout_s=0.5, keepalive_timeout_s=5.0)
HEADERS_1000 = (
    b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n"
)


@dataclass
class ApiHost:
    """What :func:`api_routes` needs; the bodies in these tests never complete, so nothing is
    ever published or looked up."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    publisher: Any = None
    store: Any = None
    registry: Registry = field(default_factory=Registry)
    pool: Any = None

    @property
    def topics(self) -> TopicNames:
        return topic_names(self.settings.topic_prefix)


def small_app(api: ApiHost | None = None) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str(msg.data)
        return sock

    app = web.Application()
    app.add_routes([web.get("/health", health), web.post("/echo", echo), web.get("/ws", ws)])
    if api is not None:
        app.add_routes(api_routes(api))
    return app


Serve = Callable[..., Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts a hardened server with the given limits; returns its port."""
    runners: list[web.AppRunner] = []

    async def start(limits: HttpLimits, app: web.Application | None = None) -> int:
        runner = await start_http_server(
            app or small_app(), host="127.0.0.1", port=0, limits=limits, shutdown_timeout_s=1
        )
        runners.append(runner)
        return int(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it closes the connection; fails after ``within``."""
    data = b""
    async with asyncio.timeout(within):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                data += chunk
    return data


async def get_health(port: int) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/health") as r:
        return r.status


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float) -> None:
    """Polls ``check`` until it holds; fails after ``within`` seconds."""
    await wait_until(check, within_s=within, interval_s=0.02, error=AssertionError)


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


# -- header deadline --------------------------------------------------------------------------


async def test_a_connection_that_sends_nothing_is_closed_at_the_header_deadline(
    serve: Serve,
) -> None:
    port = await serve(FAST)
    reader, writer = await connect(port)
    started = time.monotonic()
    assert await until_closed(reader, within=5) == b""
    assert time.monotonic() - started >= FAST.header_timeout_s * 0.9  # the timer, not a refusal
    writer.close()


async def test_headers_dribbled_a_byte_at_a_time_do_not_extend_the_deadline(
    serve: Serve,
) -> None:
    port = await serve(FAST)
    reader, writer = await connect(port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ")

    async def dribble() -> None:
        with contextlib.suppress(ConnectionError):
            while True:  # a slowloris client: one byte every 50 ms, forever
                writer.write(b"a")
                await writer.drain()
                await asyncio.sleep(0.05)

    task = asyncio.create_task(dribble())
    try:
        assert await until_closed(reader, within=5) == b""
    finally:
        task.cancel()
        writer.close()


async def test_an_idle_keep_alive_connection_is_closed_by_the_keep_alive_timeout(
    serve: Serve,
) -> None:
    limits = HttpLimits(header_timeout_s=0.3, body_timeout_s=0.3, keepalive_timeout_s=1.0)
    port = await serve(limits)
    reader, writer = await connect(port)
    for _ in range(2):  # two requests on one connection: keep-alive works
        writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert status_of(head) == 200
        await asyncio.wait_for(reader.readexactly(16), 5)  # {"status": "ok"}
    idle_since = time.monotonic()
    assert await until_closed(reader, within=5) == b""
    # idle between requests is the keep-alive timeout's business, not the header deadline's
    assert time.monotonic() - idle_since >= limits.keepalive_timeout_s * 0.9
    writer.close()


async def test_pipelined_requests_in_one_write_are_all_answered(serve: Serve) -> None:
    port = await serve(FAST)
    reader, writer = await connect(port)
    post = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"
    get = b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    writer.write(post + get)
    data = await until_closed(reader, within=5)
    assert data.count(b"HTTP/1.1 200 OK") == 2
    writer.close()


# -- body deadline ----------------------------------------------------------------------------


async def test_one_byte_of_a_1000_byte_body_gets_408_and_a_closed_connection(
    serve: Serve,
) -> None:
    port = await serve(FAST)
    reader, writer = await connect(port)
    writer.write(HEADERS_1000 + b"{")
    data = await until_closed(reader, within=5)
    assert status_of(data) == 408
    writer.close()


async def test_a_body_that_arrives_slowly_but_in_time_is_served(serve: Serve) -> None:
    port = await serve(HttpLimits(header_timeout_s=2, body_timeout_s=2, keepalive_timeout_s=5))
    reader, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        writer.write(b"5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
    writer.write(b"0\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert status_of(head) == 200
    assert await asyncio.wait_for(reader.readexactly(15), 5) == b"hello" * 3
    writer.close()


async def test_500_stalled_bodies_are_all_cut_off_and_the_server_keeps_serving(
    serve: Serve,
) -> None:
    limits = HttpLimits(header_timeout_s=5, body_timeout_s=1.0, keepalive_timeout_s=5)
    port = await serve(limits)
    conns = await asyncio.gather(*(connect(port) for _ in range(500)))
    for _, writer in conns:
        writer.write(HEADERS_1000 + b"{")
    await asyncio.gather(*(writer.drain() for _, writer in conns))
    sent = time.monotonic()
    answers = await asyncio.gather(*(until_closed(reader, within=20) for reader, _ in conns))
    took = time.monotonic() - sent
    assert [status_of(a) for a in answers] == [408] * 500
    assert await get_health(port) == 200
    print(f"500 stalled bodies (deadline {limits.body_timeout_s}s) all closed after {took:.2f}s")
    for _, writer in conns:
        writer.close()


# -- client disconnects -----------------------------------------------------------------------


async def disconnect_mid_body(port: int, path: bytes) -> None:
    _, writer = await connect(port)
    writer.write(HEADERS_1000.replace(b"/echo", path) + b'{"type": "ec')
    await writer.drain()
    writer.transport.abort()  # gone without a goodbye, as a killed client is


async def test_a_client_leaving_mid_body_is_no_error_and_no_500(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api = ApiHost(Settings(topic_prefix="thttp"))
    api.registry.register(resolve(builtin.jobs["echo"], api.settings))
    port = await serve(FAST, small_app(api))
    sample = api.metrics.registry.get_sample_value

    await disconnect_mid_body(port, b"/jobs")
    await disconnect_mid_body(port, b"/echo")  # a route with no handling of its own

    async def counted() -> bool:
        return sample("jobstream_api_requests_total", {"route": "submit", "status": "499"}) == 1

    await eventually(counted, within=5)
    assert await get_health(port) == 200  # by now both disconnects are handled
    assert sample("jobstream_api_requests_total", {"route": "submit", "status": "500"}) is None
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert loud == []


async def test_the_api_answers_a_stalled_body_with_a_json_408_and_counts_it(
    serve: Serve,
) -> None:
    api = ApiHost(Settings(topic_prefix="thttp", http_body_timeout_s=0.5))
    port = await serve(FAST, small_app(api))
    reader, writer = await connect(port)
    writer.write(HEADERS_1000.replace(b"/echo", b"/jobs") + b"{")
    data = await until_closed(reader, within=5)
    assert status_of(data) == 408
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"] == "body_timeout"
    sample = api.metrics.registry.get_sample_value
    assert sample("jobstream_api_requests_total", {"route": "submit", "status": "408"}) == 1
    writer.close()


# -- connection cap ---------------------------------------------------------------------------


async def test_connections_past_the_cap_get_503_and_the_admitted_ones_are_served(
    serve: Serve,
) -> None:
    limits = HttpLimits(header_timeout_s=10, body_timeout_s=10, keepalive_timeout_s=10)
    port = await serve(HttpLimits(**{**limits.__dict__, "max_connections": 3}))
    admitted = [await connect(port) for _ in range(3)]
    reader, writer = await connect(port)
    refused = await until_closed(reader, within=5)
    assert refused == b"" or status_of(refused) == 503  # 503, unless the reset outran it
    writer.close()

    r0, w0 = admitted[0]
    w0.write(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status_of(await asyncio.wait_for(r0.readuntil(b"\r\n\r\n"), 5)) == 200

    admitted.pop()[1].close()  # one slot frees up: new connections are served again

    async def served() -> bool:
        try:
            return await get_health(port) == 200
        except aiohttp.ClientError:
            return False

    await eventually(served, within=5)
    for _, w in admitted:
        w.close()


# -- what the deadlines must leave alone ------------------------------------------------------


async def test_a_websocket_outlives_the_header_and_body_deadlines(serve: Serve) -> None:
    limits = HttpLimits(header_timeout_s=0.2, body_timeout_s=0.2, keepalive_timeout_s=0.2)
    port = await serve(limits)
    async with aiohttp.ClientSession() as s, s.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
        for i in range(3):
            await asyncio.sleep(0.2)  # longer in all than every deadline, on purpose
            await ws.send_str(f"m{i}")
            assert (await asyncio.wait_for(ws.receive(), 5)).data == f"m{i}"


async def test_the_standalone_api_server_listens_with_the_limits() -> None:
    settings = Settings(topic_prefix="thttp", http_header_timeout_s=0.5)
    server = ApiServer(
        settings,
        bootstrap="127.0.0.1:1",
        dsn="postgresql://nobody@127.0.0.1:1/x",
        registry=Registry(),
    )
    [url] = await server.listen("127.0.0.1", 0)
    try:
        reader, writer = await connect(int(url.rsplit(":", 1)[1]))
        writer.write(b"GET /health HTTP/1.1\r\n")
        assert await until_closed(reader, within=5) == b""
        writer.close()
    finally:
        await server.stop()


# -- malformed requests -------------------------------------------------------------------------

TOKEN_MARK = "TokenMarkerInHeader5521"
BODY_MARK = "BodyMarkerInChunk6632"
MALFORMED = [
    f"GET /health HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN_MARK}\x01\r\n\r\n".encode(),
    f"GET /health HTTP/1.1\r\nHost: t\r\nX-{TOKEN_MARK} Bad: v\r\n\r\n".encode(),
    f"GET /{TOKEN_MARK}\xff HTTP/1.1\r\nHost: t\r\n\r\n".encode("latin-1"),
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    + f"zz\r\n{BODY_MARK}\r\n0\r\n\r\n".encode(),
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    + f"5\r\n{BODY_MARK}\r\n0\r\n\r\n".encode(),
    f"GET /health HTTP/1.1\r\nHost: t\r\nContent-Length: {TOKEN_MARK}\r\n\r\n".encode(),
    f"{TOKEN_MARK}\r\n\r\n".encode(),
]


async def test_a_malformed_request_is_a_json_400_quoting_nothing_and_one_quiet_warning(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's own answer quotes the offending header line (a token) or chunk (a payload) and
    logs it at ERROR with a traceback, once per request; here: a JSON 400, and for 200 of them
    one WARNING line that counts them."""
    caplog.set_level(logging.DEBUG)
    port = await serve(FAST)
    answers = []
    for i in range(200):
        reader, writer = await connect(port)
        writer.write(MALFORMED[i % len(MALFORMED)])
        await writer.drain()
        answers.append(await until_closed(reader, within=5))
        writer.close()
    assert await get_health(port) == 200
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert status_of(head) == 400
        assert json.loads(body)["error"] == "bad_request"
        assert TOKEN_MARK.encode() not in answer
        assert BODY_MARK.encode() not in answer
    lines = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    assert not any(TOKEN_MARK in line or BODY_MARK in line for line in lines)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the first one, reported at once; the rest wait for the next
    assert "1 malformed" in warnings[0].getMessage()


async def test_a_broken_chunk_fails_the_handlers_read_at_once(serve: Serve) -> None:
    read_failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def reader_handler(request: web.Request) -> web.Response:
        try:
            await request.read()
        except web.RequestPayloadError as exc:
            read_failed.set_result(exc)
            return web.json_response({"error": "body_invalid"}, status=400)
        return web.Response(text="read")

    app = web.Application()
    app.router.add_post("/read", reader_handler)
    port = await serve(HttpLimits(header_timeout_s=5, body_timeout_s=30), app)
    reader, writer = await connect(port)
    writer.write(
        b"POST /read HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    )
    await writer.drain()
    await asyncio.sleep(0.05)  # the handler waits for the next chunk
    writer.write(f"zz\r\n{BODY_MARK}\r\n".encode())
    answer = await until_closed(reader, within=5)  # not the 30 s body deadline
    writer.close()
    assert status_of(answer) == 400
    assert type(await read_failed).__name__ == "MalformedRequestBody"
    assert BODY_MARK.encode() not in answer
