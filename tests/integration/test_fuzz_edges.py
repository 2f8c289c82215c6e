"""Fuzz: arbitrary requests to every endpoint of the producer API and the console, with Kafka and
PostgreSQL up, never get a 5xx; every refusal of the API (and of the console's ``/api/``) is a
4xx with a JSON error body.

Hypothesis builds raw HTTP/1.1 requests (so nothing is cleaned up by a client library): a
method, an endpoint's path with arbitrary path parameters, query strings of known and unknown
keys with arbitrary values (huge ages, times at the ends of the calendar, NUL, lone surrogate
escapes), arbitrary headers (tokens that are not UTF-8, control bytes, wrong content types and
encodings, a valid or forged session and CSRF token) and bodies (bytes, JSON, job-like objects,
deep nesting, forms, gzip). Three servers take them: ``jobstream api`` (its own producer, pool,
/metrics behind a token, and the console mounted under /console), a real worker process's web
port (running ``tests.leaky_app``, so no job it accepts can reach the network), and the
standalone console logged in as an operator. The only 503 allowed is a worker's ``/ready``
while its group rebalances. The number of requests sent is printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from jobstream.streams.console.server import start as start_console
from jobstream.streams.producer.server import ApiServer
from jobstream.streams.settings import Settings
from tests.integration.console_support import (
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    client,
    login,
    private_database,
)
from tests.integration.harness import WorkerFactory

EXAMPLES = int(os.environ.get("JOBSTREAM_FUZZ_EXAMPLES", "1500"))
"""Requests per server (the worker gets half); the default sends 3,750 in about a minute."""
API_TOKEN = "fuzz-api-token-0123456789"
METRICS_TOKEN = "fuzz-metrics-token-0123456789"
T = TypeVar("T")

API_ENDPOINTS = [
    ("POST", "/jobs"),
    ("GET", "/jobs/{}"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
]
CONSOLE_ENDPOINTS = [
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("GET", "/health"),
    ("GET", "/"),
    ("GET", "/api/overview"),
    ("GET", "/api/cluster"),
    ("GET", "/api/rate-limits"),
    ("GET", "/jobs"),
    ("GET", "/api/jobs"),
    ("GET", "/jobs/{}"),
    ("GET", "/api/jobs/{}"),
    ("GET", "/dead-letters"),
    ("GET", "/api/dead-letters"),
    ("GET", "/api/dead-letters/stats"),
    ("GET", "/dead-letters/{}"),
    ("GET", "/api/dead-letters/{}"),
    ("POST", "/api/replay"),
    ("GET", "/static/console.js"),
]
QUERY_KEYS = [
    "limit", "after", "status", "type", "worker", "since", "until", "window", "id", "scope",
    "reason", "error_class", "key",
]  # fmt: skip
EDGE_VALUES = [
    "", "0", "-1", "201", "1" * 400, "99999999999d", "9" * 400 + "s", "1.5h", "1e999",
    "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2024-02-30T00:00:00",
    "\x00", "a\x00b", "\ud800", "%", "%00", "%ED%A0%80", "all", "prefix", "running",
    "MDAwMS0wMS0wMVQwMDowMDowMCsxNDowMHx4", "bm90LWEtY3Vyc29y", "Infinity", "NaN",
]  # fmt: skip


# -- requests --------------------------------------------------------------------------------


@dataclass
class Target:
    port: int
    endpoints: list[tuple[str, str]]
    base: str = ""
    json_errors: Callable[[str], bool] = lambda path: True
    cookie: str = ""
    csrf: str = ""
    tokens: dict[str, str] = field(default_factory=dict)


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def _quoted(value: str) -> str:
    return quote(_text(value), safe="")


segments = st.one_of(
    st.sampled_from(["job-1", "x", "a%00b", "%00", "%ED%A0%80", "..", "t:0:1", "x" * 300]),
    st.text(max_size=30).map(_quoted),
)
queries = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(QUERY_KEYS), st.text(max_size=8)),
        st.one_of(st.sampled_from(EDGE_VALUES), st.text(max_size=40)),
    ),
    max_size=4,
).map(lambda pairs: "&".join(f"{_quoted(k)}={_quoted(v)}" for k, v in pairs))
json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=15,
)


def _nested(depth: int) -> bytes:
    return b'{"type": "note", "payload": {"x": ' + b"[" * depth + b"]" * depth + b"}}"


job_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["note", "leaky", "echo", "", "x" * 101])},
    optional={
        "payload": st.one_of(json_values, st.just({"texts": ["a"], "url": "http://h/"})),
        "id": st.one_of(st.text(max_size=12), st.integers(), st.none()),
        "metadata": st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=5)), st.text()),
        "partition_key": st.one_of(st.text(max_size=5), st.integers()),
        "attempt": st.integers(-2, 3),
    },
)
bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    job_like.map(lambda v: json.dumps(v).encode()),
    st.lists(job_like, max_size=3).map(lambda v: json.dumps(v).encode()),
    st.sampled_from(
        [
            b'{"type": "note", "payload": {"x": "\\ud800"}}',
            b'{"type": "note", "payload": {"x": "a\\u0000"}}',
            b'{"type": "note", "payload": {"x": 1e999}}',
            b'{"type": "note", "payload": {"x": NaN}}',
            _nested(130),
            _nested(2000),
            b'{"dry_run": false, "expect": 0}',
            b'{"dry_run": true, "since": "99999999999d", "ids": ["a\\u0000"]}',
            b"token=wrong&csrf=nope",
            b"--x\r\nContent-Disposition: form-data; name=token\r\n\r\nv\r\n--x--\r\n",
            b"--x\r\nbroken",
        ]
    ),
)
polite_bodies = st.one_of(
    st.builds(
        lambda payload, n: json.dumps(
            [{"type": "note", "payload": payload}] * n
            if n
            else {"type": "note", "payload": payload}
        ).encode(),
        st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        st.integers(0, 3),
    ),
    job_like.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b'{"dry_run": true}', b'{"dry_run": false, "expect": 0}']),
)
header_values = st.one_of(
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(_text),
    st.binary(max_size=30).filter(lambda b: b"\r" not in b and b"\n" not in b),
)


@st.composite
def requests(draw: st.DrawFn, target: Target) -> tuple[str, bytes]:
    method, template = draw(st.sampled_from(target.endpoints))
    # half the requests are well-formed but for their values, so the fuzz reaches past the
    # token, the content type and the body's framing into validation and the handlers
    polite = draw(st.booleans())
    method = (
        method
        if polite
        else draw(
            st.one_of(
                st.just(method),
                st.sampled_from(
                    ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW"]
                ),
            )
        )
    )
    path = target.base + template.format(draw(segments) if "{}" in template else "")
    query = draw(queries)
    headers: list[tuple[bytes, bytes]] = [(b"Host", b"fuzz"), (b"Connection", b"close")]
    auth = "api" if polite else draw(st.sampled_from([None, "api", "metrics", "garbage", "bytes"]))
    if polite and template == "/metrics":
        auth = "metrics"
    if auth in target.tokens:
        headers.append((b"Authorization", b"Bearer " + target.tokens[auth].encode()))
    elif auth == "garbage":
        headers.append((b"Authorization", b"Bearer " + draw(header_values)))
    elif auth == "bytes":
        headers.append((b"Authorization", b"Bearer \xff\xfe"))
    if target.cookie and (polite or draw(st.booleans())):
        headers.append((b"Cookie", target.cookie.encode()))
        if polite or draw(st.booleans()):
            headers.append((b"X-CSRF-Token", target.csrf.encode()))
    ctype = (
        "application/json"
        if polite
        else draw(
            st.sampled_from(
                [
                    None,
                    "application/json",
                    "application/json; charset=latin-1",
                    "application/problem+json",
                    "text/plain",
                    "application/x-www-form-urlencoded",
                    "multipart/form-data; boundary=x",
                    "multipart/form-data",
                    "garbage/",
                ]
            )
        )
    )
    if ctype is not None:
        headers.append((b"Content-Type", ctype.encode()))
    body = draw(polite_bodies if polite else bodies)
    encoding = (
        None
        if polite
        else draw(st.sampled_from([None, "gzip", "gzip-broken", "deflate", "br", "weird"]))
    )
    if encoding == "gzip":
        body = gzip.compress(body)
    if encoding is not None:
        headers.append((b"Content-Encoding", encoding.split("-")[0].encode()))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from([b"X-Forwarded-Proto", b"Accept", b"X-Junk", b"Bad Name"]))
        headers.append((name, draw(header_values)))
    if not polite and draw(st.integers(0, 9)) == 0:
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        headers.append((b"Transfer-Encoding", b"chunked"))
        body = chunked
    else:
        headers.append((b"Content-Length", str(len(body)).encode()))
    line = f"{method} {path}{'?' + query if query else ''} HTTP/1.1".encode()
    raw = line + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"
    return path, raw + body


def send(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return status, headers, body


def check(target: Target, name: str, path: str, raw: bytes) -> int:
    status, headers, body = send(target.port, raw)
    if status == 503 and path == "/ready":
        return status  # a worker between assignments: readiness, not an error
    assert status < 500, (status, raw[:300], body[:300])
    method = raw.split(b" ", 1)[0]
    if status >= 400 and method != b"HEAD" and target.json_errors(path):
        assert headers.get("content-type", "").startswith("application/json"), (status, raw[:300])
        answer = json.loads(body)
        # GET /jobs/{id} of a job without a row: the API's documented 404 {"status": "unknown"}
        unknown = status == 404 and answer.get("status") == "unknown"
        assert "error" in answer or unknown, (status, body[:300])
    return status


def fuzz(target: Target, name: str, examples: int) -> Counter[int]:
    """Sends ``examples`` requests to ``target``; returns how often each status came back."""
    statuses: Counter[int] = Counter()

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,  # every run explores afresh; a failure prints its request
    )
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        path, raw = data.draw(requests(target))
        statuses[check(target, name, path, raw)] += 1

    one()
    counts = dict(sorted(statuses.items()))
    print(f"\nfuzz {name}: {sum(statuses.values())} requests, statuses {counts}")
    return statuses


# -- the servers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop of its own for the in-process servers: the examples send from the test thread."""
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join(10)
    running.close()


def run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coro, loop).result(120)


@pytest.fixture
def private_dsn(loop: asyncio.AbstractEventLoop, database_url: str) -> Iterator[str]:
    context = private_database(database_url)
    dsn = run(loop, context.__aenter__())
    yield dsn
    run(loop, context.__aexit__(None, None, None))


def fuzz_settings(bootstrap: str, dsn: str, prefix: str, **extra: Any) -> Settings:
    return Settings(
        kafka_bootstrap=bootstrap,
        database_url=SecretStr(dsn),
        topic_prefix=prefix,
        group_id=prefix,
        retry_tiers_s=(1.0, 2.0, 3.0),
        app="tests.leaky_app:app",
        console_viewer_token=SecretStr(VIEWER_TOKEN),
        console_operator_token=SecretStr(OPERATOR_TOKEN),
        **extra,
    )


async def operator_session(base: str) -> tuple[str, str]:
    async with client() as s:
        csrf = await login(s, base, OPERATOR_TOKEN)
        cookie = next(c for c in s.cookie_jar if c.key == "jobstream_console")
        return f"jobstream_console={cookie.value}", csrf


@pytest.fixture
def api_target(
    loop: asyncio.AbstractEventLoop, kafka_bootstrap: str, private_dsn: str
) -> Iterator[Target]:
    settings = fuzz_settings(
        kafka_bootstrap,
        private_dsn,
        f"fz{uuid.uuid4().hex[:10]}",
        api_token=SecretStr(API_TOKEN),
        metrics_token=SecretStr(METRICS_TOKEN),
        console_enabled=True,
    )
    server = ApiServer(settings, bootstrap=kafka_bootstrap, dsn=private_dsn)
    run(loop, server.connect())
    [url] = run(loop, server.listen("127.0.0.1", 0))
    port = int(url.rsplit(":", 1)[1])
    cookie, csrf = run(loop, operator_session(f"{url}/console/"))
    console = [(m, "/console" + p) for m, p in CONSOLE_ENDPOINTS]
    yield Target(
        port,
        API_ENDPOINTS + console,
        json_errors=lambda path: not path.startswith("/console") or "/api/" in path,
        cookie=cookie,
        csrf=csrf,
        tokens={"api": API_TOKEN, "metrics": METRICS_TOKEN},
    )
    run(loop, server.stop())


@pytest.fixture
def console_target(
    loop: asyncio.AbstractEventLoop, kafka_bootstrap: str, private_dsn: str
) -> Iterator[Target]:
    prefix = f"fz{uuid.uuid4().hex[:10]}"
    settings = fuzz_settings(kafka_bootstrap, private_dsn, prefix)
    runner, pool = run(
        loop,
        start_console(
            settings, bootstrap=kafka_bootstrap, dsn=private_dsn, host="127.0.0.1", port=0
        ),
    )
    port = int(runner.addresses[0][1])
    cookie, csrf = run(loop, operator_session(f"http://127.0.0.1:{port}/"))
    yield Target(
        port, CONSOLE_ENDPOINTS, json_errors=lambda path: "/api/" in path, cookie=cookie, csrf=csrf
    )
    run(loop, runner.cleanup())
    run(loop, pool.close())


# -- the tests -----------------------------------------------------------------------------------


def test_jobstream_api_answers_arbitrary_requests_without_a_5xx(api_target: Target) -> None:
    statuses = fuzz(api_target, "jobstream api", EXAMPLES)
    # the requests got past the token, the content type and the validation, too
    assert {200, 202, 400, 401} <= set(statuses)


def test_the_console_answers_arbitrary_requests_without_a_5xx(console_target: Target) -> None:
    statuses = fuzz(console_target, "console", EXAMPLES)
    assert {200, 400, 403} <= set(statuses)


@pytest.fixture
async def worker_target(workers: WorkerFactory, private_dsn: str) -> Target:
    worker = workers.start(
        JOBSTREAM_APP="tests.leaky_app:app",
        JOBSTREAM_API_TOKEN=API_TOKEN,
        JOBSTREAM_DATABASE_URL=private_dsn,
        JOBSTREAM_DEFAULT_TIMEOUT_S="1",
    )
    await worker.wait_assigned()
    return Target(worker.web_port, API_ENDPOINTS, tokens={"api": API_TOKEN})


def test_a_workers_web_port_answers_arbitrary_requests_without_a_5xx(
    worker_target: Target,
) -> None:
    statuses = fuzz(worker_target, "worker", EXAMPLES // 2)
    assert {200, 202, 400, 401} <= set(statuses)
