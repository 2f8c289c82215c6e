"""One settings class, read once at start-up from ``JOBSTREAM_*`` environment variables."""

from __future__ import annotations

import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RateLimit(BaseModel):
    """A global limit for one upstream key, shared by every replica through PostgreSQL."""

    rate: float = Field(gt=0, description="requests allowed per `per` seconds")
    per: float = Field(default=1.0, gt=0)
    burst: float | None = Field(default=None, gt=0, description="bucket size; default = rate")
    tokens_per_minute: float | None = Field(default=None, gt=0)


class Settings(BaseSettings):
    # a field's docstring is its description: `jobstream <command> --help` shows it
    model_config = SettingsConfigDict(
        env_prefix="JOBSTREAM_", frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    # where the services are; unset, a command that needs one names the variable to set
    kafka_bootstrap: str | None = None
    """Kafka bootstrap servers, host:port[,host:port]"""
    database_url: SecretStr | None = None
    """PostgreSQL DSN, postgresql://user:password@host:port/db[?sslmode=...]"""
    state_dir: Path = Path(".state")
    """where local state lives (the dev stack, the demo's logs)"""

    # Kafka TLS and SASL, for managed clusters (Confluent Cloud, MSK, Aiven, Redpanda); every
    # Kafka client the project builds takes them through streams/kafka/security.py
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, as the broker's listener"""
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    """PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"""
    kafka_sasl_username: str | None = None
    """SASL user name"""
    kafka_sasl_password: SecretStr | None = None
    """SASL password"""
    kafka_ssl_cafile: Path | None = Field(
        default=None, description="PEM CA bundle; default: the system's trust store"
    )
    kafka_ssl_certfile: Path | None = Field(default=None, description="client cert (mutual TLS)")
    kafka_ssl_keyfile: Path | None = None
    """client key (mutual TLS)"""
    kafka_ssl_key_password: SecretStr | None = None
    """password of the client key"""
    kafka_ssl_check_hostname: bool = True
    """check that the broker's certificate names its host"""

    # topics and the consumer group
    topic_prefix: str = "jobs"
    """topics: <prefix>, <prefix>.retry.<delay> (10s, 1m, ...), <prefix>.dlq, <prefix>.outcomes"""
    group_id: str = "jobstream"
    """the consumer group every replica joins"""
    partitions: int = Field(default=8, ge=1)
    """partitions of each topic jobstream creates"""
    replication_factor: int = Field(default=1, ge=1)
    """replicas of each topic jobstream creates"""

    # topic configs: applied when jobstream creates a topic; `jobstream doctor` reports drift.
    # -1 keeps records forever. max.message.bytes is derived from max_event_bytes (topics.py).
    main_retention_ms: int = Field(default=7 * 86_400_000, ge=-1)
    """retention.ms of the main topic (-1: forever)"""
    retry_retention_ms: int = Field(default=7 * 86_400_000, ge=-1)
    """retention.ms of the retry topics (-1: forever)"""
    outcome_retention_ms: int = Field(default=3 * 86_400_000, ge=-1)
    """retention.ms of the outcome topic (-1: forever)"""
    dlq_retention_ms: int = Field(
        default=30 * 86_400_000, ge=-1, description="dead letters outlive their rows' pruning"
    )
    lag_sample_interval_s: float = Field(
        default=5.0, gt=0, description="how often a worker measures its own partitions' lag"
    )

    # processing
    concurrency: int = Field(default=25, ge=1, le=5000)
    """jobs run at once per replica"""
    retry_forwarders: int = Field(
        default=64,
        ge=1,
        le=5000,
        description="events each retry tier holds at once until they are due (each in an agent"
        " of its own): a tier's events share one delay, so they come due in order",
    )
    max_in_flight: int = Field(
        default=0,
        ge=0,
        description="records taken from the main topic and not yet finished, at most (waiting"
        " for a handler slot, running, or being written); 0: concurrency + 2 x batch_max_size",
    )
    buffer_maxsize: int = Field(default=1000, ge=1, description="events prefetched per partition")
    max_event_bytes: int = Field(
        default=1_000_000,
        ge=1024,
        description="larger records are dead-lettered at decode as `oversize`, before any work",
    )
    default_timeout_s: float = Field(default=60.0, gt=0)
    """a job type without its own timeout gets this"""
    shutdown_grace_s: float = Field(default=25.0, ge=0)
    """on SIGTERM, running jobs get this long to finish"""
    commit_interval_s: float = Field(default=1.0, gt=0)
    """how often consumed offsets are committed"""
    max_poll_interval_s: float = Field(default=300.0, gt=0)
    """Kafka's max.poll.interval.ms, in seconds"""
    session_timeout_s: float = Field(default=30.0, gt=0)
    """Kafka's session.timeout.ms, in seconds"""
    worker_name: str = Field(default_factory=socket.gethostname)
    """this replica's name in rows, logs and metrics; default: the host name"""

    # execution claims and bounded durable steps
    claim_lease_s: float = Field(
        default=30.0,
        gt=0,
        description="a running job's claim lasts this long unless renewed (every third of it);"
        " a claim whose lease expired (its worker died) is taken over",
    )
    durable_step_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="one try of a durable step (row write, publish) that has not finished by"
        " then counts as failed and is retried (a publish Kafka cannot acknowledge never raises)",
    )
    durable_step_deadline_s: float = Field(
        default=30.0,
        gt=0,
        description="a durable step retrying in place longer than this is an outage: reported"
        " once (log, metric, Sentry) and /ready answers degraded until it passes",
    )

    # results: group commit
    batch_max_size: int = Field(default=500, ge=1)
    """rows written to PostgreSQL per group commit, at most"""
    batch_max_delay_ms: float = Field(default=15.0, ge=0)
    """a record waits at most this long for others to join its claim batch, a finished job
    for others to join its row write (measured on 2 cores: 15 ms gave 8 % more echo jobs/s at
    7 % less CPU per job than 5 ms, for at most 2 x 10 ms more latency at low load)"""

    db_pool_min: int = Field(default=2, ge=1)
    """PostgreSQL connections kept open"""
    db_pool_max: int = Field(default=10, ge=1)
    """PostgreSQL connections at most"""
    db_pooler_mode: Literal["none", "transaction"] = Field(
        default="none",
        description="'transaction' behind PgBouncer/Supabase in transaction mode: no statement "
        "cache, no LISTEN, transaction-level locks only",
    )
    pg_bin_dir: Path | None = Field(
        default=None, description="where pg_dump/pg_restore live; default: newest found"
    )
    backup_database_url: SecretStr | None = Field(
        default=None, description="direct URL for backups when database_url goes via a pooler"
    )

    # retention of finished rows (streams/pg/retention.py); a limit set to None is not applied
    retention_enabled: bool = Field(default=True, description="sweep from the workers")
    retention_interval_s: float = Field(default=60.0, gt=0)
    """how often the workers sweep finished rows"""
    retention_batch_size: int = Field(default=2000, ge=1, le=50_000)
    """rows deleted per statement of a sweep"""
    retention_succeeded_age_s: float | None = Field(default=86_400.0, gt=0)
    """succeeded rows older than this are pruned"""
    retention_succeeded_max_rows: int | None = Field(default=1_000_000, ge=1)
    """succeeded rows kept at most (oldest pruned first)"""
    retention_dead_lettered_age_s: float | None = Field(default=7 * 86_400.0, gt=0)
    """dead-lettered rows older than this are pruned"""
    retention_dead_lettered_max_rows: int | None = Field(default=100_000, ge=1)
    """dead-lettered rows kept at most (oldest pruned first)"""
    retention_include_unexpired_dead_letters: bool = Field(
        default=False, description="also prune dead-lettered rows whose letter is still kept"
    )

    # the job types
    app: str | None = None
    """the team's JobApp, module.path:attribute (default: the built-in job types)"""

    # failures
    retry_tiers_s: tuple[float, ...] = (10.0, 60.0, 600.0)
    """delays of the retry topics, one topic each, as a JSON list of seconds"""
    max_attempts: int = Field(default=5, ge=1)
    """attempts of a job before it is dead-lettered (per type in the policy file)"""
    policy_file: Path | None = None
    """JSON file of per-type overrides (max_attempts, timeout_s, fatal_errors, ...)"""

    # rate limits, keyed by upstream
    rate_limits: dict[str, RateLimit] = Field(default_factory=dict)
    """JSON map of key to limit, over the ones the app declares (the built-in app: openrouter
    50/s), e.g. {"openrouter": {"rate": 20, "per": 1}}"""
    rate_limit_lease: int = Field(
        default=100,
        ge=1,
        description="most tokens taken per DB round trip; also capped at 100 ms of the rate",
    )

    # handlers
    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    """OpenRouter API of the llm.chat jobs"""
    openrouter_api_key: SecretStr | None = None
    """OpenRouter key of the llm.chat jobs"""
    openrouter_model: str = "openai/gpt-4o-mini"
    """model of an llm.chat job that names none"""
    webhook_allow_hosts: tuple[str, ...] = ()
    """JSON list of hosts http.webhook may call though they resolve to private addresses"""

    # web server (health, metrics, producer API)
    web_host: str = "127.0.0.1"
    """bind address of the health, metrics and producer API server"""
    web_port: int = Field(default=6066, ge=0, le=65535)
    """its port (0: any free one)"""
    api_token: SecretStr | None = None
    """bearer token POST /jobs and GET /jobs/{id} require; none: open"""
    api_max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """largest request body the producer API reads"""
    metrics_token: SecretStr | None = None
    """bearer token GET /metrics requires (Prometheus: authorization.credentials); none: open"""
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="serve /metrics on this port of web_host only, not on the web port, so a "
        "NetworkPolicy can open it to Prometheus alone (0: any free one); none: the web port",
    )

    # limits of every HTTP server jobstream runs (worker web port, `jobstream api`, console);
    # enforced by streams/httpserver.py, as aiohttp has no read deadlines of its own
    http_header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="request line and headers must arrive within this of the connection's "
        "opening (or the request's first byte); else the connection is closed",
    )
    http_body_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="the whole body must arrive within this of the headers; else 408 and "
        "the connection closes (15 s for the 1 MiB body limit needs ~70 KB/s)",
    )
    http_keepalive_timeout_s: float = Field(
        default=75.0,
        gt=0,
        description="idle keep-alive connections close after this; keep it above the load "
        "balancer's idle timeout (60 s on AWS ALB) so the balancer closes first",
    )
    http_max_connections: int = Field(
        default=1000,
        ge=1,
        description="open connections per server; more are answered 503 and closed at once",
    )

    # operator console (see streams/console): no access without a token, except on loopback
    # with console_dev_open; operators may replay, viewers only look
    console_host: str = "127.0.0.1"
    """bind address of the operator console"""
    console_port: int = Field(default=6070, ge=0, le=65535)
    """its port (0: any free one)"""
    console_viewer_token: SecretStr | None = None
    """token of the console's viewers (read only)"""
    console_operator_token: SecretStr | None = None
    """token of the console's operators (may replay)"""
    console_dev_open: bool = Field(
        default=False, description="no login on 127.0.0.1/::1 when no token is set (dev only)"
    )
    console_secret_key: SecretStr | None = Field(
        default=None, description="signs session cookies; default: random per process"
    )
    console_session_ttl_s: int = Field(default=8 * 3600, ge=60)
    """a console login lasts this long"""
    console_show_payloads: bool = False
    """show job payloads and results in the console"""
    console_replay_rate: float = Field(default=50.0, gt=0, description="events/s of a replay")
    console_replay_max: int = Field(default=1000, ge=1, description="dead letters per replay")
    console_enabled: bool = Field(default=False, description="mount /console in `jobstream api`")
    console_trusted_proxies: tuple[str, ...] = Field(
        default=(),
        description="JSON list of addresses or networks of TLS-terminating proxies whose "
        'X-Forwarded-Proto the console believes (e.g. ["10.0.0.0/8"]); from anyone else it is '
        "ignored",
    )
    console_secure_cookies: bool = Field(
        default=False,
        description="always mark the session cookie Secure (the console is only reached over "
        "HTTPS); otherwise only requests over TLS, or from a trusted proxy saying https, get it",
    )

    # observability
    sentry_dsn: SecretStr | None = None
    """report errors to this Sentry project; none: no reports"""
    sentry_environment: str | None = Field(
        default=None, description="Sentry's environment of every event (e.g. production)"
    )
    log_level: str = "INFO"
    """DEBUG, INFO, WARNING or ERROR"""

    @field_validator("retry_tiers_s")
    @classmethod
    def _tiers_positive(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(t <= 0 for t in v):
            raise ValueError("retry tiers must be a non-empty list of positive seconds")
        return v

    @property
    def in_flight_limit(self) -> int:
        """``max_in_flight``, or when 0: every slot busy and two batches behind them."""
        return self.max_in_flight or self.concurrency + 2 * self.batch_max_size

    def database_dsn(self) -> str:
        if self.database_url is None:
            raise ValueError("JOBSTREAM_DATABASE_URL is not set and no local stack is running")
        return self.database_url.get_secret_value()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use (never at import)."""
    return Settings()
