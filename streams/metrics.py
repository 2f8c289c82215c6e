"""All Prometheus metrics in one container with an injected registry (tests get their own)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class Metrics:
    """Labels stay low-cardinality: job type, outcome, tier, reason, upstream key."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs_received = Counter(
            "jobstream_jobs_received_total",
            "Events taken from the main topic",
            ["type"],
            registry=r,
        )
        self.jobs_completed = Counter(
            "jobstream_jobs_completed_total",
            "Events finished, by outcome (succeeded, retried, dead_lettered, reemitted)",
            ["type", "outcome"],
            registry=r,
        )
        self.handler_duration = Histogram(
            "jobstream_handler_duration_seconds",
            "Time spent in the job handler",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.job_latency = Histogram(
            "jobstream_job_latency_seconds",
            "From the job's created_at to its durable result",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("jobstream_in_flight_jobs", "Jobs being processed now", registry=r)
        self.handler_timeouts = Counter(
            "jobstream_handler_timeouts_total",
            "Handlers cancelled at their timeout",
            ["type"],
            registry=r,
        )
        self.dead_letters = Counter(
            "jobstream_dead_letters_total",
            "Events sent to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self.retries = Counter(
            "jobstream_retries_total", "Events sent to a retry tier", ["tier"], registry=r
        )
        self.retry_republished = Counter(
            "jobstream_retry_republished_total",
            "Due retry events put back on the main topic",
            ["tier"],
            registry=r,
        )
        self.batch_size = Histogram(
            "jobstream_result_batch_size",
            "Rows per group-commit flush",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=r,
        )
        self.batch_flush = Histogram(
            "jobstream_result_flush_seconds",
            "Time of one group-commit flush",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.db_errors = Counter(
            "jobstream_db_errors_total", "Failed database round trips", ["op"], registry=r
        )
        self.step_retries = Counter(
            "jobstream_step_retries_total",
            "Durable steps (row write, publish) retried after a PostgreSQL or Kafka error",
            ["step"],
            registry=r,
        )
        self.rate_limit_wait = Histogram(
            "jobstream_rate_limit_wait_seconds",
            "Time waiting for a rate-limit token",
            ["key"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_throttled = Counter(
            "jobstream_upstream_throttled_total",
            "429 answers from an upstream",
            ["key"],
            registry=r,
        )
        self.upstream_tokens = Counter(
            "jobstream_upstream_tokens_total",
            "Tokens reported by upstream usage",
            ["key"],
            registry=r,
        )
        self.dlq_replayed = Counter(
            "jobstream_dlq_replayed_total",
            "Dead letters republished by the replay tool",
            registry=r,
        )
        self.api_requests = Counter(
            "jobstream_api_requests_total",
            "Producer API requests, by route and HTTP status",
            ["route", "status"],
            registry=r,
        )
        self.api_jobs_submitted = Counter(
            "jobstream_api_jobs_submitted_total",
            "Jobs accepted by the producer API and durable in Kafka",
            ["type"],
            registry=r,
        )
        self.worker_info = Gauge(
            "jobstream_worker_up", "1 while this replica runs", ["worker"], registry=r
        )
