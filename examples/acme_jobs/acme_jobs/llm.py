"""A small OpenRouter chat-completions client whose errors say what jobstream should do.

The mapping is the point: a 429 pauses the shared ``openrouter`` rate limit for every replica
(:class:`~jobstream.RateLimitedError` with the upstream's ``Retry-After``), 5xx and 408 are
retried (:class:`~jobstream.RetryableError`), and any other 4xx is a request OpenRouter will
refuse again (:class:`UpstreamRejectedError`, a :class:`~jobstream.FatalError`: dead-lettered at
once).
"""

from __future__ import annotations

from typing import Any

import aiohttp
from pydantic import BaseModel, SecretStr

from jobstream import FatalError, RateLimitedError, RetryableError


class UpstreamRejectedError(FatalError):
    """Raised when OpenRouter refuses the request itself (400, 401, 402, 403, 404): sending it
    again gets the same answer, so the job is dead-lettered for a person to look at."""


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Message(BaseModel):
    content: str | None = None


class Choice(BaseModel):
    message: Message
    finish_reason: str | None = None


class Completion(BaseModel):
    """The part of OpenRouter's answer Acme reads; an answer without it is a broken contract."""

    model: str
    choices: list[Choice]
    usage: Usage = Usage()

    @property
    def text(self) -> str:
        return (self.choices[0].message.content or "").strip() if self.choices else ""

    @property
    def truncated(self) -> bool:
        """The model stopped at ``max_tokens``, not at the end of what it had to say."""
        return bool(self.choices) and self.choices[0].finish_reason == "length"


class OpenRouter:
    """Chat completions over one ``aiohttp`` session that the app's lifespan owns."""

    def __init__(
        self, http: aiohttp.ClientSession, base_url: str, api_key: SecretStr, *, timeout_s: float
    ) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    def __repr__(self) -> str:
        return f"OpenRouter(url={self._url!r})"  # never the key

    async def complete(
        self, model: str, messages: list[dict[str, str]], *, max_tokens: int
    ) -> Completion:
        """One completion; connection errors and timeouts propagate as aiohttp raises them
        (``ticket.summarize`` retries those), HTTP errors as the module docstring says."""
        request: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
        headers = {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}
        async with self._http.post(
            self._url, json=request, headers=headers, timeout=self._timeout
        ) as resp:
            body = await resp.read()
            if resp.status == 429:
                raise RateLimitedError(
                    "OpenRouter answered 429", retry_after=_seconds(resp.headers.get("Retry-After"))
                )
            if resp.status >= 500 or resp.status == 408:
                raise RetryableError(f"OpenRouter answered {resp.status}")
            if resp.status >= 400:
                # the status only: an error body may quote the prompt back
                raise UpstreamRejectedError(f"OpenRouter refused the request ({resp.status})")
        return Completion.model_validate_json(body)


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date or garbage: jobstream's own backoff applies
