"""Wire and row models shared by producers, workers and the DLQ tool."""

from jobstream.models.deadletter import DeadLetter, DeadLetterReason
from jobstream.models.errors import (
    ConfigurationError,
    FatalError,
    InvalidJobError,
    JobError,
    JobstreamError,
    JobTimeoutError,
    RateLimitedError,
    RetryableError,
    StackError,
)
from jobstream.models.job import (
    SCHEMA_VERSION,
    FailureRecord,
    JobEvent,
    JobOutcome,
    JobStatus,
    new_job_id,
    utcnow,
)

__all__ = [
    "SCHEMA_VERSION",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetterReason",
    "FailureRecord",
    "FatalError",
    "InvalidJobError",
    "JobError",
    "JobEvent",
    "JobOutcome",
    "JobStatus",
    "JobTimeoutError",
    "JobstreamError",
    "RateLimitedError",
    "RetryableError",
    "StackError",
    "new_job_id",
    "utcnow",
]
