"""The worker's side of the tests: its settings, and the JobClient the fan-out publishes with."""

from __future__ import annotations

import asyncio
from typing import Any

from acme_jobs.jobs import app
from aiokafka.errors import KafkaTimeoutError

from jobstream import JobClient, Settings
from jobstream.models.job import JobEvent

RECEIVERS = ("/crm", "/billing", "/legacy")
"""The paths of the receivers subscribed to ``order.paid``, in that order."""


def settings(*allow_hosts: str) -> Settings:
    """A worker's settings with jobstream's default retry tiers (10 s, 1 min, 10 min: they
    pass in virtual time), whatever JOBSTREAM_* the shell has."""
    return Settings(
        worker_name="acme-tests",
        retry_tiers_s=(10.0, 60.0, 600.0),
        max_attempts=5,
        policy_file=None,
        rate_limits={},
        webhook_allow_hosts=allow_hosts,
    )


class RecordingClient(JobClient):
    """A real :class:`~jobstream.JobClient` (every job it builds is checked as in production)
    whose records stay in memory instead of going to Kafka."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1:9", app=app)  # never started: nothing reaches a broker
        self.sent: list[JobEvent] = []
        self._fail_after: int | None = None

    def fail_after(self, n: int) -> None:
        """Let ``n`` more records through, then fail the next one as aiokafka does when no
        broker acknowledges it."""
        self._fail_after = n

    async def publish(self, event: JobEvent) -> asyncio.Future[Any]:
        if self._fail_after is not None:
            if self._fail_after == 0:
                self._fail_after = None
                raise KafkaTimeoutError()
            self._fail_after -= 1
        self.sent.append(event)
        acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        return acked
