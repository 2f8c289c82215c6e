"""A fake OpenRouter chat-completions server for the demo, the tests and the benchmarks.

It speaks the real wire shape (request, answer, ``usage.cost``, the ``{"error": {...}}`` error
body, ``Retry-After`` on 429) so the ``llm.chat`` handler is exercised exactly as in production,
and it misbehaves on purpose: latency, injected 5xx, its own rate limit and forced statuses.
What it saw is counted at ``GET /stats`` so a test can check an observed rate against a limit.

Run it in-process with :class:`FakeOpenRouter`, or as a process with
``python -m jobstream.streams.dev.fake_openrouter --port 8089 --latency-ms 500 --error-rate 0.01``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import click
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

API_PREFIX = "/api/v1"
MAX_TIMESTAMPS = 200_000
"""Arrival times kept for ``/stats``; bounded so a long benchmark cannot exhaust memory."""


class FakeConfig(BaseModel):
    """The knobs; a new config can be swapped in between test phases with ``configure``."""

    model_config = ConfigDict(frozen=True)

    api_key: str | None = None
    """When set, only this bearer key is accepted; otherwise any non-empty key is."""
    default_model: str = "openai/gpt-4o-mini"
    latency_ms: float = Field(default=0.0, ge=0)
    latency_jitter_ms: float = Field(default=0.0, ge=0)
    latency_distribution: Literal["uniform", "normal", "lognormal"] = "uniform"
    error_rate: float = Field(default=0.0, ge=0, le=1)
    error_statuses: tuple[int, ...] = Field(default=(500, 502, 503), min_length=1)
    rate_limit: float | None = Field(default=None, gt=0, description="requests per second")
    rate_limit_burst: float | None = Field(default=None, ge=1, description="default: rate")
    forced_status: int | None = Field(default=None, ge=400, le=599)
    forced_status_rate: float = Field(default=1.0, ge=0, le=1)
    retry_after_s: float = Field(default=1.0, ge=0, description="Retry-After of a forced 429")
    prompt_price_per_mtok: float = Field(default=0.15, ge=0)
    completion_price_per_mtok: float = Field(default=0.60, ge=0)
    seed: int | None = None


class _Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return " ".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class _ChatRequest(BaseModel):
    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)


class TokenBucket:
    """The fake's own limit: a bucket refilled at ``rate``/s holding at most ``capacity``."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity
        self._at = time.monotonic()

    def try_acquire(self, now: float | None = None) -> float:
        """Take a token and return 0, or return the seconds until one will be available."""
        now = time.monotonic() if now is None else now
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


@dataclass
class FakeStats:
    """What the fake answered, with arrival times relative to the last reset."""

    started_at: float = field(default_factory=time.time)
    _t0: float = field(default_factory=time.monotonic)
    total: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    events: list[tuple[float, int]] = field(default_factory=list)

    @property
    def rate_limited(self) -> int:
        return self.by_status[429]

    def begin(self) -> float:
        self.total += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return time.monotonic() - self._t0

    def end(self, arrived: float, status: int) -> None:
        self.in_flight -= 1
        self.by_status[status] += 1
        if len(self.events) < MAX_TIMESTAMPS:
            self.events.append((arrived, status))

    def timestamps(self, status: int | None = None) -> list[float]:
        return sorted(t for t, s in self.events if status is None or s == status)

    def observed_rate(self, status: int | None = None) -> float:
        """Requests per second between the first and last arrival (with ``status`` if given)."""
        ts = self.timestamps(status)
        if len(ts) < 2 or ts[-1] == ts[0]:
            return float(len(ts))
        return (len(ts) - 1) / (ts[-1] - ts[0])

    def to_json(self) -> dict[str, Any]:
        per_second: dict[str, Counter[str]] = {}
        for t, s in self.events:
            per_second.setdefault(str(int(t)), Counter())[str(s)] += 1
        return {
            "started_at": self.started_at,
            "total": self.total,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "rate_limited": self.rate_limited,
            "timestamps": [round(t, 6) for t in self.timestamps()],
            "per_second": {k: dict(v) for k, v in sorted(per_second.items(), key=_int_key)},
        }


def _int_key(item: tuple[str, Any]) -> int:
    return int(item[0])


def sample_latency_ms(cfg: FakeConfig, rng: random.Random) -> float:
    """One latency draw: mean ``latency_ms``, spread ``latency_jitter_ms`` (half-width for
    uniform, standard deviation for normal and lognormal), never negative."""
    mean, spread = cfg.latency_ms, cfg.latency_jitter_ms
    if spread == 0 or mean == 0:
        return mean
    if cfg.latency_distribution == "uniform":
        ms = rng.uniform(mean - spread, mean + spread)
    elif cfg.latency_distribution == "normal":
        ms = rng.gauss(mean, spread)
    else:  # lognormal with the given mean and standard deviation
        sigma2 = math.log1p((spread / mean) ** 2)
        ms = rng.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2))
    return max(0.0, ms)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"code": status, "message": message}}
    return web.json_response(body, status=status, headers=headers)


_ERROR_MESSAGES = {
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "No available model provider that meets your routing requirements",
    504: "Gateway timeout",
}


class FakeOpenRouter:
    """The fake as an aiohttp app, startable in-process on an ephemeral port."""

    def __init__(self, config: FakeConfig | None = None, *, shutdown_timeout: float = 2.0) -> None:
        self._shutdown_timeout = shutdown_timeout
        self.stats = FakeStats()
        self.configure(config or FakeConfig())
        self.app = web.Application()
        self.app.router.add_post(f"{API_PREFIX}/chat/completions", self._chat)
        self.app.router.add_get("/stats", self._get_stats)
        self.app.router.add_post("/stats/reset", self._reset_stats)
        self.app.router.add_get("/health", self._health)
        self._runner: web.AppRunner | None = None
        self.base_url: str | None = None

    def configure(self, config: FakeConfig) -> None:
        """Swap the knobs; the rate-limit bucket starts full and the RNG restarts from the seed."""
        self.config = config
        self._rng = random.Random(config.seed)
        self._bucket = (
            TokenBucket(config.rate_limit, config.rate_limit_burst or max(1.0, config.rate_limit))
            if config.rate_limit
            else None
        )

    def reset_stats(self) -> None:
        # Requests still in flight finish on the old object (``_chat`` holds it), not this one.
        self.stats = FakeStats()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen and return the base URL a client puts in ``openrouter_base_url``."""
        # Cancelling handlers of vanished clients keeps a "slow upstream" test from stalling stop().
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown}:{bound_port}{API_PREFIX}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenRouter:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- handlers -------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.to_json())

    async def _reset_stats(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response({"status": "reset"})

    async def _chat(self, request: web.Request) -> web.Response:
        stats = self.stats  # a reset while this request runs must not unbalance in_flight
        arrived = stats.begin()
        status = 499  # the client went away (nginx's convention) unless an answer is produced
        try:
            response = await self._answer(request, self.config)
            status = response.status
            return response
        finally:
            stats.end(arrived, status)

    async def _answer(self, request: web.Request, cfg: FakeConfig) -> web.Response:
        auth = request.headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return _error(401, "No auth credentials found")
        if cfg.api_key is not None and key.strip() != cfg.api_key:
            return _error(401, "User not found.")

        if self._bucket is not None:
            wait = self._bucket.try_acquire()
            if wait > 0:
                return self._too_many(wait)

        try:
            raw = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "Invalid JSON body")
        try:
            chat = _ChatRequest.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return _error(400, f"Invalid request: {where}: {first['msg']}")

        delay_ms = sample_latency_ms(cfg, self._rng)
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)

        if cfg.forced_status is not None and self._rng.random() < cfg.forced_status_rate:
            if cfg.forced_status == 429:
                return _error(429, "Rate limit exceeded", {"Retry-After": f"{cfg.retry_after_s:g}"})
            return _error(cfg.forced_status, _ERROR_MESSAGES.get(cfg.forced_status, "Forced error"))
        if cfg.error_rate and self._rng.random() < cfg.error_rate:
            code = self._rng.choice(cfg.error_statuses)
            return _error(code, _ERROR_MESSAGES.get(code, "Injected error"))

        return web.json_response(self._completion(chat, cfg))

    def _too_many(self, wait: float) -> web.Response:
        assert self._bucket is not None
        retry_after = max(1, math.ceil(wait))
        headers = {
            "Retry-After": str(retry_after),
            "X-RateLimit-Limit": f"{self._bucket.rate:g}",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int((time.time() + wait) * 1000)),
        }
        return _error(429, f"Rate limit exceeded: {self._bucket.rate:g} requests/s", headers)

    def _completion(self, chat: _ChatRequest, cfg: FakeConfig) -> dict[str, Any]:
        """Echo the last user message, cut to ``max_tokens`` words (one word = one token)."""
        users = [m for m in chat.messages if m.role == "user"] or chat.messages
        words = users[-1].text().split()
        truncated = chat.max_tokens is not None and len(words) > chat.max_tokens
        out = words[: chat.max_tokens] if truncated else words
        prompt_tokens = sum(len(m.text().split()) + 1 for m in chat.messages)
        completion_tokens = len(out)
        cost = (
            prompt_tokens * cfg.prompt_price_per_mtok
            + completion_tokens * cfg.completion_price_per_mtok
        ) / 1e6
        finish = "length" if truncated else "stop"
        return {
            "id": f"gen-{int(time.time())}-{uuid.uuid4().hex[:20]}",
            "provider": "Fake",
            "model": chat.model or cfg.default_model,
            "object": "chat.completion",
            "created": int(time.time()),
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": finish,
                    "native_finish_reason": finish,
                    "message": {
                        "role": "assistant",
                        "content": " ".join(out),
                        "refusal": None,
                        "reasoning": None,
                    },
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "cost": round(cost, 12),
                "is_byok": False,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        }


# -- command line ---------------------------------------------------------------------------------


async def _serve(config: FakeConfig, host: str, port: int) -> None:
    fake = FakeOpenRouter(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        url = await fake.start(host, port)
        print(f"fake OpenRouter listening on {url}", flush=True)
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await fake.stop()


@click.command(
    "fake-openrouter",
    short_help="run the fake OpenRouter server (development only)",
    help="Run a fake OpenRouter server (POST /api/v1/chat/completions, GET /stats, /health) "
    "with the latency, errors and rate limit asked for. Stops on SIGTERM.",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("--host", default="127.0.0.1", show_default=True, help="bind address")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8089,
    show_default=True,
    help="0 picks a free port",
)
@click.option("--api-key", default=None, help="accept only this bearer key (default: any)")
@click.option(
    "--model", default=FakeConfig().default_model, show_default=True, help="model when none asked"
)
@click.option("--latency-ms", type=float, default=0.0, show_default=True, help="added per answer")
@click.option("--latency-jitter-ms", type=float, default=0.0, show_default=True)
@click.option(
    "--latency-distribution",
    type=click.Choice(["uniform", "normal", "lognormal"]),
    default="uniform",
    show_default=True,
)
@click.option(
    "--error-rate", type=float, default=0.0, show_default=True, help="fraction answered 5xx"
)
@click.option("--error-statuses", default="500,502,503", show_default=True, help="comma-separated")
@click.option("--rate-limit", type=float, default=None, help="requests per second (429 above)")
@click.option("--rate-limit-burst", type=float, default=None, help="default: the rate")
@click.option("--forced-status", type=int, default=None, help="answer this status instead")
@click.option(
    "--forced-status-rate",
    type=float,
    default=1.0,
    show_default=True,
    help="fraction answered --forced-status",
)
@click.option(
    "--retry-after",
    type=float,
    default=1.0,
    show_default=True,
    help="Retry-After of a forced 429",
)
@click.option("--seed", type=int, default=None, help="for reproducible latency and errors")
def fake_openrouter_command(
    host: str, port: int, error_statuses: str, retry_after: float, model: str, **knobs: Any
) -> int:
    try:
        statuses = tuple(int(s) for s in error_statuses.split(",") if s.strip())
        config = FakeConfig(
            default_model=model, error_statuses=statuses, retry_after_s=retry_after, **knobs
        )
    except (ValidationError, ValueError) as exc:
        print(f"invalid option: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config, host, port))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m jobstream.streams.dev.fake_openrouter``, the same command as
    ``jobstream fake-openrouter``."""
    try:
        result = fake_openrouter_command.main(
            argv, prog_name="python -m jobstream.streams.dev.fake_openrouter", standalone_mode=False
        )
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
