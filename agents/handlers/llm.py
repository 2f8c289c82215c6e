"""Job type ``llm.chat``: one chat completion through OpenRouter's OpenAI-compatible API.

The handler's whole job beyond the request is to sort upstream failures onto the project's
error tree, because that decides the job's fate: a 429 pauses the shared ``openrouter`` key for
every replica (:class:`RateLimitedError`), transient trouble goes to a retry tier
(:class:`RetryableError`), and anything a retry cannot fix (bad request, bad key, no credits,
moderation) is dead-lettered at once (:class:`FatalError`).

Its errors say what OpenRouter answered (status, the error's ``code`` and ``type`` when they are
plain identifiers, content type, size, a short hash of the body) and never quote the body: a
provider's message may repeat the prompt back (see :mod:`jobstream.agents.handlers.answers`).
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from jobstream.agents.handlers.answers import describe_body, describe_error
from jobstream.agents.registry import JobContext
from jobstream.models.errors import FatalError, JobError, RateLimitedError, RetryableError

if TYPE_CHECKING:
    from collections.abc import Mapping

JOB_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 110.0
"""Below the job timeout, so a slow upstream surfaces as this module's RetryableError (which
says what was slow) rather than as a generic cancellation by the pipeline."""
RETRYABLE_4XX = frozenset({408, 429})
"""OpenRouter documents 408 as "your request timed out": a timeout, so retried like one."""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]]
    name: str | None = None
    tool_call_id: str | None = None


class ChatPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1, description="default: settings")
    max_tokens: int = Field(default=256, ge=1, le=32000)
    temperature: float | None = Field(default=None, ge=0, le=2)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date), or None.

    Garbage yields None rather than an error: a 429 stays a 429 even when its hint is unusable,
    and the rate limiter then falls back to its own backoff.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


_IDENTIFIER = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _error_codes(body: bytes) -> str:
    """``code 402, type insufficient_credits`` from an OpenAI-style ``{"error": {...}}`` body:
    the fields that name the failure without repeating the request; ``error.message`` is left
    out, as providers quote the prompt in it."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return ""
    return ", ".join(f"{n} {error[n]}" for n in ("code", "type") if _plain(error.get(n)))


def _plain(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, str) and _IDENTIFIER.fullmatch(value) is not None


def _answer(body: bytes, headers: Mapping[str, str]) -> str:
    codes = _error_codes(body)
    answer = describe_body(body, content_type=headers.get("Content-Type"))
    return f"{codes}; {answer}" if codes else answer


def error_for_status(status: int, headers: Mapping[str, str], body: bytes) -> JobError:
    """The job error an OpenRouter answer with a non-2xx ``status`` stands for."""
    message = f"OpenRouter answered {status} ({_answer(body, headers)})"
    if status == 429:
        return RateLimitedError(message, retry_after=parse_retry_after(headers.get("Retry-After")))
    if status >= 500 or status in RETRYABLE_4XX:
        return RetryableError(message)
    return FatalError(message)


class OpenRouterClient:
    """A thin client over a shared session; it owns no connection pool, so it is cheap per job."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        api_key: SecretStr | None,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    def __repr__(self) -> str:
        return f"OpenRouterClient(url={self._url!r})"  # never the key

    async def chat(self, payload: ChatPayload, model: str) -> dict[str, Any]:
        """Send one completion request and return the decoded answer or raise a JobError."""
        if self._api_key is None or not self._api_key.get_secret_value():
            raise FatalError("openrouter_api_key is not configured")
        request: dict[str, Any] = {
            "model": model,
            "messages": [m.model_dump(exclude_none=True) for m in payload.messages],
            "max_tokens": payload.max_tokens,
        }
        if payload.temperature is not None:
            request["temperature"] = payload.temperature
        headers = {
            "Authorization": f"Bearer {self._api_key.get_secret_value()}",
            "Accept": "application/json",
            "X-Title": "jobstream",
        }
        try:
            async with self._http.post(
                self._url,
                json=request,
                headers=headers,
                timeout=self._timeout,
                raise_for_status=False,  # the status is mapped below, whatever the session says
            ) as resp:
                body = await resp.read()
                status, resp_headers = resp.status, resp.headers
        except aiohttp.InvalidURL:
            raise FatalError("openrouter_base_url is not a valid URL") from None
        except TimeoutError as exc:
            raise RetryableError(
                f"OpenRouter did not answer within {self._timeout.total}s"
            ) from exc
        except aiohttp.ClientError as exc:
            # from None: the chained exception's text can hold the request URL
            raise RetryableError(f"OpenRouter request failed: {describe_error(exc)}") from None
        if not 200 <= status < 300:
            raise error_for_status(status, resp_headers, body)
        return _decode_completion(body, resp_headers)


def _decode_completion(body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    """Check a 2xx body; a broken one is retried since it is usually a provider hiccup."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise RetryableError(
            f"OpenRouter sent a 2xx body that is not JSON ({_answer(body, headers)})"
        ) from None
    if not isinstance(doc, dict):
        raise RetryableError("OpenRouter sent a body that is not a JSON object")
    if isinstance(doc.get("error"), dict) and not doc.get("choices"):
        # Errors raised after generation started come back with status 200 and this body.
        code = doc["error"].get("code")
        status = code if isinstance(code, int) and 400 <= code <= 599 else 502
        raise error_for_status(status, headers, body)
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise RetryableError("OpenRouter answer has no choices")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if content is not None and not isinstance(content, str):
        raise RetryableError("OpenRouter answer has a non-text message content")
    return doc


def _usage(doc: Mapping[str, Any]) -> tuple[dict[str, int], float | None]:
    raw = doc.get("usage")
    if not isinstance(raw, dict):
        return {}, None
    usage = {
        k: raw[k]
        for k in ("prompt_tokens", "completion_tokens", "total_tokens")
        if isinstance(raw.get(k), int) and not isinstance(raw.get(k), bool)
    }
    cost = raw.get("cost")
    return usage, float(cost) if isinstance(cost, int | float) and math.isfinite(cost) else None


async def handle_chat(payload: ChatPayload, ctx: JobContext[None]) -> dict[str, Any]:
    """Run one completion; usage tokens and cost go to ``ctx.usage`` for metrics and limits."""
    settings = ctx.settings
    client = OpenRouterClient(
        ctx.http,
        settings.openrouter_base_url,
        settings.openrouter_api_key,
        timeout_s=REQUEST_TIMEOUT_S,
    )
    doc = await client.chat(payload, payload.model or settings.openrouter_model)
    usage, cost = _usage(doc)
    if "total_tokens" in usage:
        ctx.usage["tokens"] = usage["total_tokens"]
    if cost is not None:
        ctx.usage["cost"] = cost
    choice = doc["choices"][0]
    return {
        "content": (choice.get("message") or {}).get("content") or "",
        "model": doc.get("model") or payload.model or settings.openrouter_model,
        "usage": usage,
        "cost": cost,
        "finish_reason": choice.get("finish_reason"),
        "id": doc.get("id"),
    }
