"""A bounded, group-less snapshot of the dead-letter topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from pydantic import ValidationError

from jobstream.models.deadletter import DeadLetter
from jobstream.models.errors import StackError
from jobstream.streams.dlq.filters import DlqError, as_aware

CONNECT_TIMEOUT_S = 15.0


IDLE_TIMEOUT_S = 30.0


class TopicMissingError(DlqError):
    """Raised when a topic the tool needs does not exist: usually a wrong prefix (exit 2)."""


class UnreachableError(StackError):
    """Raised when Kafka or PostgreSQL cannot be reached; names the address (exit 3)."""


@dataclass(frozen=True)
class Unreadable:
    """A DLQ record that is not DeadLetter JSON: reported and skipped, never fatal."""

    partition: int
    offset: int
    error: str


@dataclass
class Snapshot:
    topic: str
    end_offsets: dict[int, int]
    matched: list[DeadLetter] = field(default_factory=list)
    scanned: int = 0
    unreadable: list[Unreadable] = field(default_factory=list)


def first_line(exc: BaseException) -> str:
    """``Class: first line of the message``: a diagnosis that fits a terminal line."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()
    if not text:
        return name
    return text[0] if text[0].startswith(name) else f"{name}: {text[0]}"


async def start_client(client: AIOKafkaConsumer | AIOKafkaProducer, bootstrap: str) -> None:
    try:
        await asyncio.wait_for(client.start(), timeout=CONNECT_TIMEOUT_S)
    except (KafkaError, OSError, TimeoutError) as exc:
        await client.stop()
        raise UnreachableError(f"Kafka at {bootstrap} is unreachable ({first_line(exc)})") from exc


async def _partitions(
    bootstrap: str, topic: str, also_require: Sequence[str], options: Mapping[str, Any]
) -> list[int]:
    """The partitions of ``topic``, after checking that every needed topic exists.

    Existence comes from the all-topics listing first: asking a broker about one topic by
    name can auto-create it, and a typo in ``--prefix`` must not create topics.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(CONNECT_TIMEOUT_S * 1000), **options
    )
    try:
        await asyncio.wait_for(admin.start(), timeout=CONNECT_TIMEOUT_S)
        existing = set(await admin.list_topics())
        for name in (topic, *also_require):
            if name not in existing:
                raise TopicMissingError(
                    f"topic {name!r} does not exist on {bootstrap} "
                    "(check --prefix / JOBSTREAM_TOPIC_PREFIX)"
                )
        (described,) = await admin.describe_topics([topic])
    except (KafkaError, OSError, TimeoutError) as exc:
        raise UnreachableError(f"Kafka at {bootstrap} is unreachable ({first_line(exc)})") from exc
    finally:
        await admin.close()
    return sorted(p["partition"] for p in described["partitions"])


async def read_snapshot(
    bootstrap: str,
    topic: str,
    match: Callable[[DeadLetter], bool],
    *,
    also_require: Sequence[str] = (),
    on_bounds: Callable[[dict[int, int]], Awaitable[None]] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Snapshot:
    """Every dead letter in ``topic`` up to the end offsets seen at start that ``match`` accepts.

    ``read_committed`` so dead letters from aborted transactions are never shown or replayed.
    ``on_bounds`` runs once the bounds are fixed (tests use it to prove later records are not
    read). Matches come back oldest failure first, which is also the replay order.
    """
    options = options or {}  # aiokafka client arguments for TLS/SASL (kafka_security)
    parts = await _partitions(bootstrap, topic, also_require, options)
    tps = [TopicPartition(topic, p) for p in parts]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        client_id="jobstream-dlq-tool",
        request_timeout_ms=int(CONNECT_TIMEOUT_S * 1000),
        **options,
    )
    await start_client(consumer, bootstrap)
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        snap = Snapshot(topic=topic, end_offsets={tp.partition: ends[tp] for tp in tps})
        if on_bounds is not None:
            await on_bounds(dict(snap.end_offsets))
        pending = {tp for tp in tps if ends[tp] > begins[tp]}
        if not pending:
            return snap
        consumer.pause(*(set(tps) - pending))
        await consumer.seek_to_beginning(*pending)
        await _drain(consumer, pending, ends, match, snap)
    except KafkaError as exc:
        raise UnreachableError(f"Kafka at {bootstrap} failed ({first_line(exc)})") from exc
    finally:
        await consumer.stop()
    snap.matched.sort(
        key=lambda d: (
            as_aware(d.last_failure_at),
            d.source_topic,
            d.source_partition,
            d.source_offset,
        )
    )
    return snap


async def _drain(
    consumer: AIOKafkaConsumer,
    pending: set[TopicPartition],
    ends: dict[TopicPartition, int],
    match: Callable[[DeadLetter], bool],
    snap: Snapshot,
) -> None:
    """Consume until every partition's position reaches its recorded end offset.

    Done by position, not by the last record's offset: with transactions the last offsets
    are control markers that never come back as records.
    """
    positions: dict[TopicPartition, int] = {}
    last_progress = time.monotonic()
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=500)
        for tp, records in batch.items():
            for rec in records:
                if rec.offset >= ends[tp]:
                    continue
                snap.scanned += 1
                try:
                    if rec.value is None:
                        raise ValueError("empty value (tombstone)")
                    dl = DeadLetter.model_validate_json(rec.value)
                except ValidationError as exc:
                    err = exc.errors()[0]
                    where = ".".join(str(x) for x in err["loc"])
                    why = f"not a DeadLetter: {where + ': ' if where else ''}{err['msg']}"
                    snap.unreadable.append(Unreadable(tp.partition, rec.offset, why))
                    continue
                except ValueError as exc:
                    snap.unreadable.append(Unreadable(tp.partition, rec.offset, first_line(exc)))
                    continue
                if match(dl):
                    snap.matched.append(dl)
        for tp in list(pending):
            pos = await consumer.position(tp)
            if pos != positions.get(tp):
                positions[tp] = pos
                last_progress = time.monotonic()
            if pos >= ends[tp]:
                pending.discard(tp)
                consumer.pause(tp)
        if pending and time.monotonic() - last_progress > IDLE_TIMEOUT_S:
            raise UnreachableError(
                f"no progress reading {snap.topic} for {IDLE_TIMEOUT_S:.0f}s: broker unreachable?"
            )
