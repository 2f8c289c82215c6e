"""The benchmark's yardstick: the least a Kafka consume-and-produce service can do per job.

A jobstream replica's throughput only means something next to what Kafka plumbing alone costs
on the same machine. This loop is that plumbing and nothing else: a consumer-group member reads
job events, decodes each one (a job runner must at least find the job id), produces one output
record per input with the same producer settings as jobstream's :class:`Publisher`, waits until
the batch is durable and only then commits its offsets, so it keeps jobstream's at-least-once
contract. There is no PostgreSQL, no handler, no faust.

It runs as its own process (``python -m jobstream.streams.dev.bench.baseline``), like a
worker replica, so the benchmark process that publishes and reads the outputs competes with it
the same way. It prints ``assigned N partitions`` once the group has given it work and exits 0
on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from jobstream.streams.kafka.publisher import Publisher
from jobstream.streams.kafka.security import client_options
from jobstream.streams.settings import Settings


class _Announce(ConsumerRebalanceListener):  # type: ignore[misc]
    """The benchmark waits for this line before publishing, so no job waits on a rebalance."""

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        print(f"assigned {len(assigned)} partitions", flush=True)


def output_for(value: bytes | None) -> bytes:
    """The output record: enough for the benchmark to match it to its job and time it."""
    doc = json.loads(value or b"{}")
    return json.dumps(
        {
            "job_id": doc.get("id"),
            "type": doc.get("type"),
            "status": "succeeded",
            "finished_at": time.time(),
        }
    ).encode()


async def run(bootstrap: str, in_topic: str, out_topic: str, group: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    options = client_options(Settings())  # TLS/SASL from the same JOBSTREAM_* as a worker
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id=f"{group}-baseline",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **options,
    )
    consumer.subscribe([in_topic], listener=_Announce())
    publisher = Publisher(bootstrap, client_id=f"{group}-baseline", options=options)
    await consumer.start()
    await publisher.start()
    processed = 0
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            if not batch:
                continue
            futures = []
            for records in batch.values():
                for rec in records:
                    futures.append(
                        await publisher.send(out_topic, output_for(rec.value), key=rec.key)
                    )
            await asyncio.gather(*futures)
            await consumer.commit()  # the positions of everything just produced
            processed += len(futures)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await consumer.stop()
        await publisher.stop()
    print(f"stopped after {processed} records", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobstream.streams.dev.bench.baseline",
        description="Bare aiokafka consume-produce-commit loop (the benchmark's baseline).",
    )
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--in-topic", required=True)
    p.add_argument("--out-topic", required=True)
    p.add_argument("--group", required=True)
    args = p.parse_args(argv)
    return asyncio.run(run(args.bootstrap, args.in_topic, args.out_topic, args.group))


if __name__ == "__main__":
    sys.exit(main())
