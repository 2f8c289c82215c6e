"""The benchmark's faust yardstick: what faust alone costs per event on this machine.

jobstream runs on faust, so a replica can never consume faster than a bare faust agent that
does nothing with its events. This process is that agent: faust's own ``kafka://`` transport,
raw key and value serializers, one agent at concurrency 1 over the same 8-partition topic of
echo job events, iterating ``stream.events()`` and only counting (nothing is decoded, nothing
produced). faust still acks each event and commits the offsets on its commit interval.

It has no output topic the benchmark could time, so it reports completion itself. The
benchmark passes the sizes of the batches it will publish (``--expect 100,2000``: the warm-up,
then the timed part) and this process prints one line per batch when it has counted that
batch's last event::

    bench-count {"batch": 1, "events": 2000, "first_at": <epoch s>, "last_at": <epoch s>}

with the wall-clock time of the batch's first and last event. Counting is robust here because
every run has its own topic and its own consumer group (one member, assigned before anything is
published), so nothing is read twice and nothing else is read; the benchmark times the batch
from its first publish to ``last_at``, the same clock as its other scenarios.

Everything is left at faust's defaults, including its aiokafka driver's
``fetch_max_wait_ms=1500``: about once per run, when the publisher stops, a fetch in flight for
partitions with no new data holds back records already on the others for ~1.2 s (with 100 ms
the stall was gone). jobstream's transport derives from the same driver, so both sides of the
``vs faust`` ratio pay it; the benchmark's large N keeps it a small part of the figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

MARKER = "bench-count "


class BatchCounter:
    """Counts events into consecutive batches of the given sizes; :meth:`seen` returns a
    batch's report when its last event arrives."""

    def __init__(self, sizes: Sequence[int]) -> None:
        if not sizes or any(n < 1 for n in sizes):
            raise ValueError(f"batch sizes must be positive: {list(sizes)}")
        self.sizes = list(sizes)
        self.batch = 0
        self.count = 0
        self.first_at: float | None = None

    def seen(self, now: float) -> dict[str, Any] | None:
        if self.batch >= len(self.sizes):
            return None  # past every batch the benchmark announced: not part of a measurement
        if self.count == 0:
            self.first_at = now
        self.count += 1
        if self.count < self.sizes[self.batch]:
            return None
        report = {
            "batch": self.batch,
            "events": self.count,
            "first_at": self.first_at,
            "last_at": now,
        }
        self.batch += 1
        self.count = 0
        return report


def format_report(report: dict[str, Any]) -> str:
    return MARKER + json.dumps(report)


def read_report(log_text: str, batch: int) -> dict[str, Any] | None:
    """The report of ``batch`` in this process's output, if it has been printed."""
    for line in log_text.splitlines():
        _, marker, rest = line.partition(MARKER)  # at the start, or after a logging prefix
        if not marker:
            continue
        try:
            doc = json.loads(rest)
        except ValueError:
            continue  # a line cut short by a concurrent read: it is whole on the next read
        if isinstance(doc, dict) and doc.get("batch") == batch:
            return doc
    return None


def parse_sizes(text: str) -> list[int]:
    """``--expect``: comma-separated positive batch sizes."""
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or any(n < 1 for n in sizes):
        raise ValueError(f"batch sizes must be positive integers: {text!r}")
    return sizes


def run(bootstrap: str, topic_name: str, group: str, sizes: Sequence[int]) -> None:
    with tempfile.TemporaryDirectory(prefix=f"{group}-faust-") as datadir:
        _run(bootstrap, topic_name, group, sizes, datadir)


def _run(bootstrap: str, topic_name: str, group: str, sizes: Sequence[int], datadir: str) -> None:
    import faust

    from jobstream.streams.kafka.security import broker_credentials
    from jobstream.streams.settings import Settings

    counter = BatchCounter(sizes)
    app = faust.App(
        group,
        broker=f"kafka://{bootstrap}",
        broker_credentials=broker_credentials(Settings()),  # TLS/SASL like a worker's
        store="memory://",
        datadir=datadir,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
    )
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")

    @app.agent(topic, concurrency=1)
    async def count(stream: Any) -> None:
        async for _event in stream.events():
            report = counter.seen(time.time())
            if report is not None:
                print(format_report(report), flush=True)

    # print() goes to stdout as it is, not through faust's logging as a warning
    worker = faust.Worker(app, loglevel="INFO", redirect_stdouts=False)
    worker.execute_from_commandline()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobstream.streams.dev.bench.faust_baseline",
        description="Bare faust agent that only counts events (the benchmark's faust baseline).",
    )
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True, help="also the faust app id: fresh per run")
    p.add_argument("--expect", type=parse_sizes, required=True, help="comma-separated batch sizes")
    args = p.parse_args(argv)
    run(args.bootstrap, args.topic, args.group, args.expect)
    return 0


if __name__ == "__main__":
    sys.exit(main())
