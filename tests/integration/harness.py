"""Worker processes, topic readers and database waits for the integration tests.

Workers run as real processes (``python -m streams.cli worker``) so tests can SIGKILL and
SIGTERM them. Every wait polls a condition with a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(
    check: Callable[[], Awaitable[T]], *, timeout: float, interval: float = 0.2, what: str = ""
) -> T:
    """Poll ``check`` until it returns a truthy value; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: last={last!r}")


@dataclass
class WorkerProcess:
    name: str
    env: dict[str, str]
    log_path: Path
    web_port: int
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = None

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    async def wait_ready(self, timeout: float = 60) -> None:
        import aiohttp

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited early:\n{self.tail()}")
            try:
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(f"http://127.0.0.1:{self.web_port}/ready") as r,
                ):
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(ready, timeout=timeout, what=f"worker {self.name} ready")

    async def wait_assigned(self, timeout: float = 60) -> None:
        """Ready and holding partitions: faust logs this once the group has settled."""
        await self.wait_ready(timeout)

        async def assigned() -> bool:
            return "Worker ready" in self.log_text()

        await wait_for(assigned, timeout=timeout, what=f"worker {self.name} assigned")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self._log is not None:
            self._log.close()

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
        return code


@dataclass
class WorkerFactory:
    """Builds worker processes sharing one prefix/group; kills leftovers at teardown."""

    bootstrap: str
    dsn: str
    prefix: str
    tmp: Path
    base_env: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)

    def env(
        self, name: str, web_port: int, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSTREAM_")}
        env.update(
            {
                "JOBSTREAM_KAFKA_BOOTSTRAP": self.bootstrap,
                "JOBSTREAM_DATABASE_URL": self.dsn,
                "JOBSTREAM_TOPIC_PREFIX": self.prefix,
                "JOBSTREAM_GROUP_ID": self.prefix,
                "JOBSTREAM_WORKER_NAME": name,
                "JOBSTREAM_WEB_PORT": str(web_port),
                "JOBSTREAM_STATE_DIR": str(self.tmp / "state"),
                "JOBSTREAM_PARTITIONS": "4",
                "JOBSTREAM_RETRY_TIERS_S": "[1, 2, 3]",
                "JOBSTREAM_COMMIT_INTERVAL_S": "0.5",
                "JOBSTREAM_SESSION_TIMEOUT_S": "10",
                "JOBSTREAM_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.base_env)
        env.update(extra or {})
        return env

    def start(self, name: str | None = None, **extra: str) -> WorkerProcess:
        name = name or f"w{len(self.workers) + 1}"
        port = free_port()
        worker = WorkerProcess(
            name=name,
            env=self.env(name, port, extra),
            log_path=self.tmp / f"{name}-{len(self.workers)}.log",
            web_port=port,
        ).start()
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for w in self.workers:
            w.kill()


class TopicReader:
    """Reads a topic from the beginning without a group (so it never joins the workers')."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.records: list[Any] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> TopicReader:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None
        )
        await self._consumer.start()
        parts = await wait_for(self._partitions, timeout=30, what=f"partitions of {self.topic}")
        tps = [TopicPartition(self.topic, p) for p in parts]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        return self

    async def _partitions(self) -> set[int] | None:
        assert self._consumer is not None
        await self._consumer._client.force_metadata_update()  # the topic may be new
        return self._consumer.partitions_for_topic(self.topic)

    async def poll(self) -> list[Any]:
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=200)
        for records in batch.values():
            self.records.extend(records)
        return self.records

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in self.records]

    async def wait_count(self, n: int, timeout: float = 60) -> list[Any]:
        async def enough() -> bool:
            return len(await self.poll()) >= n

        await wait_for(enough, timeout=timeout, interval=0, what=f"{n} records on {self.topic}")
        return self.records

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


@contextlib.asynccontextmanager
async def topic_reader(bootstrap: str, topic: str) -> Any:
    reader = await TopicReader(bootstrap, topic).start()
    try:
        yield reader
    finally:
        await reader.stop()


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


def kill_all(workers: Iterator[WorkerProcess]) -> None:
    for w in workers:
        with contextlib.suppress(Exception):
            w.signal(signal.SIGKILL)
