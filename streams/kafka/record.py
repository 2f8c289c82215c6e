"""One consumed Kafka record, independent of the client library that read it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from jobstream.models.deadletter import DeadLetter


@dataclass(frozen=True)
class Record:
    """A consumed Kafka record, independent of faust's types."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp_ms: int | None = None
    """The record's Kafka timestamp (create or log-append time), for time lag."""

    @property
    def coordinates(self) -> str:
        return DeadLetter.coordinates(self.topic, self.partition, self.offset)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name and v is not None:
                return v.decode("utf-8", "replace")
        return None
