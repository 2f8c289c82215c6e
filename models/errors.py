"""The one error tree of jobstream.

The pipeline acts on three branches: :class:`RetryableError` (goes to a retry tier),
:class:`FatalError` (goes to the dead-letter topic at once) and :class:`RateLimitedError`
(a retryable error that also pauses its upstream key for every replica).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class JobstreamError(Exception):
    """Raised when anything in jobstream fails; the root of every project error."""


class JobError(JobstreamError):
    """Raised when a job handler fails; carries how the pipeline must route it."""

    retryable: bool = False


class RetryableError(JobError):
    """Raised when a job failed for a reason that may pass: 5xx, timeout, connection reset."""

    retryable = True


class RateLimitedError(RetryableError):
    """Raised when an upstream answered 429; ``retry_after`` pauses its key for all replicas."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class JobTimeoutError(RetryableError):
    """Raised when a handler ran past its job type's timeout and was cancelled."""


class FatalError(JobError):
    """Raised when retrying cannot help (4xx, bad credentials, refused URL): dead-letter now."""


class InvalidJobError(FatalError):
    """Raised when an input cannot be decoded or validated; ``reason`` names what was wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SubmitError(FatalError):
    """Raised when a job is refused before anything is published: an unknown type, a payload
    its type's model refuses, an event larger than the workers accept; ``errors`` lists each
    problem (``loc``, ``msg``, ``type``), never the refused values. Fatal: a handler whose
    follow-up is refused is dead-lettered, since submitting it again cannot help."""

    def __init__(self, message: str, errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.errors = [dict(e) for e in errors]


class ConfigurationError(JobstreamError):
    """Raised when settings or a policy file are invalid."""


class StackError(JobstreamError):
    """Raised when the local Kafka/PostgreSQL stack cannot be started or reached."""


class ResultTimeoutError(JobstreamError, TimeoutError):
    """Raised when a job has not finished within the time its caller waited for its result; the
    job goes on (cancel it to stop it)."""

    def __init__(self, job_id: str, timeout_s: float) -> None:
        super().__init__(f"job {job_id} did not finish within {timeout_s:g}s")
        self.job_id = job_id
        self.timeout_s = timeout_s
