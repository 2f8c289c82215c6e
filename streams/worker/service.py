"""``jobstream worker``: one consumer-group replica.

The faust Worker owns process signals. SIGTERM/SIGINT first drain (stop taking events, let
in-flight jobs finish within ``shutdown_grace_s``, commit what finished), then hand over to
faust's stop, which cancels what is left: those offsets stay uncommitted and the next owner
runs them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import faust
from faust.types import TP

from jobstream.agents.topology import register_agents
from jobstream.streams.kafka.security import client_options
from jobstream.streams.observability import init_sentry, quiet_protocol_loggers
from jobstream.streams.settings import Settings
from jobstream.streams.worker.app import create_app
from jobstream.streams.worker.consumer import SafeOffsetConsumer
from jobstream.streams.worker.lag import LagMonitor
from jobstream.streams.worker.runtime import Runtime

log = logging.getLogger(__name__)


class JobstreamWorker(faust.Worker):
    def __init__(self, app: faust.App, runtime: Runtime, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.runtime = runtime
        self.lag_monitor: LagMonitor | None = None

    async def on_first_start(self) -> None:
        await self.runtime.start()
        rt = self.runtime
        consumer = self.app.consumer
        if isinstance(consumer, SafeOffsetConsumer):
            rt.finished_elsewhere = lambda topic, partition, offset: consumer.already_done(
                TP(topic, partition), offset
            )
        self.lag_monitor = LagMonitor(
            bootstrap=rt.bootstrap,
            group=rt.settings.group_id,
            topics=rt.topics,
            metrics=rt.metrics,
            assignment=lambda: self.app.consumer.assignment(),
            in_flight=rt.in_flight_records,
            interval_s=rt.settings.lag_sample_interval_s,
            options=client_options(rt.settings),
        )
        await self.lag_monitor.start()
        await super().on_first_start()

    async def _stop_on_signal(self, sig: signal.Signals) -> None:
        grace = self.runtime.settings.shutdown_grace_s
        log.info("%s received: draining (grace %.0fs)", sig.name, grace)
        await self.runtime.drain(grace)
        await asyncio.sleep(0.05)  # let the agents that just finished ack their events
        await super()._stop_on_signal(sig)

    async def on_stop(self) -> None:
        """Runs before faust stops its services: the last commit happens here, then no more.

        Agents still holding events are cancelled after this, and faust acks cancelled events;
        with commits frozen those offsets stay uncommitted and the next owner runs them.
        """
        consumer = self.app.consumer
        try:
            await consumer.commit()
        except Exception:  # the group may be rebalancing; the work is redone, not lost
            log.exception("final commit failed")
        if isinstance(consumer, SafeOffsetConsumer):
            consumer.freeze_commits()
        await super().on_stop()

    async def on_shutdown(self) -> None:
        # after faust's services (and so every agent) have stopped
        await super().on_shutdown()
        if self.lag_monitor is not None:
            await self.lag_monitor.stop()
        await self.runtime.stop()


def run_worker(settings: Settings, bootstrap: str, dsn: str) -> None:
    init_sentry(settings)
    quiet_protocol_loggers()
    app = create_app(settings, bootstrap)
    runtime = Runtime(settings, bootstrap=bootstrap, dsn=dsn)
    register_agents(app, runtime)
    worker = JobstreamWorker(
        app, runtime, loglevel=settings.log_level, quiet=True, redirect_stdouts=False
    )
    worker.execute_from_commandline()
