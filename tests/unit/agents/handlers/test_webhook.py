"""``http.webhook`` over real HTTP(S) against a local server reached through the allow list."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from jobstream.agents.builtin import builtin
from jobstream.agents.handlers.addresses import is_forbidden_address
from jobstream.agents.handlers.webhook import (
    WebhookPayload,
    deliver,
    dns_error,
    handle_webhook,
    is_allowed_host,
)
from jobstream.agents.registry import JobContext
from jobstream.models.errors import FatalError, RetryableError
from jobstream.models.job import JobEvent
from jobstream.streams.settings import Settings


@dataclass
class Receiver:
    port: int
    seen: list[dict[str, Any]] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def allow(self) -> tuple[str, ...]:
        return (f"127.0.0.1:{self.port}",)


def receiver_app(seen: list[dict[str, Any]]) -> web.Application:
    async def record(request: web.Request) -> None:
        seen.append(
            {
                "path": request.path,
                "method": request.method,
                "headers": dict(request.headers),
                "json": await request.json() if request.can_read_body else None,
            }
        )

    def route(status: int, text: str = "", **headers: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            await record(request)
            return web.Response(status=status, text=text, headers=headers)

        return handler

    async def slow(request: web.Request) -> web.Response:
        await record(request)
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def echo(request: web.Request) -> web.Response:
        """A receiver that repeats the whole request in its error: URL, headers and body."""
        await record(request)
        said = f"echo: {request.url} {dict(request.headers)} {await request.text()}"
        location = f"http://127.0.0.1/cb/{request.match_info['rest']}"
        status = int(request.query.get("status", "400"))
        return web.Response(status=status, text=said, headers={"Location": location,
                            "X-Echo": said[:200].replace("\n", " ")})  # fmt: skip

    app = web.Application()
    for method in ("POST", "PUT"):
        app.router.add_route(method, "/ok", route(200, "thanks"))
        app.router.add_route(method, "/created", route(201, "made"))
        app.router.add_route(method, "/big", route(200, "a" * 10_000))
        app.router.add_route(method, "/bad", route(400, "missing field x"))
        app.router.add_route(method, "/gone", route(404, "nope"))
        app.router.add_route(method, "/busy", route(429, "later", **{"Retry-After": "3"}))
        app.router.add_route(method, "/boom", route(500, "stack trace"))
        app.router.add_route(method, "/down", route(503, "maintenance"))
        app.router.add_route(method, "/moved", route(302, "", Location="http://10.0.0.1/admin"))
        app.router.add_route(method, "/slow", slow)
        app.router.add_route(method, "/echo/{rest:.*}", echo)
    return app


async def serve(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    seen: list[dict[str, Any]] = []
    runner, port = await serve(receiver_app(seen))
    yield Receiver(port, seen)
    await runner.cleanup()


def make_ctx(http: aiohttp.ClientSession, allow: tuple[str, ...] = ()) -> JobContext[None]:
    settings = Settings(webhook_allow_hosts=allow)
    return JobContext(job=JobEvent(type="http.webhook"), settings=settings, http=http)


async def send(ctx: JobContext[None], url: str, **fields: Any) -> dict[str, Any]:
    return await handle_webhook(WebhookPayload(url=url, **fields), ctx)


# -- delivery and status mapping ------------------------------------------------------------------


async def test_2xx_returns_status_and_body(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    ctx = make_ctx(http, receiver.allow)
    body = {"event": "paid", "amount": 3}
    result = await send(ctx, receiver.url("/ok?x=1"), body=body, headers={"X-Sig": "abc"})
    assert result == {"status": 200, "body": "thanks"}
    (seen,) = receiver.seen
    assert seen["method"] == "POST"
    assert seen["json"] == body
    assert seen["headers"]["X-Sig"] == "abc"
    assert seen["headers"]["Host"] == f"127.0.0.1:{receiver.port}"
    assert seen["headers"]["Idempotency-Key"] == ctx.job.id


async def test_put_and_201(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    result = await send(make_ctx(http, receiver.allow), receiver.url("/created"), method="PUT")
    assert result == {"status": 201, "body": "made"}
    assert receiver.seen[0]["method"] == "PUT"
    assert receiver.seen[0]["json"] == {}


async def test_body_is_cut_to_2_kib(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    result = await send(make_ctx(http, receiver.allow), receiver.url("/big"))
    assert result["body"] == "a" * 2048


@pytest.mark.parametrize(("path", "status"), [("/bad", 400), ("/gone", 404)])
async def test_4xx_is_fatal(
    receiver: Receiver, http: aiohttp.ClientSession, path: str, status: int
) -> None:
    with pytest.raises(FatalError, match=str(status)) as err:
        await send(make_ctx(http, receiver.allow), receiver.url(path))
    assert not isinstance(err.value, RetryableError)


@pytest.mark.parametrize(("path", "status"), [("/boom", 500), ("/down", 503), ("/busy", 429)])
async def test_5xx_and_429_are_retryable(
    receiver: Receiver, http: aiohttp.ClientSession, path: str, status: int
) -> None:
    with pytest.raises(RetryableError, match=str(status)):
        await send(make_ctx(http, receiver.allow), receiver.url(path))


async def test_redirect_is_not_followed(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    with pytest.raises(FatalError, match="redirect") as err:
        await send(make_ctx(http, receiver.allow), receiver.url("/moved"))
    assert "302" in str(err.value)
    assert "Location sha256:" in str(err.value)
    assert "10.0.0.1" not in str(err.value)  # where it pointed is the receiver's secret
    assert [s["path"] for s in receiver.seen] == ["/moved"]


async def test_timeout_is_retryable(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    start = time.monotonic()
    with pytest.raises(RetryableError, match="did not answer"):
        await send(make_ctx(http, receiver.allow), receiver.url("/slow"), timeout_s=0.3)
    assert time.monotonic() - start < 2


async def test_connection_refused_is_retryable(http: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RetryableError, match="could not connect"):
        await send(make_ctx(http, (f"127.0.0.1:{port}",)), f"http://127.0.0.1:{port}/ok")


async def test_unresolvable_host_is_fatal(http: aiohttp.ClientSession) -> None:
    """Decision: a name that does not exist is dead-lettered (a typo will not fix itself)."""
    with pytest.raises(FatalError, match="does not exist"):
        await send(make_ctx(http), "https://no-such-host.invalid/hook")


def test_resolver_trouble_is_retryable_and_no_such_name_fatal() -> None:
    again = dns_error("h", socket.gaierror(socket.EAI_AGAIN, "Temporary failure"))
    noname = dns_error("h", socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert type(again) is RetryableError
    assert type(noname) is FatalError


# -- the SSRF guard -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "2130706433",  # 127.0.0.1 written as one number
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "[::1]",
        "[::]",
        "[fe80::1]",
        "[fc00::1]",
        "[ff02::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:10.0.0.1]",
        "[2002:7f00:1::]",  # 6to4 wrapping 127.0.0.1
        "[64:ff9b::a00:1]",  # NAT64 wrapping 10.0.0.1
    ],
)
async def test_internal_addresses_are_refused(
    receiver: Receiver, http: aiohttp.ClientSession, host: str
) -> None:
    with pytest.raises(FatalError, match="not a public address"):
        await send(make_ctx(http), receiver.url("/ok", host=host))
    assert receiver.seen == []


async def test_allow_list_is_per_port(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    ctx = make_ctx(http, (f"127.0.0.1:{receiver.port + 1}",))
    with pytest.raises(FatalError, match="not a public address"):
        await send(ctx, receiver.url("/ok"))
    result = await send(make_ctx(http, ("127.0.0.1",)), receiver.url("/ok"))
    assert result["status"] == 200


async def test_allowed_name_is_pinned_to_its_checked_address(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    ctx = make_ctx(http, (f"LOCALHOST:{receiver.port}",))
    result = await send(ctx, receiver.url("/ok", host="localhost"))
    assert result["status"] == 200
    assert receiver.seen[0]["headers"]["Host"] == f"localhost:{receiver.port}"


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"],
)
def test_public_addresses_pass(address: str) -> None:
    assert not is_forbidden_address(ipaddress.ip_address(address))


@given(st.ip_addresses(v=4))
def test_mapped_ipv6_is_judged_like_its_ipv4(ip: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
    assert is_forbidden_address(mapped) == is_forbidden_address(ip)


@given(
    st.one_of(
        st.ip_addresses(network="10.0.0.0/8"),
        st.ip_addresses(network="127.0.0.0/8"),
        st.ip_addresses(network="169.254.0.0/16"),
        st.ip_addresses(network="fc00::/7"),
        st.ip_addresses(network="fe80::/10"),
    )
)
def test_internal_ranges_are_always_forbidden(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    assert is_forbidden_address(ip)


def test_is_allowed_host_forms() -> None:
    assert is_allowed_host("Example.com.", 443, ["example.com"])
    assert is_allowed_host("example.com", 8080, ["example.com:8080"])
    assert not is_allowed_host("example.com", 8081, ["example.com:8080"])
    assert is_allowed_host("::1", 9000, ["[::1]:9000"])
    assert not is_allowed_host("evil.example.com", 80, ["example.com"])


# -- payload validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://example.com/",
        "javascript:alert(1)",
        "example.com/hook",
        "http://",
        "https:///path",
    ],
)
def test_non_http_urls_are_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        WebhookPayload(url=url)


@pytest.mark.parametrize(
    "fields",
    [
        {"headers": {"Host": "internal"}},
        {"headers": {"X-A": "1\r\nX-Injected: 2"}},
        {"headers": {"Content-Length": "5"}},
        {"timeout_s": 0.05},
        {"timeout_s": 61},
        {"method": "GET"},
        {"body": {"x": object()}},
    ],
)
def test_payload_validation(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        WebhookPayload(url="https://example.com/hook", **fields)


def test_payload_defaults() -> None:
    payload = WebhookPayload(url="https://example.com/hook")
    assert (payload.method, payload.body, payload.timeout_s, payload.headers) == (
        "POST",
        {},
        10.0,
        {},
    )


def test_job_type() -> None:
    jt = builtin.registry(Settings(max_attempts=2)).get("http.webhook")
    assert jt is not None
    assert (jt.name, jt.rate_limit_key, jt.payload_model) == ("http.webhook", None, WebhookPayload)
    assert jt.timeout_s is not None
    assert jt.timeout_s > 60  # above the largest payload timeout
    assert jt.policy.max_attempts == 2


# -- https: the pinned IP is verified against the URL's name ------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A throw-away CA and a leaf certificate valid for ``localhost`` only (no IP SAN)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    # the extensions a strict verifier (Python 3.13's default context) requires of a CA and a leaf
    ca = ["-subj", "/CN=ca", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    run("req", "-x509", *ec, *ca, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2")
    run("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    run(
        "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "ext.cnf",
    )  # fmt: skip
    return d / "ca.pem", d / "leaf.pem", d / "leaf.key"


async def test_https_connects_by_ip_but_verifies_the_name(
    tls_files: tuple[Path, Path, Path],
) -> None:
    ca, cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    seen: list[dict[str, Any]] = []
    runner, port = await serve(receiver_app(seen), server_ctx)
    client_ctx = ssl.create_default_context(cafile=str(ca))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as http:
            ctx = make_ctx(http, (f"localhost:{port}",))
            result = await send(ctx, f"https://localhost:{port}/ok")
            assert result == {"status": 200, "body": "thanks"}
            # control: the certificate really does not cover the IP we connected to
            with pytest.raises(RetryableError):
                await deliver(
                    http,
                    WebhookPayload(url=f"https://127.0.0.1:{port}/ok"),
                    allow_hosts=(f"127.0.0.1:{port}",),
                )
    finally:
        await runner.cleanup()
    assert len(seen) == 1


ECHOED = "EchoedPayloadMarker7731"


@pytest.mark.parametrize("status", [302, 400, 404, 429, 500, 503])
async def test_errors_name_the_host_and_the_answer_never_the_url_or_the_body(
    receiver: Receiver, http: aiohttp.ClientSession, status: int
) -> None:
    """Path, query and user of the URL, the payload's body and headers, the receiver's echo of
    them and its redirect target stay out of the error (it reaches rows, logs and Sentry)."""
    url = (
        f"http://user-{ECHOED}:pw-{ECHOED}@127.0.0.1:{receiver.port}/echo/path-{ECHOED}"
        f"?status={status}&q=query-{ECHOED}"
    )
    with pytest.raises((FatalError, RetryableError)) as err:
        await send(
            make_ctx(http, receiver.allow), url, body={"note": f"body-{ECHOED}"},
            headers={"X-Note": f"header-{ECHOED}"},
        )  # fmt: skip
    message = str(err.value)
    assert str(status) in message
    assert f"127.0.0.1:{receiver.port}" in message
    assert "sha256:" in message
    assert "Marker" not in message
    assert "echo" not in message.replace("/echo", "")
    assert err.value.__cause__ is None
    assert receiver.seen[0]["json"] == {"note": f"body-{ECHOED}"}  # it was delivered whole


async def test_a_client_error_names_no_url(http: aiohttp.ClientSession) -> None:
    async def hang_up(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()  # the connection ends before any answer
        return web.Response()

    app = web.Application()
    app.router.add_post("/{tail:.*}", hang_up)
    runner, port = await serve(app)
    try:
        with pytest.raises(RetryableError) as err:
            await send(make_ctx(http, (f"127.0.0.1:{port}",)),
                       f"http://127.0.0.1:{port}/p-{ECHOED}?q={ECHOED}")  # fmt: skip
    finally:
        await runner.cleanup()
    assert "ServerDisconnectedError" in str(err.value)
    assert ECHOED not in str(err.value)
    assert err.value.__cause__ is None
