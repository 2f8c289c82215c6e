"""One settings class, read once at start-up from ``JOBSTREAM_*`` environment variables."""

from __future__ import annotations

import socket
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RateLimit(BaseModel):
    """A global limit for one upstream key, shared by every replica through PostgreSQL."""

    rate: float = Field(gt=0, description="requests allowed per `per` seconds")
    per: float = Field(default=1.0, gt=0)
    burst: float | None = Field(default=None, gt=0, description="bucket size; default = rate")
    tokens_per_minute: float | None = Field(default=None, gt=0)


def _default_rate_limits() -> dict[str, RateLimit]:
    return {"openrouter": RateLimit(rate=50, per=1.0)}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JOBSTREAM_", frozen=True, extra="ignore")

    # where the services are; None means "start or find the local stack"
    kafka_bootstrap: str | None = None
    database_url: SecretStr | None = None
    state_dir: Path = Path(".state")

    # topics and the consumer group
    topic_prefix: str = "jobs"
    group_id: str = "jobstream"
    partitions: int = Field(default=8, ge=1)
    replication_factor: int = Field(default=1, ge=1)

    # processing
    concurrency: int = Field(default=25, ge=1, le=5000)
    buffer_maxsize: int = Field(default=1000, ge=1, description="events prefetched per partition")
    max_event_bytes: int = Field(default=1_048_576, ge=1024)
    default_timeout_s: float = Field(default=60.0, gt=0)
    shutdown_grace_s: float = Field(default=25.0, ge=0)
    commit_interval_s: float = Field(default=1.0, gt=0)
    max_poll_interval_s: float = Field(default=300.0, gt=0)
    session_timeout_s: float = Field(default=30.0, gt=0)
    worker_name: str = Field(default_factory=socket.gethostname)

    # results: group commit
    batch_max_size: int = Field(default=500, ge=1)
    batch_max_delay_ms: float = Field(default=5.0, ge=0)
    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=10, ge=1)

    # failures
    retry_tiers_s: tuple[float, ...] = (10.0, 60.0, 600.0)
    max_attempts: int = Field(default=5, ge=1)
    policy_file: Path | None = None

    # rate limits, keyed by upstream
    rate_limits: dict[str, RateLimit] = Field(default_factory=_default_rate_limits)
    rate_limit_lease: int = Field(
        default=100,
        ge=1,
        description="most tokens taken per DB round trip; also capped at 100 ms of the rate",
    )

    # handlers
    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    openrouter_api_key: SecretStr | None = None
    openrouter_model: str = "openai/gpt-4o-mini"
    webhook_allow_hosts: tuple[str, ...] = ()

    # web server (health, metrics, producer API)
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=0, le=65535)
    api_token: SecretStr | None = None
    api_max_body_bytes: int = Field(default=1_048_576, ge=1024)

    # observability
    sentry_dsn: SecretStr | None = None
    log_level: str = "INFO"

    @field_validator("retry_tiers_s")
    @classmethod
    def _tiers_positive(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(t <= 0 for t in v):
            raise ValueError("retry tiers must be a non-empty list of positive seconds")
        return v

    def database_dsn(self) -> str:
        if self.database_url is None:
            raise ValueError("JOBSTREAM_DATABASE_URL is not set and no local stack is running")
        return self.database_url.get_secret_value()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use (never at import)."""
    return Settings()
