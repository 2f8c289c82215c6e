"""Which infrastructure errors may pass on their own: the one list the pipeline retries in place.

Everything named here is a condition of the service, not of the record: a connection refused or
reset, a timeout, a broker or coordinator that is not available yet, a partition leader that
moved, a PostgreSQL that is restarting or out of connections. Waiting fixes those, so a durable
step retries them (with a deadline after which the outage is reported). Any other exception is a
property of the record or a bug, and retrying it would hold its partition forever: it is routed
instead (``unpublishable``, ``unstorable``, ``internal_error``).
"""

from __future__ import annotations

import asyncpg
from aiokafka import errors as kafka_errors

from jobstream.models.errors import JobstreamError


class RecordTooLargeError(JobstreamError):
    """Raised when a record is larger than the topic or broker accepts; never retried."""


class ProducerResetError(JobstreamError):
    """Raised when a send was lost to a producer reset (after another record poisoned it)."""


TRANSIENT_KAFKA: tuple[type[BaseException], ...] = (
    kafka_errors.KafkaConnectionError,
    kafka_errors.NodeNotReadyError,
    kafka_errors.NoBrokersAvailable,
    kafka_errors.RequestTimedOutError,
    kafka_errors.KafkaTimeoutError,
    kafka_errors.LeaderNotAvailableError,
    kafka_errors.NotLeaderForPartitionError,
    kafka_errors.NotEnoughReplicasError,
    kafka_errors.NotEnoughReplicasAfterAppendError,
    kafka_errors.CoordinatorNotAvailableError,
    kafka_errors.NotCoordinatorError,
    kafka_errors.CoordinatorLoadInProgressError,
    kafka_errors.NotControllerError,
    kafka_errors.KafkaStorageError,
    kafka_errors.StaleMetadata,
    kafka_errors.UnknownTopicOrPartitionError,  # a topic being created or a leader electing
    # the idempotent producer's state was lost (a reset after a poisoned batch): resend
    kafka_errors.OutOfOrderSequenceNumber,
    ProducerResetError,
)

TRANSIENT_POSTGRES: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # class 08: connection failure, does not exist, rejected
    asyncpg.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.AdminShutdownError,  # 57P01
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.TooManyConnectionsError,  # 53300
    asyncpg.SerializationError,  # 40001
    asyncpg.DeadlockDetectedError,  # 40P01
    asyncpg.QueryCanceledError,  # 57014: statement timeout under load
)

TRANSIENT_OS: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted, broken pipe
    TimeoutError,  # includes asyncio.TimeoutError: a step that ran past its deadline
)


def pooler_symptom(exc: BaseException) -> bool:
    """A named prepared statement missing, already there or of another shape on the server
    connection: what a transaction-mode pooler in front of PostgreSQL (PgBouncer, Supabase's)
    does to asyncpg's default statement cache when it was not told of the pooler. It passes
    once the pools use unnamed statements (``streams.pg.pool.heal_pooler``)."""
    if isinstance(
        exc, asyncpg.InvalidSQLStatementNameError | asyncpg.DuplicatePreparedStatementError
    ):
        return True  # 26000, 42P05
    # 08P01: a Bind shaped for one statement reaching another of the same name, left on the
    # server connection by another client ("bind message supplies 1 parameters, but ...",
    # "insufficient data left in message" when a parameter's binary size differs)
    return isinstance(exc, asyncpg.ProtocolViolationError) and (
        "bind message" in str(exc) or "insufficient data left in message" in str(exc)
    )


def is_transient(exc: BaseException) -> bool:
    """True when waiting may make ``exc`` pass: retry in place, do not route the record."""
    if isinstance(exc, TRANSIENT_KAFKA + TRANSIENT_POSTGRES + TRANSIENT_OS):
        return True
    if pooler_symptom(exc):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        # asyncpg reports a connection lost under a query as "connection is closed"
        return "closed" in str(exc) or "connection" in str(exc).lower()
    if isinstance(exc, OSError):
        # DNS failure or network unreachable: the service, not the record
        return exc.errno is not None
    return False


def describe(exc: BaseException) -> str:
    """A one-line summary for logs: the class and the first line, never a traceback."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"[:300] if first else type(exc).__name__
