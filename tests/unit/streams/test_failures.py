"""Which failures are transient: only what can pass by itself."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka import errors as kafka_errors

from jobstream.streams.failures import ProducerResetError, RecordTooLargeError, is_transient


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (kafka_errors.KafkaConnectionError(), True),
        (kafka_errors.NotEnoughReplicasError(), True),
        (kafka_errors.NotLeaderForPartitionError(), True),
        (kafka_errors.OutOfOrderSequenceNumber(), True),
        (ProducerResetError("reset"), True),
        (asyncpg.CannotConnectNowError("starting"), True),
        (asyncpg.TooManyConnectionsError("full"), True),
        (asyncpg.InterfaceError("connection is closed"), True),
        # a transaction-mode pooler under a worker not told of it (healed, then retried)
        (asyncpg.InvalidSQLStatementNameError("prepared statement does not exist"), True),
        (asyncpg.DuplicatePreparedStatementError("already exists"), True),
        (asyncpg.ProtocolViolationError("bind message supplies 1 parameters"), True),
        (asyncpg.ProtocolViolationError("insufficient data left in message"), True),
        (kafka_errors.MessageSizeTooLargeError(), False),
        (RecordTooLargeError("big"), False),
        (asyncpg.DataError("bad json"), False),
        (asyncpg.UndefinedTableError("no jobs"), False),
        (KeyError("bug"), False),
        (ValueError("bug"), False),
    ],
)
def test_only_what_can_pass_by_itself_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient
