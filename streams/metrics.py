"""All Prometheus metrics in one container with an injected registry (tests get their own)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


@dataclass(frozen=True, slots=True)
class TypeMetrics:
    """The children of one job type's per-job metrics, looked up once: ``.labels()`` costs a
    lock and a tuple per call, which the hot path would otherwise pay several times per job."""

    job_type: str
    received: Any
    handler_duration: Any
    latency: Any
    jobs_completed: Any
    _completed: dict[str, Any]
    """``jobs_completed`` children of this type by outcome, made on first use."""

    def completed(self, outcome: str) -> Any:
        child = self._completed.get(outcome)
        if child is None:
            child = self.jobs_completed.labels(type=self.job_type, outcome=outcome)
            self._completed[outcome] = child
        return child


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
        self.in_flight = Gauge(
            "jobstream_in_flight_jobs",
            "Records taken and not finished: waiting for a handler slot, running, being written",
            registry=r,
        )
        # read when scraped (set_function), so the hot path pays nothing for them
        self.running_jobs = Gauge(
            "jobstream_running_jobs",
            "Jobs holding a handler slot now (at most the replica's concurrency)",
            registry=r,
        )
        self.waiting_jobs = Gauge(
            "jobstream_waiting_jobs",
            "Claimed jobs waiting for a handler slot",
            registry=r,
        )
        self.event_loop_tasks = Gauge(
            "jobstream_event_loop_tasks",
            "asyncio tasks not yet done on the replica's event loop (handlers, flushes, the web"
            " server, timers): a count that keeps growing under a steady load is a leak",
            registry=r,
        )
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
        # execution claims and bounded durable steps
        self.claim_takeovers = Counter(
            "jobstream_claim_takeovers_total",
            "Claims taken over after their lease expired (the execution stalled or died)",
            ["type"],
            registry=r,
        )
        self.claim_waits = Counter(
            "jobstream_claim_waits_total",
            "Copies of a job that found its claim held by another execution and did not run",
            ["type"],
            registry=r,
        )
        self.claims_lost = Counter(
            "jobstream_claims_lost_total",
            "Claims found taken over by another execution while this one still ran",
            registry=r,
        )
        self.steps_stuck = Gauge(
            "jobstream_durable_steps_stuck",
            "Durable steps retrying in place past their deadline now (the replica is degraded)",
            ["step"],
            registry=r,
        )
        self.step_outages = Counter(
            "jobstream_durable_step_outages_total",
            "Times a durable step ran past its deadline (an outage began)",
            ["step"],
            registry=r,
        )
        self.unroutable = Counter(
            "jobstream_unroutable_total",
            "Records whose every route failed (logged and acknowledged; should stay 0)",
            registry=r,
        )
        # lag, measured by each replica for the partitions it owns (streams/worker/lag.py); the
        # group label is the replica's JOBSTREAM_GROUP_ID, so no rule needs to know it
        self.consumer_lag = Gauge(
            "jobstream_consumer_lag_events",
            "Log-end offset minus the group's committed offset, per owned partition",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.consumer_lag_seconds = Gauge(
            "jobstream_consumer_lag_seconds",
            "Age of the oldest unfinished event, per owned partition (0 when caught up)",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.retry_waiting = Gauge(
            "jobstream_retry_waiting_events",
            "Events in a retry tier not yet republished, per owned tier partition",
            ["group", "tier", "partition"],
            registry=r,
        )
        self.retry_oldest_seconds = Gauge(
            "jobstream_retry_oldest_seconds",
            "Age of the oldest event a retry tier holds, per owned tier partition",
            ["group", "tier", "partition"],
            registry=r,
        )
        self.retry_tier_delay = Gauge(
            "jobstream_retry_tier_delay_seconds",
            "The configured delay of each retry tier",
            ["group", "tier"],
            registry=r,
        )
        self.lag_sample_errors = Counter(
            "jobstream_lag_sample_errors_total",
            "Lag samples that failed (broker unreachable, rebalance in progress)",
            registry=r,
        )
        # retention of finished rows (streams/pg/retention.py)
        self.retention_pruned = Counter(
            "jobstream_retention_pruned_rows_total",
            "Finished job rows deleted by retention, by status",
            ["status"],
            registry=r,
        )
        self.retention_sweeps = Counter(
            "jobstream_retention_sweeps_total",
            "Retention sweeps: done, skipped (another replica was sweeping), failed",
            ["result"],
            registry=r,
        )
        self.jobs_table_rows = Gauge(
            "jobstream_jobs_table_rows",
            "Rows in the jobs table (PostgreSQL's estimate)",
            registry=r,
        )
        self.jobs_table_bytes = Gauge(
            "jobstream_jobs_table_bytes",
            "Size of the jobs table with its indexes and TOAST (pg_total_relation_size)",
            registry=r,
        )
        # timed jobs (streams/worker/dispatcher.py)
        self.scheduled_due = Gauge(
            "jobstream_scheduled_due_jobs",
            "Scheduled jobs past their time and not yet claimed (sampled by every replica)",
            registry=r,
        )
        self.scheduled_oldest_due = Gauge(
            "jobstream_scheduled_oldest_due_seconds",
            "How far past its time the oldest scheduled job not yet claimed is",
            registry=r,
        )
        self.dispatch_lateness = Histogram(
            "jobstream_dispatch_lateness_seconds",
            "Time from a scheduled job's run_at to its publish by the dispatcher",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
            registry=r,
        )
        self.dispatched = Counter(
            "jobstream_dispatched_total",
            "Scheduled jobs the dispatcher published to the main topic",
            registry=r,
        )
        self.schedule_ticks = Counter(
            "jobstream_schedule_ticks_total",
            "Jobs published for recurring schedules' ticks",
            registry=r,
        )
        self.schedules_behind = Gauge(
            "jobstream_schedules_behind",
            "Unpaused schedules whose next tick is more than a minute late",
            registry=r,
        )
        self.dispatcher_leader = Gauge(
            "jobstream_dispatcher_leader",
            "1 on the replica that holds the dispatcher's lease",
            registry=r,
        )
        self.records_skipped = Counter(
            "jobstream_records_skipped_total",
            "Records a previous owner of their partition had finished (its commit said so),"
            " acked without running again after a rebalance",
            registry=r,
        )
        self._by_type: dict[str, TypeMetrics] = {}

    def for_type(self, job_type: str) -> TypeMetrics:
        """``job_type`` is a registered type's name or ``unknown``: the set stays small."""
        found = self._by_type.get(job_type)
        if found is None:
            found = self._by_type[job_type] = TypeMetrics(
                job_type=job_type,
                received=self.jobs_received.labels(type=job_type),
                handler_duration=self.handler_duration.labels(type=job_type),
                latency=self.job_latency.labels(type=job_type),
                jobs_completed=self.jobs_completed,
                _completed={},
            )
        return found
