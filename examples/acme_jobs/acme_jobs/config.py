"""Acme's own settings, beside jobstream's ``JOBSTREAM_*`` ones: read once per replica, when
the app's lifespan starts (never at import time, so a producer importing the job types needs
none of them)."""

from __future__ import annotations

from pydantic import Field, HttpUrl, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class AcmeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ACME_", frozen=True, extra="ignore")

    openrouter_url: HttpUrl = HttpUrl("https://openrouter.ai/api/v1")
    """OpenRouter's OpenAI-compatible API root; ``/chat/completions`` is appended."""
    openrouter_api_key: SecretStr
    """Required: a replica without it does not start (better than dead-lettering every job)."""
    summary_model: str = "openai/gpt-4o-mini"
    llm_timeout_s: float = Field(default=50.0, gt=0)
    """One request's limit; below ``ticket.summarize``'s job timeout, so a slow upstream is a
    retryable timeout of the request rather than a cancelled handler."""
    webhooks: dict[str, list[HttpUrl]] = Field(default_factory=dict)
    """Which receivers get which business event, as JSON:
    ``ACME_WEBHOOKS='{"order.paid": ["https://crm.example.com/hooks/acme"]}'``."""
