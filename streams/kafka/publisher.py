"""The project's Kafka plumbing outside faust: an idempotent publisher and topic creation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import RecordMetadata

from jobstream.streams.failures import ProducerResetError, RecordTooLargeError

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]


class Publisher:
    """An idempotent, batching producer (acks=all) that never lets one record poison it.

    ``send`` returns once the record is queued; the returned future resolves when it is
    durable. Callers gather those futures instead of awaiting each send in turn, which lets
    the producer fill batches.

    Size: every record is checked against the limit of its topic (``max.message.bytes``, read
    from the broker by :meth:`load_limits`) before aiokafka sees it, so an oversized record
    raises :class:`RecordTooLargeError` without taking a sequence number. A broker that refuses a
    batch anyway (a limit lowered after start) leaves aiokafka's idempotent sender with a sequence
    gap: every later send to that partition would fail with ``OutOfOrderSequenceNumber``. So after
    any non-retriable delivery error the producer is replaced by a fresh one (new producer id,
    fresh sequences); the sends lost with the old one fail with :class:`ProducerResetError`, which
    the durable steps retry.
    """

    DEFAULT_LIMIT = 1_048_576  # aiokafka's max_request_size default: below every broker default
    DEFAULT_BATCH = 256 * 1024
    BATCH_HEADROOM = 1024  # a batch's own framing on top of its records

    def __init__(
        self,
        bootstrap: str,
        *,
        linger_ms: int = 5,
        client_id: str = "jobstream",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """``options`` are extra aiokafka client arguments (security: TLS, SASL)."""
        self._bootstrap = bootstrap
        self._options = dict(options or {})
        self._config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": client_id,
            "enable_idempotence": True,
            "acks": "all",
            "linger_ms": linger_ms,
            "max_batch_size": self.DEFAULT_BATCH,
            # the client's own per-record cap stays above every topic limit: ours is per topic
            "max_request_size": 64 * 1024 * 1024,
            **self._options,
        }
        self._started: AIOKafkaProducer | None = None
        self._limits: dict[str, int] = {}
        self._generation = 0
        self._reset_lock = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()
        self.resets = 0

    @property
    def _producer(self) -> AIOKafkaProducer:
        if self._started is None:
            raise RuntimeError("Publisher.start() was not awaited")
        return self._started

    async def start(self) -> None:
        # aiokafka binds to the running loop, so the producer is built here, not in __init__
        producer = AIOKafkaProducer(**self._config)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()  # else a refused start warns "Unclosed AIOKafkaProducer"
            raise
        self._started = producer

    async def stop(self) -> None:
        if self._started is not None:
            await self._started.stop()
            self._started = None
        for task in list(self._retired):
            task.cancel()
        self._retired.clear()

    # -- size limits -------------------------------------------------------------------------

    async def load_limits(self, topics: Iterable[str]) -> dict[str, int]:
        """Read ``max.message.bytes`` of each topic (the broker's value when not overridden).

        The broker applies that limit to a whole record batch, so the producer's batches are
        kept below the smallest limit too (a producer is rebuilt when that changes).
        """
        self._limits.update(await topic_limits(self._bootstrap, topics, options=self._options))
        smallest = min(self._limits.values(), default=self.DEFAULT_BATCH + self.BATCH_HEADROOM)
        batch = max(1024, min(self.DEFAULT_BATCH, smallest - self.BATCH_HEADROOM))
        if batch != self._config["max_batch_size"]:
            self._config["max_batch_size"] = batch
            if self._started is not None:
                await self._reset(self._generation, None)
        return dict(self._limits)

    def limit(self, topic: str) -> int:
        """The largest record (as aiokafka estimates it) the broker accepts on ``topic``."""
        return self._limits.get(topic, self.DEFAULT_LIMIT)

    @staticmethod
    def record_size(value: bytes | None, key: bytes | None, headers: Headers | None) -> int:
        return int(
            DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers or ()))
        )

    # -- sending -----------------------------------------------------------------------------

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        size = self.record_size(value, key, headers)
        if size > self.limit(topic):
            raise RecordTooLargeError(
                f"record of {size} bytes exceeds {topic}'s limit of {self.limit(topic)} bytes"
            )
        sent: asyncio.Future[RecordMetadata] = await self._producer.send(
            topic, value=value, key=key, headers=list(headers) if headers else None
        )
        return sent

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> RecordMetadata:
        generation = self._generation
        future = await self.send(topic, value, key=key, headers=headers)
        try:
            return await future
        except KafkaError as exc:
            if exc.retriable:
                raise
            await self._reset(generation, exc)
            if isinstance(exc, MessageSizeTooLargeError):
                await self.load_limits([topic])
                if self.record_size(value, key, headers) > self.limit(topic):
                    raise RecordTooLargeError(
                        f"the broker refused the record on {topic} as too large"
                    ) from exc
            # a victim of another record's refusal (same batch or same partition): resend
            raise ProducerResetError(
                f"send lost to a producer reset ({type(exc).__name__})"
            ) from exc

    async def flush(self) -> None:
        await self._producer.flush()

    async def _reset(self, generation: int, cause: BaseException | None) -> None:
        """Replace the producer once per failed generation; later sends use the new one."""
        async with self._reset_lock:
            if generation != self._generation or self._started is None:
                return  # someone else already replaced it
            old = self._started
            fresh = AIOKafkaProducer(**self._config)
            await fresh.start()
            self._started = fresh
            self._generation += 1
            self.resets += 1
            if cause is not None:
                log.warning("producer replaced after %s", type(cause).__name__)
            # The old one may hold batches it retries forever; close it without waiting here.
            task = asyncio.create_task(_close_quietly(old))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)


async def _close_quietly(producer: AIOKafkaProducer, timeout_s: float = 10.0) -> None:
    with contextlib.suppress(Exception, asyncio.TimeoutError):
        await asyncio.wait_for(producer.stop(), timeout_s)


async def topic_limits(
    bootstrap: str, topics: Iterable[str], *, options: Mapping[str, Any] | None = None
) -> dict[str, int]:
    """``max.message.bytes`` of each existing topic (missing topics are left out)."""
    names = list(dict.fromkeys(topics))
    if not names:
        return {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **dict(options or {}))
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, n, {"max.message.bytes": None})
                for n in names
            ]
        )
    finally:
        await admin.close()
    limits: dict[str, int] = {}
    for response in responses:
        for error_code, _msg, _type, name, entries in response.resources:
            if error_code:
                continue
            for entry in entries:
                if entry[0] == "max.message.bytes" and entry[1] is not None:
                    limits[name] = int(entry[1])
    return limits
