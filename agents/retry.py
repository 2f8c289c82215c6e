"""Retry tiers: hold each event until it is due, then put it back on the main topic.

One agent per tier topic, so a 10-minute tier never delays a 10-second one, and none of them
touches the main topic's partitions. Holding an event is an ``asyncio.sleep`` inside the agent:
faust's fetcher thread keeps polling (a full stream buffer pauses only that partition), so a long
hold does not trip ``max.poll.interval.ms`` nor the session timeout. The offset is acked only
after the republish is durable.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from jobstream.agents.decode import decode_event
from jobstream.agents.fitting import wire
from jobstream.agents.pipeline import Pipeline
from jobstream.models.deadletter import DeadLetterReason
from jobstream.models.errors import InvalidJobError
from jobstream.streams.failures import RecordTooLargeError
from jobstream.streams.kafka.record import Record
from jobstream.streams.topics import RetryTier


class RetryForwarder:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def handle(self, rec: Record, tier: RetryTier) -> str:
        p = self.pipeline
        try:
            job = decode_event(rec.value, max_bytes=p.settings.max_event_bytes)
        except InvalidJobError as exc:
            return await p.dead_letter_input(rec, exc)
        if job.not_before is not None:
            wait = (job.not_before - datetime.now(UTC)).total_seconds()
            if wait > 0:
                await asyncio.sleep(wait)
        due = job.model_copy(update={"not_before": None})
        try:
            await p.durably(
                "republish",
                lambda: p.publisher.send_and_wait(
                    p.topics.main, wire(due), key=rec.key, headers=rec.headers
                ),
            )
        except asyncio.CancelledError:
            raise
        except RecordTooLargeError as exc:  # the main topic's limit is below the tier's
            return await p.fail_record(rec, exc, DeadLetterReason.UNPUBLISHABLE, job)
        except Exception as exc:  # noqa: BLE001 - not transient (DurableSteps retried those): never crash
            return await p.fail_record(rec, exc, DeadLetterReason.INTERNAL_ERROR, job)
        p.metrics.retry_republished.labels(tier=tier.label).inc()
        return "republished"
