"""Worker processes, topic readers and database waits for the integration tests.

Workers run as real processes (``python -m jobstream worker``) so tests can SIGKILL and
SIGTERM them. Every wait polls a condition with a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from jobstream.streams.dev.replicas import Replica, free_port, replica_env
from jobstream.streams.kafka.reader import TopicReader as Reader
from jobstream.streams.kafka.reader import partitions_of
from jobstream.streams.polling import wait_until
from jobstream.streams.topics import topic_names

ROOT = Path(__file__).resolve().parents[2]
TIERS_S = (1.0, 2.0, 3.0)
"""The retry tiers of the harness's workers: short, so tests of retries end quickly."""
T = TypeVar("T")


async def wait_for(
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str = "",
) -> T:
    """Poll ``check`` until it returns a truthy value
    (:func:`jobstream.streams.polling.wait_until`); the deadline fails the test with ``what``."""
    return await wait_until(
        check, within_s=timeout, interval_s=interval, what=what, error=AssertionError
    )


class WorkerProcess(Replica):
    """A replica with the names the tests use."""

    async def wait_assigned(self, timeout: float = 90) -> None:
        await self.wait_ready(timeout)

    def signal(self, sig: signal.Signals) -> None:
        self.send(sig)

    def wait(self, timeout: float = 60) -> int:
        return super().wait(timeout)

    async def metric(self, name: str) -> float | None:
        """The sum of the samples of ``name`` on ``/metrics`` (None: not exported, or no
        answer)."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
                http.get(f"http://127.0.0.1:{self.web_port}/metrics") as resp,
            ):
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        values = [
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        ]
        return sum(values) if values else None


@dataclass
class WorkerFactory:
    """Builds worker processes sharing one prefix/group; kills leftovers at teardown."""

    bootstrap: str
    dsn: str
    prefix: str
    tmp: Path
    base_env: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)

    def start(self, name: str | None = None, **extra: str) -> WorkerProcess:
        name = name or f"w{len(self.workers) + 1}"
        port = free_port()
        settings = {
            "JOBSTREAM_TOPIC_PREFIX": self.prefix,
            "JOBSTREAM_GROUP_ID": self.prefix,
            "JOBSTREAM_STATE_DIR": str(self.tmp / "state"),
            "JOBSTREAM_PARTITIONS": "4",
            "JOBSTREAM_RETRY_TIERS_S": json.dumps(TIERS_S),
            "JOBSTREAM_COMMIT_INTERVAL_S": "0.5",
            "JOBSTREAM_SESSION_TIMEOUT_S": "10",
            # tests share one database: a worker's retention sweep would prune other tests'
            # deliberately old rows; the tests of retention switch it on
            "JOBSTREAM_RETENTION_ENABLED": "false",
            **self.base_env,
            **extra,
        }
        worker = WorkerProcess(
            name=name,
            env=replica_env(
                bootstrap=self.bootstrap, dsn=self.dsn, name=name, web_port=port, extra=settings
            ),
            log_path=self.tmp / f"{name}-{len(self.workers)}.log",
            web_port=port,
            cwd=ROOT,
        )
        worker.start()
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for w in self.workers:
            w.kill()

    async def cli(self, *args: str) -> tuple[int, str]:
        """``jobstream <args>`` against this factory's Kafka, PostgreSQL and prefix."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSTREAM_")}
        env |= {
            "JOBSTREAM_KAFKA_BOOTSTRAP": self.bootstrap,
            "JOBSTREAM_DATABASE_URL": self.dsn,
            "JOBSTREAM_TOPIC_PREFIX": self.prefix,
        }
        return await run_cli(*args, env=env)


class TopicReader(Reader):
    """Reads a topic from the beginning without a group, keeping every record read."""

    def __init__(
        self, bootstrap: str, topic: str, options: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(bootstrap, topic, options)
        self.records: list[Any] = []

    async def poll(self) -> list[Any]:
        self.records.extend(await self.read())
        return self.records

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in self.records]

    async def wait_count(self, n: int, timeout: float = 60) -> list[Any]:
        async def enough() -> bool:
            return len(await self.poll()) >= n

        await wait_for(enough, timeout=timeout, interval=0, what=f"{n} records on {self.topic}")
        return self.records

    async def caught_up(self, timeout: float = 60) -> list[Any]:
        """Every record written before this call has been read."""
        ends = await self.end_offsets()

        async def there() -> bool:
            await self.poll()
            return all([await self.consumer.position(tp) >= end for tp, end in ends.items()])

        await wait_for(there, timeout=timeout, interval=0, what=f"the end of {self.topic}")
        return self.records


def topic_reader(bootstrap: str, topic: str) -> TopicReader:
    """``async with topic_reader(bootstrap, topic) as reader``."""
    return TopicReader(bootstrap, topic)


async def lag_by_partition(
    bootstrap: str, group: str, topics: list[str]
) -> dict[TopicPartition, int]:
    """Consumer-group lag (end offset - committed) of every partition of ``topics`` that
    exists."""
    parts = await partitions_of(bootstrap, topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        tps = [TopicPartition(t, p) for t, ps in parts.items() for p in ps]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
        await admin.close()
    lag = {}
    for tp, end in ends.items():
        meta = committed.get(tp)
        lag[tp] = end - (meta.offset if meta is not None and meta.offset >= 0 else 0)
    return lag


async def quiescent(bootstrap: str, group: str, topics: list[str]) -> dict[str, int]:
    """Consumer-group lag per topic; all zero once nothing is left."""
    lag: Counter[str] = Counter({t: 0 for t in topics})
    for tp, n in (await lag_by_partition(bootstrap, group, topics)).items():
        lag[tp.topic] += n
    return dict(lag)


async def settled(
    bootstrap: str, prefix: str, readers: list[TopicReader], timeout: float = 60
) -> None:
    """Nothing more will come of what was sent: the group ``prefix`` has committed every topic
    its workers read (the main topic and the harness's retry tiers), and each reader has read
    its topic to the end."""
    names = topic_names(prefix, TIERS_S)
    consumed = [names.main, *(t.topic for t in names.tiers)]

    async def no_lag() -> dict[str, int] | None:
        lag = await quiescent(bootstrap, prefix, consumed)
        return None if any(lag.values()) else lag

    await wait_for(no_lag, timeout=timeout, interval=0.5, what=f"zero consumer lag of {prefix}")
    for reader in readers:
        await reader.caught_up(timeout)


async def count_rows(pool: asyncpg.Pool, job_ids: list[str], status: str | None = None) -> int:
    if status is None:
        q = "SELECT count(*) FROM jobs WHERE job_id = ANY($1::text[])"
        return int(await pool.fetchval(q, job_ids))
    q = "SELECT count(*) FROM jobs WHERE job_id = ANY($1::text[]) AND status = $2"
    return int(await pool.fetchval(q, job_ids, status))


async def wait_terminal(pool: asyncpg.Pool, job_ids: list[str], timeout: float = 120) -> None:
    async def done() -> bool:
        q = (
            "SELECT count(*) FROM jobs WHERE job_id = ANY($1::text[])"
            " AND status IN ('succeeded', 'dead_lettered')"
        )
        return int(await pool.fetchval(q, job_ids)) >= len(job_ids)

    await wait_for(done, timeout=timeout, interval=0.3, what=f"{len(job_ids)} terminal rows")


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """``jobstream <args>`` as a process; returns its exit code and combined output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jobstream", *args,
        cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()
