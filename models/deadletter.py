"""The dead-letter record: everything an operator needs to understand and replay a failure."""

from __future__ import annotations

import base64
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from jobstream.models.job import FailureRecord, utcnow

REPLAY_HEADER = "jobstream-replayed-from"
"""Header on an event republished by ``jobstream dlq replay``: the dead letter it came from."""


class DeadLetterReason(StrEnum):
    INVALID_BYTES = "invalid_bytes"  # not UTF-8
    INVALID_JSON = "invalid_json"
    INVALID_SCHEMA = "invalid_schema"  # JSON, but not a JobEvent
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_PAYLOAD = "invalid_payload"  # a JobEvent whose payload its handler refuses
    OVERSIZE = "oversize"
    FATAL_ERROR = "fatal_error"
    EXHAUSTED = "exhausted"
    STALLED = "stalled"  # its claim expired (worker died) more often than max_attempts
    UNPUBLISHABLE = "unpublishable"  # Kafka refused a record the job produced (size, encoding)
    UNSTORABLE = "unstorable"  # PostgreSQL refused the job's row (e.g. its result)
    INTERNAL_ERROR = "internal_error"  # a bug in the pipeline itself, not in the handler

    @property
    def undecodable(self) -> bool:
        return self in _UNDECODABLE


_UNDECODABLE = {
    DeadLetterReason.INVALID_BYTES,
    DeadLetterReason.INVALID_JSON,
    DeadLetterReason.INVALID_SCHEMA,
    DeadLetterReason.UNSUPPORTED_VERSION,
    DeadLetterReason.OVERSIZE,
}


def b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def unb64(data: str | None) -> bytes | None:
    return None if data is None else base64.b64decode(data)


class DeadLetter(BaseModel):
    """One entry of the dead-letter topic. ``id`` is the source coordinates, unique per input."""

    model_config = ConfigDict(frozen=True)

    v: int = 1
    id: str
    job_id: str
    job_type: str | None = None
    reason: DeadLetterReason
    error_class: str
    error_message: str
    traceback: str | None = None
    attempt: int = 1
    history: list[FailureRecord] = Field(default_factory=list)
    source_topic: str
    source_partition: int
    source_offset: int
    first_failure_at: datetime = Field(default_factory=utcnow)
    last_failure_at: datetime = Field(default_factory=utcnow)
    original_key: str | None = None
    """Base64 of the original record key."""
    original_value: str | None = None
    """Base64 of the original record bytes, exactly as they arrived."""
    original_headers: list[tuple[str, str | None]] = Field(default_factory=list)
    """Original headers as (name, base64 value)."""
    original_size: int | None = None
    """Length in bytes of the original record value."""
    original_sha256: str | None = None
    """Hex sha256 of the original record value, so a truncated copy can still be matched."""
    original_truncated: bool = False
    """True when ``original_value`` holds only a prefix (the whole would exceed the limit of
    the dead-letter topic); such a letter cannot be replayed from the topic alone."""

    @staticmethod
    def coordinates(topic: str, partition: int, offset: int) -> str:
        return f"{topic}:{partition}:{offset}"

    def original_bytes(self) -> bytes | None:
        """The original record value; None when there was none or only a prefix was kept."""
        return None if self.original_truncated else unb64(self.original_value)

    def original_prefix(self) -> bytes | None:
        """What the letter holds of the original value, whole or truncated."""
        return unb64(self.original_value)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()
