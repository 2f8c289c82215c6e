"""The commit-offset guard, in memory: the stock faust guard skips a running offset, ours not."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import Consumer as StockConsumer
from faust.types import TP
from intervaltree import IntervalTree

from jobstream.streams.worker.consumer import SafeOffsetConsumer

TP0 = TP("jobs", 0)


def bare(cls: type[Any], committed: int | None, head: int | None = None) -> Any:
    """A consumer with only the bookkeeping ``_new_offset`` reads (no app, no broker)."""
    consumer = object.__new__(cls)
    consumer._acked = defaultdict(list)
    consumer._acked_index = defaultdict(set)
    consumer._gap = defaultdict(IntervalTree)
    consumer._committed_offset = defaultdict(lambda: None)
    consumer._committed_offset[TP0] = committed
    if cls is SafeOffsetConsumer:
        consumer._head_offset = {} if head is None else {TP0: head}
        consumer.commits_frozen = False
    return consumer


def ack(consumer: Any, *offsets: int) -> None:
    for offset in offsets:
        consumer._acked[TP0].append(offset)
        consumer._acked_index[TP0].add(offset)


@pytest.mark.parametrize(
    ("committed", "head", "acked"),
    [
        (31, None, [32, 33]),  # offset 31 (next to read) still running
        (None, 0, [1, 2]),  # nothing committed yet, offset 0 running
        (None, 7, [8]),  # first commit of a group that started at 7
    ],
)
def test_running_head_blocks_the_commit(
    committed: int | None, head: int | None, acked: list[int]
) -> None:
    ours = bare(SafeOffsetConsumer, committed, head)
    ack(ours, *acked)
    assert ours._new_offset(TP0) is None

    stock = bare(StockConsumer, committed)
    ack(stock, *acked)
    assert stock._new_offset(TP0) == acked[-1] + 1  # the bug: the running head is skipped


def test_contiguous_run_from_the_head_is_committed() -> None:
    ours = bare(SafeOffsetConsumer, 31)
    ack(ours, 33, 31, 32, 35)
    assert ours._new_offset(TP0) == 34
    assert ours._acked[TP0] == [35]  # kept for the next commit


def test_first_commit_uses_the_first_delivered_offset() -> None:
    ours = bare(SafeOffsetConsumer, None, head=0)
    ack(ours, 0, 1, 2)
    assert ours._new_offset(TP0) == 3


def test_unknown_head_commits_nothing() -> None:
    ours = bare(SafeOffsetConsumer, None, head=None)
    ack(ours, 5)
    assert ours._new_offset(TP0) is None


def test_gaps_count_as_acked() -> None:
    ours = bare(SafeOffsetConsumer, 10)
    ours._gap[TP0].addi(11, 13)  # offsets 11 and 12 do not exist (e.g. compacted)
    ack(ours, 10, 13)
    assert ours._new_offset(TP0) == 14


def test_frozen_commits_commit_nothing() -> None:
    ours = bare(SafeOffsetConsumer, 10)
    ack(ours, 10, 11)
    ours.freeze_commits()
    assert ours._new_offset(TP0) is None
