"""Durable steps: a row write or a publish that must succeed before a record is acknowledged.

A step is retried in place only while its error may pass by itself (``streams.failures``); any
other error is raised at once, for the pipeline to route the record. Each try has a timeout,
because some failures never raise: an idempotent publish that Kafka cannot acknowledge (too few
in-sync replicas) waits forever. A step that keeps failing past its deadline is an outage: it
is reported once when it starts and once when it ends (log, metric, Sentry), and while any step
is stuck the replica reports itself degraded on ``/ready``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from jobstream.agents.policy import compute_backoff
from jobstream.streams import observability
from jobstream.streams.failures import describe, is_transient
from jobstream.streams.metrics import Metrics
from jobstream.streams.pg.pool import heal_pooler

log = logging.getLogger(__name__)
T = TypeVar("T")


class DurableSteps:
    def __init__(self, *, metrics: Metrics, attempt_timeout_s: float, deadline_s: float) -> None:
        self.metrics = metrics
        self.attempt_timeout_s = attempt_timeout_s
        self.deadline_s = deadline_s
        self._stuck: dict[str, int] = {}
        self._since: dict[str, float] = {}

    def stuck(self) -> dict[str, float]:
        """Steps past their deadline now, with how long the oldest of each has been retrying."""
        now = time.monotonic()
        return {step: now - self._since[step] for step in self._stuck}

    async def run(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        started = time.monotonic()
        failures = 0
        overdue = False
        try:
            while True:
                try:
                    async with asyncio.timeout(self.attempt_timeout_s):
                        return await step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # classified right below: only transient is retried
                    if not is_transient(exc):
                        raise
                    await heal_pooler(exc)  # a pooler not configured as one: heals for the retry
                    failures += 1
                    self.metrics.step_retries.labels(step=what).inc()
                    elapsed = time.monotonic() - started
                    if not overdue and elapsed >= self.deadline_s:
                        overdue = True
                        self._enter(what, exc, elapsed)
                    elif failures == 1:
                        log.info("%s step failed, retrying in place: %s", what, describe(exc))
                await asyncio.sleep(compute_backoff(failures, base_s=0.1, max_s=5.0, jitter=0.2))
        finally:
            if overdue:
                self._leave(what, time.monotonic() - started)

    def _enter(self, what: str, exc: BaseException, elapsed: float) -> None:
        count = self._stuck.get(what, 0) + 1
        self._stuck[what] = count
        self.metrics.steps_stuck.labels(step=what).set(count)
        if count == 1:
            self._since[what] = time.monotonic() - elapsed
            self.metrics.step_outages.labels(step=what).inc()
            observability.report_outage_started(what, exc, elapsed)
            log.warning(
                "%s step failing for %.0fs (deadline %.0fs), still retrying: %s",
                what, elapsed, self.deadline_s, describe(exc),
            )  # fmt: skip

    def _leave(self, what: str, elapsed: float) -> None:
        count = self._stuck.get(what, 1) - 1
        self.metrics.steps_stuck.labels(step=what).set(count)
        if count > 0:
            self._stuck[what] = count
            return
        self._stuck.pop(what, None)
        since = self._since.pop(what, time.monotonic() - elapsed)
        outage = time.monotonic() - since
        observability.report_outage_ended(what, outage)
        log.warning("%s step recovered after %.0fs", what, outage)
