"""The fake OpenRouter over real HTTP: wire shape, auth, validation, misbehaviour, counters."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

import aiohttp
import pytest
from pydantic import ValidationError

from jobstream.streams.dev.fake_openrouter import (
    FakeConfig,
    FakeOpenRouter,
    TokenBucket,
    main,
    sample_latency_ms,
)
from jobstream.streams.polling import wait_until

KEY = "sk-or-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


def chat_body(text: str = "hello there general kenobi", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenRouter]:
    server = FakeOpenRouter(FakeConfig(seed=1))
    await server.start()
    yield server
    await server.stop()


async def post(
    http: aiohttp.ClientSession,
    fake: FakeOpenRouter,
    body: Any,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    async with http.post(
        f"{fake.base_url}/chat/completions",
        json=body,
        headers=AUTH if headers is None else headers,
    ) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_start_returns_openrouter_style_base_url(fake: FakeOpenRouter) -> None:
    assert fake.base_url is not None
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api/v1", fake.base_url)


async def test_completion_has_openrouter_shape(
    fake: FakeOpenRouter, http: aiohttp.ClientSession
) -> None:
    status, doc, _ = await post(http, fake, chat_body(model="acme/model-x", max_tokens=100))
    assert status == 200
    assert doc["object"] == "chat.completion"
    assert doc["id"].startswith("gen-")
    assert doc["model"] == "acme/model-x"
    assert abs(doc["created"] - time.time()) < 5
    choice = doc["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": "hello there general kenobi",
        "refusal": None,
        "reasoning": None,
    }
    assert choice["finish_reason"] == "stop"
    usage = doc["usage"]
    assert usage["completion_tokens"] == 4
    assert usage["prompt_tokens"] == 5  # four words plus one per message
    assert usage["total_tokens"] == 9
    cfg = fake.config
    expected = (5 * cfg.prompt_price_per_mtok + 4 * cfg.completion_price_per_mtok) / 1e6
    assert usage["cost"] == pytest.approx(expected)
    assert usage["cost"] > 0


async def test_echo_is_cut_to_max_tokens_and_says_length(
    fake: FakeOpenRouter, http: aiohttp.ClientSession
) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "one two three four five"},
            {"role": "assistant", "content": "ignored"},
        ],
        "max_tokens": 2,
    }
    status, doc, _ = await post(http, fake, body)
    assert status == 200
    assert doc["choices"][0]["message"]["content"] == "one two"
    assert doc["choices"][0]["finish_reason"] == "length"
    assert doc["usage"]["completion_tokens"] == 2
    assert doc["model"] == fake.config.default_model


async def test_text_parts_content_is_understood(
    fake: FakeOpenRouter, http: aiohttp.ClientSession
) -> None:
    parts = [{"type": "text", "text": "from parts"}, {"type": "image_url", "image_url": {}}]
    status, doc, _ = await post(http, fake, {"messages": [{"role": "user", "content": parts}]})
    assert status == 200
    assert doc["choices"][0]["message"]["content"] == "from parts"


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer "}, {"Authorization": "Basic x"}]
)
async def test_missing_bearer_key_is_401(
    fake: FakeOpenRouter, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    status, doc, _ = await post(http, fake, chat_body(), headers=headers)
    assert status == 401
    assert doc["error"]["code"] == 401
    assert doc["error"]["message"]


async def test_configured_key_is_enforced(
    fake: FakeOpenRouter, http: aiohttp.ClientSession
) -> None:
    fake.configure(FakeConfig(api_key="right"))
    wrong, _, _ = await post(http, fake, chat_body(), headers={"Authorization": "Bearer wrong"})
    right, _, _ = await post(http, fake, chat_body(), headers={"Authorization": "Bearer right"})
    assert (wrong, right) == (401, 200)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": []},
        {"messages": "hi"},
        {"messages": [{"role": "wizard", "content": "hi"}]},
        {"messages": [{"content": "hi"}]},
        chat_body(max_tokens=0),
        [1, 2],
    ],
)
async def test_malformed_body_is_400(
    fake: FakeOpenRouter, http: aiohttp.ClientSession, body: Any
) -> None:
    status, doc, _ = await post(http, fake, body)
    assert status == 400
    assert doc["error"]["code"] == 400


async def test_invalid_json_is_400(fake: FakeOpenRouter, http: aiohttp.ClientSession) -> None:
    url = f"{fake.base_url}/chat/completions"
    async with http.post(url, data=b"{nope", headers=AUTH) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == 400


async def test_burst_above_limit_gets_429_with_retry_after(
    fake: FakeOpenRouter, http: aiohttp.ClientSession
) -> None:
    fake.configure(FakeConfig(rate_limit=5))
    results = await asyncio.gather(*(post(http, fake, chat_body()) for _ in range(20)))
    ok = [r for r in results if r[0] == 200]
    limited = [r for r in results if r[0] == 429]
    assert 5 <= len(ok) <= 6  # the full bucket, plus at most one refill during the burst
    assert len(ok) + len(limited) == 20
    for _, doc, headers in limited:
        assert int(headers["Retry-After"]) >= 1
        assert doc["error"]["code"] == 429
    assert fake.stats.rate_limited == len(limited)


async def test_sustained_rate_is_capped(fake: FakeOpenRouter, http: aiohttp.ClientSession) -> None:
    rate, burst = 20.0, 5.0
    fake.configure(FakeConfig(rate_limit=rate, rate_limit_burst=burst))
    deadline = time.monotonic() + 1.5

    async def hammer() -> None:
        while time.monotonic() < deadline:
            await post(http, fake, chat_body())

    start = time.monotonic()
    await asyncio.gather(*(hammer() for _ in range(8)))
    elapsed = time.monotonic() - start
    accepted = fake.stats.by_status[200]
    assert accepted <= burst + rate * elapsed + 1
    assert accepted >= rate * elapsed * 0.6  # it limits, it does not simply refuse
    assert fake.stats.rate_limited > accepted  # the load really was above the limit
    assert fake.stats.observed_rate(200) <= rate * 1.5


async def test_error_rate_is_roughly_respected(
    fake: FakeOpenRouter, http: aiohttp.ClientSession
) -> None:
    fake.configure(FakeConfig(error_rate=0.3, seed=7))
    n = 300
    statuses = [(await post(http, fake, chat_body()))[0] for _ in range(n)]
    errors = [s for s in statuses if s != 200]
    assert set(errors) <= {500, 502, 503}
    assert 0.2 <= len(errors) / n <= 0.4
    assert fake.stats.total == n


async def test_forced_status_and_forced_429(
    fake: FakeOpenRouter, http: aiohttp.ClientSession
) -> None:
    fake.configure(FakeConfig(forced_status=503))
    status, doc, _ = await post(http, fake, chat_body())
    assert (status, doc["error"]["code"]) == (503, 503)
    fake.configure(FakeConfig(forced_status=429, retry_after_s=7))
    status, _, headers = await post(http, fake, chat_body())
    assert (status, headers["Retry-After"]) == (429, "7")


async def test_forced_status_rate_applies_to_a_fraction(
    fake: FakeOpenRouter, http: aiohttp.ClientSession
) -> None:
    fake.configure(FakeConfig(forced_status=502, forced_status_rate=0.5, seed=3))
    statuses = [(await post(http, fake, chat_body()))[0] for _ in range(200)]
    assert set(statuses) == {200, 502}
    assert 70 <= statuses.count(502) <= 130


async def test_latency_is_applied(fake: FakeOpenRouter, http: aiohttp.ClientSession) -> None:
    fake.configure(FakeConfig(latency_ms=200))
    start = time.monotonic()
    status, _, _ = await post(http, fake, chat_body())
    assert status == 200
    assert time.monotonic() - start >= 0.19


@pytest.mark.parametrize("distribution", ["uniform", "normal", "lognormal"])
def test_latency_distributions_have_the_configured_mean(
    distribution: Literal["uniform", "normal", "lognormal"],
) -> None:
    cfg = FakeConfig(latency_ms=100, latency_jitter_ms=20, latency_distribution=distribution)
    rng = random.Random(11)
    samples = [sample_latency_ms(cfg, rng) for _ in range(5000)]
    assert statistics.fmean(samples) == pytest.approx(100, rel=0.03)
    assert min(samples) >= 0
    assert statistics.pstdev(samples) > 5
    if distribution == "uniform":
        assert min(samples) >= 80
        assert max(samples) <= 120


def test_zero_jitter_is_a_fixed_latency() -> None:
    cfg = FakeConfig(latency_ms=42, latency_distribution="lognormal")
    assert {sample_latency_ms(cfg, random.Random(i)) for i in range(5)} == {42}


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2, capacity=2)
    t0 = bucket._at
    assert bucket.try_acquire(t0) == 0
    assert bucket.try_acquire(t0) == 0
    assert bucket.try_acquire(t0) == pytest.approx(0.5)
    assert bucket.try_acquire(t0 + 0.5) == 0
    assert bucket.try_acquire(t0 + 10) == 0  # capped at capacity, not 20 tokens
    assert bucket.try_acquire(t0 + 10) == 0
    assert bucket.try_acquire(t0 + 10) > 0


async def test_stats_endpoint_counts_and_resets(
    fake: FakeOpenRouter, http: aiohttp.ClientSession
) -> None:
    for _ in range(3):
        await post(http, fake, chat_body())
    await post(http, fake, chat_body(), headers={})
    root = fake.base_url.removesuffix("/api/v1") if fake.base_url else ""
    async with http.get(f"{root}/stats") as resp:
        stats = await resp.json()
    assert stats["total"] == 4
    assert stats["by_status"] == {"200": 3, "401": 1}
    assert stats["rate_limited"] == 0
    assert len(stats["timestamps"]) == 4
    assert stats["timestamps"] == sorted(stats["timestamps"])
    assert sum(sum(c.values()) for c in stats["per_second"].values()) == 4
    assert stats["in_flight"] == 0
    async with http.post(f"{root}/stats/reset") as resp:
        assert resp.status == 200
    async with http.get(f"{root}/stats") as resp:
        assert (await resp.json())["total"] == 0
    async with http.get(f"{root}/health") as resp:
        assert (await resp.json()) == {"status": "ok"}
    assert fake.stats.total == 0  # /stats and /health are not counted


async def test_stop_does_not_wait_for_abandoned_slow_requests(
    http: aiohttp.ClientSession,
) -> None:
    server = FakeOpenRouter(FakeConfig(latency_ms=30_000))
    await server.start()
    try:
        with pytest.raises(asyncio.TimeoutError):
            await post_with_timeout(http, server, 0.2)

        async def counted() -> bool:  # the server notes the abandoned request as it sees it go
            return server.stats.by_status[499] >= 1

        await wait_until(counted, within_s=5, interval_s=0.02, error=AssertionError)
        assert server.stats.by_status[499] == 1
    finally:
        start = time.monotonic()
        await server.stop()
    assert time.monotonic() - start < 5


async def post_with_timeout(
    http: aiohttp.ClientSession, server: FakeOpenRouter, timeout_s: float
) -> int:
    async with http.post(
        f"{server.base_url}/chat/completions",
        json=chat_body(),
        headers=AUTH,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    ) as resp:
        return resp.status


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValidationError):
        FakeConfig(error_rate=1.5)
    with pytest.raises(ValidationError):
        FakeConfig(rate_limit=0)
    with pytest.raises(ValidationError):
        FakeConfig(forced_status=200)
    assert main(["--error-rate", "2"]) == 2


async def test_cli_serves_until_sigterm(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobstream.streams.dev.fake_openrouter",
        "--port",
        "0",
        "--rate-limit",
        "50",
        "--api-key",
        KEY,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/api/v1", line)
        assert match, line
        async with http.post(
            f"{match.group(0)}/chat/completions", json=chat_body(), headers=AUTH
        ) as resp:
            assert resp.status == 200
        async with http.get(f"{match.group(1)}/stats") as resp:
            assert (await resp.json())["by_status"] == {"200": 1}
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
