"""``llm.chat`` over real HTTP, against the fake OpenRouter and a hand-written upstream."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from jobstream.agents.builtin import builtin
from jobstream.agents.handlers import llm
from jobstream.agents.handlers.llm import (
    ChatPayload,
    OpenRouterClient,
    handle_chat,
    parse_retry_after,
)
from jobstream.agents.registry import JobContext
from jobstream.models.errors import FatalError, JobError, RateLimitedError, RetryableError
from jobstream.models.job import JobEvent
from jobstream.streams.dev.fake_openrouter import FakeConfig, FakeOpenRouter
from jobstream.streams.settings import Settings

KEY = "sk-or-v1-secret-test-key"
PAYLOAD = {"messages": [{"role": "user", "content": "say the magic words please"}]}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenRouter]:
    server = FakeOpenRouter(FakeConfig(api_key=KEY, seed=5))
    await server.start()
    yield server
    await server.stop()


def make_ctx(
    http: aiohttp.ClientSession, base_url: str | None, api_key: str | None = KEY
) -> JobContext[None]:
    settings = Settings(
        openrouter_base_url=base_url or "http://127.0.0.1:1/api/v1",
        openrouter_api_key=SecretStr(api_key) if api_key is not None else None,
        openrouter_model="test/default-model",
        max_attempts=3,
    )
    return JobContext(job=JobEvent(type="llm.chat", payload=PAYLOAD), settings=settings, http=http)


async def run(ctx: JobContext[None], payload: dict[str, Any] = PAYLOAD) -> dict[str, Any]:
    return await handle_chat(ChatPayload.model_validate(payload), ctx)


# -- against the fake OpenRouter ------------------------------------------------------------------


async def test_success_returns_content_usage_and_cost(
    fake: FakeOpenRouter, http: aiohttp.ClientSession
) -> None:
    ctx = make_ctx(http, fake.base_url)
    result = await run(ctx)
    assert result["content"] == "say the magic words please"
    assert result["model"] == "test/default-model"  # the settings' model when none is asked
    assert result["usage"] == {"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11}
    cfg = fake.config
    assert result["cost"] == pytest.approx(
        (6 * cfg.prompt_price_per_mtok + 5 * cfg.completion_price_per_mtok) / 1e6
    )
    assert result["finish_reason"] == "stop"
    assert ctx.usage["tokens"] == 11
    assert ctx.usage["cost"] == result["cost"]
    assert fake.stats.by_status[200] == 1


async def test_payload_model_and_max_tokens_reach_upstream(
    fake: FakeOpenRouter, http: aiohttp.ClientSession
) -> None:
    ctx = make_ctx(http, fake.base_url)
    result = await run(ctx, {**PAYLOAD, "model": "acme/other", "max_tokens": 2})
    assert result["model"] == "acme/other"
    assert result["content"] == "say the"
    assert result["finish_reason"] == "length"
    assert ctx.usage["tokens"] == result["usage"]["total_tokens"] == 8


async def test_wrong_key_is_fatal_and_does_not_leak_the_key(
    fake: FakeOpenRouter, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(FatalError) as err:
        await run(make_ctx(http, fake.base_url, api_key="sk-wrong-key-123"))
    assert not isinstance(err.value, RetryableError)
    assert "401" in str(err.value)
    assert "code 401" in str(err.value)  # the error's own code, not its message
    assert "User not found" not in str(err.value)
    assert "sk-wrong-key-123" not in str(err.value)


async def test_missing_key_is_fatal_without_a_request(
    fake: FakeOpenRouter, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(FatalError, match="openrouter_api_key"):
        await run(make_ctx(http, fake.base_url, api_key=None))
    assert fake.stats.total == 0


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 418])
async def test_client_errors_are_fatal(
    fake: FakeOpenRouter, http: aiohttp.ClientSession, status: int
) -> None:
    fake.configure(FakeConfig(api_key=KEY, forced_status=status))
    with pytest.raises(FatalError, match=str(status)) as err:
        await run(make_ctx(http, fake.base_url))
    assert not isinstance(err.value, RetryableError)


@pytest.mark.parametrize("status", [408, 500, 502, 503])
async def test_server_errors_are_retryable(
    fake: FakeOpenRouter, http: aiohttp.ClientSession, status: int
) -> None:
    fake.configure(FakeConfig(api_key=KEY, forced_status=status))
    with pytest.raises(RetryableError, match=str(status)) as err:
        await run(make_ctx(http, fake.base_url))
    assert not isinstance(err.value, RateLimitedError)


async def test_429_carries_retry_after(fake: FakeOpenRouter, http: aiohttp.ClientSession) -> None:
    fake.configure(FakeConfig(api_key=KEY, forced_status=429, retry_after_s=7))
    with pytest.raises(RateLimitedError) as err:
        await run(make_ctx(http, fake.base_url))
    assert err.value.retry_after == 7.0


async def test_fake_rate_limit_becomes_rate_limited_error(
    fake: FakeOpenRouter, http: aiohttp.ClientSession
) -> None:
    fake.configure(FakeConfig(api_key=KEY, rate_limit=1, rate_limit_burst=1))
    ctx = make_ctx(http, fake.base_url)
    await run(ctx)
    with pytest.raises(RateLimitedError) as err:
        await run(ctx)
    assert err.value.retry_after is not None
    assert err.value.retry_after >= 1


async def test_slow_upstream_is_retryable(
    fake: FakeOpenRouter, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.configure(FakeConfig(api_key=KEY, latency_ms=3000))
    monkeypatch.setattr(llm, "REQUEST_TIMEOUT_S", 0.2)
    with pytest.raises(RetryableError, match="did not answer"):
        await run(make_ctx(http, fake.base_url))


async def test_client_timeout_is_retryable(
    fake: FakeOpenRouter, http: aiohttp.ClientSession
) -> None:
    fake.configure(FakeConfig(api_key=KEY, latency_ms=3000))
    client = OpenRouterClient(http, fake.base_url or "", SecretStr(KEY), timeout_s=0.2)
    with pytest.raises(RetryableError):
        await client.chat(ChatPayload.model_validate(PAYLOAD), "m")
    assert KEY not in repr(client)


async def test_connection_refused_is_retryable(http: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RetryableError, match="request failed"):
        await run(make_ctx(http, f"http://127.0.0.1:{port}/api/v1"))


# -- against a hand-written upstream, for answers the fake never gives ----------------------------

Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[Reply], list[dict[str, Any]]]]:
    """A server answering with ``replies[0]``; what it received lands in ``seen``."""
    replies: list[Reply] = []
    seen: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        seen.append({"headers": dict(request.headers), "json": await request.json()})
        return await replies[0](request)

    app = web.Application()
    app.router.add_post("/api/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/api/v1", replies, seen
    await runner.cleanup()


def reply(status: int = 200, body: Any = None, text: str | None = None, **headers: str) -> Reply:
    async def answer(request: web.Request) -> web.StreamResponse:
        if text is not None:
            return web.Response(status=status, text=text, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    return answer


async def test_request_shape_sent_upstream(
    upstream: tuple[str, list[Reply], list[dict[str, Any]]], http: aiohttp.ClientSession
) -> None:
    url, replies, seen = upstream
    replies.append(reply(body={"choices": [{"message": {"content": "hi"}}], "model": "m"}))
    payload = {**PAYLOAD, "temperature": 0.5, "max_tokens": 9}
    result = await run(make_ctx(http, url), payload)
    assert result["content"] == "hi"
    assert result["usage"] == {}
    assert result["cost"] is None
    sent = seen[0]
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
    assert sent["json"] == {
        "model": "test/default-model",
        "messages": PAYLOAD["messages"],
        "max_tokens": 9,
        "temperature": 0.5,
    }


@pytest.mark.parametrize(
    "answer",
    [
        reply(text="<html>gateway</html>"),
        reply(body=[1, 2]),
        reply(body={"choices": []}),
        reply(body={"choices": [{"message": {"content": 5}}]}),
        reply(body={"error": {"code": 502, "message": "provider died mid-stream"}}),
    ],
)
async def test_broken_200_is_retryable(
    upstream: tuple[str, list[Reply], list[dict[str, Any]]],
    http: aiohttp.ClientSession,
    answer: Reply,
) -> None:
    url, replies, _ = upstream
    replies.append(answer)
    with pytest.raises(RetryableError):
        await run(make_ctx(http, url))


async def test_200_with_a_client_error_body_is_fatal(
    upstream: tuple[str, list[Reply], list[dict[str, Any]]], http: aiohttp.ClientSession
) -> None:
    url, replies, _ = upstream
    replies.append(reply(body={"error": {"code": 403, "message": "flagged by moderation"}}))
    with pytest.raises(FatalError, match=r"answered 403 \(code 403") as err:
        await run(make_ctx(http, url))
    assert "flagged" not in str(err.value)


async def test_429_with_http_date_and_without_retry_after(
    upstream: tuple[str, list[Reply], list[dict[str, Any]]], http: aiohttp.ClientSession
) -> None:
    url, replies, _ = upstream
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    replies.append(reply(429, {"error": {"code": 429, "message": "slow"}}, **{"Retry-After": when}))
    with pytest.raises(RateLimitedError) as err:
        await run(make_ctx(http, url))
    assert err.value.retry_after is not None
    assert 25 <= err.value.retry_after <= 30
    replies[0] = reply(429, {"error": {"code": 429, "message": "slow"}})
    with pytest.raises(RateLimitedError) as err:
        await run(make_ctx(http, url))
    assert err.value.retry_after is None


async def test_long_upstream_message_is_trimmed(
    upstream: tuple[str, list[Reply], list[dict[str, Any]]], http: aiohttp.ClientSession
) -> None:
    url, replies, _ = upstream
    replies.append(reply(400, {"error": {"code": 400, "message": "x" * 5000}}))
    with pytest.raises(FatalError) as err:
        await run(make_ctx(http, url))
    assert "400" in str(err.value)
    assert len(str(err.value)) < 400


# -- pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("-4", 0.0),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Tue, 01 Jan 2030 12:00:42 GMT", now=now) == 42.0
    assert parse_retry_after("Tue, 01 Jan 2030 11:00:00 GMT", now=now) == 0.0


@given(st.integers(min_value=0, max_value=10**7))
def test_parse_retry_after_seconds_roundtrip(n: int) -> None:
    assert parse_retry_after(str(n)) == n


@given(st.integers(min_value=0, max_value=10**6))
def test_parse_retry_after_date_roundtrip(n: int) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_retry_after(format_datetime(now + timedelta(seconds=n), usegmt=True), now=now) == n


@pytest.mark.parametrize(
    "payload",
    [
        {"messages": []},
        {"messages": [{"role": "robot", "content": "x"}]},
        {**PAYLOAD, "max_tokens": 0},
        {**PAYLOAD, "max_tokens": 32001},
        {**PAYLOAD, "temperature": -1},
        {**PAYLOAD, "stream": True},
    ],
)
def test_payload_validation(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ChatPayload.model_validate(payload)


def test_payload_defaults() -> None:
    payload = ChatPayload.model_validate(PAYLOAD)
    assert (payload.max_tokens, payload.model, payload.temperature) == (256, None, None)


def test_job_type() -> None:
    jt = builtin.registry(Settings(max_attempts=4)).get("llm.chat")
    assert jt is not None
    assert jt.name == "llm.chat"
    assert jt.rate_limit_key == "openrouter"
    assert jt.payload_model is ChatPayload
    assert jt.handler is handle_chat
    assert jt.timeout_s == 120
    assert jt.policy.max_attempts == 4
    assert jt.timeout_s > llm.REQUEST_TIMEOUT_S


PROMPT = "Summarise: PromptEchoMarker-0042 " + "lorem ipsum " * 40


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (400, {"error": {"code": 400, "type": "invalid_request", "message": f"bad: {PROMPT}"}},
         "application/json"),
        (500, {"error": {"code": "x" * 65, "message": PROMPT}}, "application/json"),
        (502, f"<html>upstream said {PROMPT}</html>", f"text/html; note={PROMPT}"),
        (200, f"not json {PROMPT}", "text/plain"),
        (200, {"error": {"code": 400, "message": PROMPT}}, "application/json"),
    ],
)  # fmt: skip
async def test_errors_say_what_the_answer_was_never_what_it_said(
    upstream: tuple[str, list[Reply], list[dict[str, Any]]],
    http: aiohttp.ClientSession,
    status: int,
    body: Any,
    content_type: str,
) -> None:
    """An upstream that echoes the prompt (in its message, its body, even its Content-Type)
    gets its status, error code, content type, size and a short hash into the error, no text."""
    url, replies, _ = upstream
    data = body if isinstance(body, str) else json.dumps(body)

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=data.encode(), content_type=None,
                            headers={"Content-Type": content_type})  # fmt: skip

    replies.append(answer)
    with pytest.raises(JobError) as err:
        await run(make_ctx(http, url), {"messages": [{"role": "user", "content": PROMPT}]})
    message = str(err.value)
    assert "sha256:" in message
    assert " bytes" in message
    for fragment in ("PromptEcho", "lorem", "ipsum", "x" * 20):
        assert fragment not in message
    assert err.value.__cause__ is None
