from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from jobstream.models.job import JobStatus
from jobstream.models.rows import JobRow
from jobstream.streams.pg.batching import Batcher
from jobstream.streams.pg.results import _merge


async def test_concurrent_submits_share_one_flush_and_get_their_own_result() -> None:
    flushes: list[list[int]] = []

    async def flush(items: Sequence[int]) -> list[int]:
        flushes.append(list(items))
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(flush, max_size=100, max_delay_s=0.01)
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(i) for i in range(50)))
    await batcher.close()
    assert results == [i * 10 for i in range(50)]
    assert len(flushes) == 1
    assert sorted(flushes[0]) == list(range(50))


async def test_a_full_batch_flushes_without_waiting_for_the_delay() -> None:
    async def flush(items: Sequence[int]) -> list[int]:
        return list(items)

    batcher: Batcher[int, int] = Batcher(flush, max_size=10, max_delay_s=60)
    batcher.start()
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(10))), 5)
    await batcher.close()
    assert results == list(range(10))


async def test_a_failed_flush_fails_every_caller_of_that_batch() -> None:
    async def flush(items: Sequence[int]) -> list[int]:
        raise ConnectionError("database went away")

    batcher: Batcher[int, int] = Batcher(flush, max_size=10, max_delay_s=0.001)
    batcher.start()
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    await batcher.close()
    assert all(isinstance(o, ConnectionError) for o in outcomes)


async def test_close_flushes_what_is_queued_and_refuses_more() -> None:
    seen: list[int] = []

    async def flush(items: Sequence[int]) -> list[int]:
        seen.extend(items)
        return list(items)

    batcher: Batcher[int, int] = Batcher(flush, max_size=100, max_delay_s=60)
    batcher.start()
    pending = asyncio.ensure_future(batcher.submit(7))
    await asyncio.sleep(0)
    await batcher.close()
    assert await pending == 7
    assert seen == [7]
    with pytest.raises(RuntimeError):
        await batcher.submit(8)


def row(job_id: str, status: JobStatus) -> JobRow:
    return JobRow(job_id=job_id, type="echo", status=status, attempt=1)


def test_merge_keeps_one_row_per_job_and_prefers_the_terminal_one() -> None:
    rows = [
        row("a", JobStatus.RETRYING),
        row("b", JobStatus.SUCCEEDED),
        row("a", JobStatus.SUCCEEDED),
        row("b", JobStatus.DEAD_LETTERED),
    ]
    merged, winner = _merge(rows)
    assert [(r.job_id, r.status) for r in merged] == [
        ("a", JobStatus.SUCCEEDED),
        ("b", JobStatus.SUCCEEDED),  # the first terminal row wins
    ]
    assert winner == {"a": 0, "b": 1}
