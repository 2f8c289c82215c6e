"""Group commit: callers each await their own item while one task flushes them together.

A flush happens when ``max_size`` items wait or ``max_delay_s`` after the first one arrived,
whichever comes first. Each caller gets its own item's result (or the flush's exception), so a
write is acknowledged only once the batch holding it is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

FlushFn = Callable[[Sequence[T]], Awaitable[Sequence[R]]]


class Batcher(Generic[T, R]):
    def __init__(
        self,
        flush: FlushFn[T, R],
        *,
        max_size: int = 500,
        max_delay_s: float = 0.005,
        max_concurrent_flushes: int = 2,
        on_flush: Callable[[int, float], None] | None = None,
        name: str = "batcher",
    ) -> None:
        self._flush = flush
        self.max_size = max_size
        self.max_delay_s = max_delay_s
        self._on_flush = on_flush
        self._name = name
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._slots = asyncio.Semaphore(max_concurrent_flushes)
        self._flushes: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name=f"{self._name}-runner")

    async def submit(self, item: T) -> R:
        if self._closing:
            raise RuntimeError(f"{self._name} is closed")
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        self._wakeup.set()
        if len(self._pending) >= self.max_size:
            self._full.set()
        # shield: a cancelled caller must not cancel the flush other callers share
        return await asyncio.shield(fut)

    async def close(self) -> None:
        """Flush what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        self._full.set()
        if self._runner is not None:
            await self._runner
            self._runner = None
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if not self._pending:
                self._wakeup.clear()
                if self._closing:
                    return
                continue
            if len(self._pending) < self.max_size and not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.max_delay_s)
            batch, self._pending = self._pending[: self.max_size], self._pending[self.max_size :]
            if len(self._pending) < self.max_size:
                self._full.clear()
            await self._slots.acquire()
            task = asyncio.create_task(self._flush_batch(batch), name=f"{self._name}-flush")
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        started = time.perf_counter()
        try:
            results = await self._flush([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, fut in batch:
                if not fut.done():
                    fut.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every caller of this batch, each decides
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
            if self._on_flush is not None:
                self._on_flush(len(batch), time.perf_counter() - started)
        finally:
            self._slots.release()
