"""Retry tiers: hold each event until it is due, then put it back on the main topic.

One agent per tier topic, so a 10-minute tier never delays a 10-second one, and none of them
touches the main topic's partitions. Holding an event is an ``asyncio.sleep`` inside the agent:
faust's fetcher thread keeps polling (a full stream buffer pauses only that partition), so a long
hold does not trip ``max.poll.interval.ms`` nor the session timeout. The offset is acked only
after the republish is durable. A record that cannot be passed on ends in the lifecycle's
machine, as a dead letter.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from jobstream.agents.decode import decode_event
from jobstream.agents.fitting import wire
from jobstream.agents.intake import source, undecodable
from jobstream.agents.machine import Machine
from jobstream.agents.ports import RecordPublisher
from jobstream.agents.states import Outcome, Unrunnable
from jobstream.models.deadletter import DeadLetterReason
from jobstream.models.errors import InvalidJobError
from jobstream.streams.failures import RecordTooLargeError
from jobstream.streams.kafka.record import Record
from jobstream.streams.topics import RetryTier

REPUBLISHED = "republished"


class RetryForwarder:
    def __init__(self, machine: Machine, publisher: RecordPublisher) -> None:
        self.machine = machine
        self.publisher = publisher

    async def handle(self, rec: Record, tier: RetryTier) -> Outcome | str:
        """``republished``, or how the record ended when it could not be passed on."""
        m = self.machine
        max_bytes = m.settings.max_event_bytes
        try:
            job = decode_event(rec.value, max_bytes=max_bytes)
        except InvalidJobError as exc:
            return await m.end(undecodable(rec, exc, max_event_bytes=max_bytes), rec)
        if job.not_before is not None:
            wait = (job.not_before - datetime.now(UTC)).total_seconds()
            if wait > 0:
                await asyncio.sleep(wait)
        due = job.model_copy(update={"not_before": None})
        try:
            await m.steps.run(
                "republish",
                lambda: self.publisher.send_and_wait(
                    m.topics.main, wire(due), key=rec.key, headers=rec.headers
                ),
            )
        except asyncio.CancelledError:
            raise
        except RecordTooLargeError as exc:  # the main topic's limit is below the tier's
            failed = Unrunnable(
                source(rec, job, known=job.type in m.registry.names()),
                exc,
                DeadLetterReason.UNPUBLISHABLE,
                redelivered_reemits=False,
            )
            return await m.end(failed, rec)
        except Exception as exc:  # noqa: BLE001 - not transient (DurableSteps retried those): never crash
            failed = Unrunnable(
                source(rec, job, known=job.type in m.registry.names()),
                exc,
                DeadLetterReason.INTERNAL_ERROR,
                redelivered_reemits=False,
            )
            return await m.end(failed, rec)
        m.metrics.retry_republished.labels(tier=tier.label).inc()
        return REPUBLISHED
