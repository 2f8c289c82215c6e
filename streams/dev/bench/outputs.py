"""Reading what the measured consumers produced: the outcome records of jobstream's replicas
and the output records of the aiokafka baseline, each job's first record kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from jobstream.streams.dev.bench.report import Done
from jobstream.streams.kafka.reader import TopicReader
from jobstream.streams.output import Progress
from jobstream.streams.polling import wait_until

OutputParser = Callable[[Any], tuple[str, Done] | None]


def parse_outcome(record: Any) -> tuple[str, Done] | None:
    """A :class:`JobOutcome` record; plain ``json`` because pydantic would cost the benchmark
    process more CPU than the workers it measures, on a 2-core machine."""
    doc = json.loads(record.value)
    finished = doc.get("finished_at")
    return doc["job_id"], Done(
        at=record.timestamp / 1000,
        status=str(doc.get("status")),
        finished_at=datetime.fromisoformat(finished).timestamp() if finished else None,
        handler_ms=doc.get("duration_ms"),
        reemitted=bool(doc.get("reemitted")),
    )


def parse_baseline(record: Any) -> tuple[str, Done] | None:
    doc = json.loads(record.value)
    return doc["job_id"], Done(
        at=record.timestamp / 1000, status=doc["status"], finished_at=doc.get("finished_at")
    )


class OutputCollector:
    """Reads an output topic from the beginning, outside any group (so it never joins the
    group being measured), and keeps the first record per job id: a later one is a duplicate
    delivery (counted), and the first is when the job's result became durable."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        parse: OutputParser,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.options = dict(options or {})  # TLS/SASL (kafka_security.client_options)
        self.topic = topic
        self.parse = parse
        self.done: dict[str, Done] = {}
        self.duplicates = 0
        self.unparsable = 0
        self._reader = TopicReader(bootstrap, topic, self.options)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> OutputCollector:
        await self._reader.start()
        self._task = asyncio.create_task(self._run(), name=f"collect-{self.topic}")
        return self

    async def _run(self) -> None:
        while True:
            for rec in await self._reader.read(max_records=20_000):
                try:
                    parsed = self.parse(rec)
                except (ValueError, KeyError, TypeError):
                    self.unparsable += 1
                    continue
                if parsed is None:
                    continue
                job_id, done = parsed
                if job_id in self.done:
                    self.duplicates += 1
                else:
                    self.done[job_id] = done

    async def wait_all(
        self, ids: Sequence[str], *, within_s: float, progress: Progress | None = None
    ) -> None:
        wanted = set(ids)

        async def all_in() -> bool:
            nonlocal wanted
            if self._task is not None and self._task.done():
                self._task.result()  # the reader died: say why
            wanted = {i for i in wanted if i not in self.done}
            if progress is not None:
                progress.update(len(ids) - len(wanted))
            return not wanted

        try:
            await wait_until(all_in, within_s=within_s, interval_s=0.05, what="the outputs")
        except TimeoutError:
            raise TimeoutError(
                f"timed out after {within_s:g}s: {len(ids) - len(wanted)}/{len(ids)} outputs"
            ) from None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._reader.stop()
