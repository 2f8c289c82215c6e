"""A record of the main topic becomes a :class:`Decoded` job or an :class:`Unrunnable` one."""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, ValidationError

from jobstream.agents.decode import decode_event, payload_error, readable_id
from jobstream.agents.registry import JobType, Registry
from jobstream.agents.states import Decoded, Read, Scheduled, Source, Unrunnable
from jobstream.models.deadletter import REPLAY_HEADER, DeadLetterReason
from jobstream.models.errors import InvalidJobError
from jobstream.models.job import JobEvent
from jobstream.models.rows import ScheduledRow
from jobstream.streams.kafka.record import Record

TIER_HEADER = "jobstream-retry-tier"
"""Set on a retry event: the tier topic it went through (reported with errors)."""


def read(rec: Record, *, max_event_bytes: int) -> Read | Unrunnable:
    """Decode ``rec``; never raises for what the record holds."""
    replay_of = rec.header(REPLAY_HEADER)
    try:
        # a replayed copy of an id-less event gets the id of the one it replays
        job = decode_event(
            rec.value, max_bytes=max_event_bytes, id_source=replay_of or rec.coordinates
        )
    except InvalidJobError as exc:
        return undecodable(rec, exc, max_event_bytes=max_event_bytes)
    return Read(source(rec, job, rec.header(TIER_HEADER)), job)


def classify(state: Read, registry: Registry) -> Decoded:
    """The job with its type and its payload checked against the type's model."""
    job = state.job
    job_type = registry.get(job.type)
    src = state.src
    if job_type is not None:
        src.type_label = job_type.name  # the source was made for this record alone
    return Decoded(src, job, job_type, validated(job, job_type))


def source(rec: Record, job: JobEvent, tier: str | None = None, *, known: bool = False) -> Source:
    """What a decoded job's record tells; ``known``: its type is registered."""
    return Source(
        rec=rec,
        job_id=job.id,
        job_type=job.type,
        attempt=job.attempt,
        created_at=job.created_at,
        replay_of=rec.header(REPLAY_HEADER),
        history=tuple(job.history),
        tier=tier,
        payload=job.payload,
        type_label=job.type if known else "unknown",
    )


def bare_source(rec: Record) -> Source:
    """What is known of a record that did not decode."""
    return Source(
        rec=rec,
        job_id=f"invalid:{rec.coordinates}",
        replay_of=rec.header(REPLAY_HEADER),
        tier=rec.header(TIER_HEADER),
        payload=rec.value,  # whatever it holds, it never reaches an error report
    )


def undecodable(rec: Record, exc: InvalidJobError, *, max_event_bytes: int) -> Unrunnable:
    """Input that is no job: it keeps the id it carries when one can be read; else its source
    coordinates are its id, the same for every delivery of the record."""
    reason = DeadLetterReason(exc.reason)
    job_id = None
    if reason is not DeadLetterReason.OVERSIZE:
        job_id = readable_id(rec.value, max_bytes=max_event_bytes)
    src = bare_source(rec)
    if job_id:
        src = dataclasses.replace(src, job_id=job_id)
    return Unrunnable(src, exc, reason)


def validated(job: JobEvent, job_type: JobType | None) -> BaseModel | InvalidJobError:
    """The payload as its type's model, or the error that dead-letters it; known before the
    claim, so a job that cannot run never counts as a run."""
    if job_type is None:
        return InvalidJobError(DeadLetterReason.UNKNOWN_TYPE, f"unknown job type {job.type!r}")
    try:
        payload: Any = job_type.payload_model.model_validate(job.payload)
    except ValidationError as exc:
        return InvalidJobError(DeadLetterReason.INVALID_PAYLOAD, payload_error(exc))
    return payload  # type: ignore[no-any-return]


def scheduled(state: Decoded) -> Scheduled:
    """A delayed job (``not_before`` ahead) as the row that keeps it until it is due."""
    job = state.job
    assert job.not_before is not None
    row = ScheduledRow(
        job_id=job.id,
        type=job.type,
        attempt=job.attempt,
        created_at=job.created_at,
        run_at=job.not_before,
        expires_at=job.expires_at,
        event=job.model_dump(mode="json"),
        topic=state.src.rec.topic,
    )
    return Scheduled(state.src, row)
