"""Items gathered into batches, each batch handed to a stage in a task of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Collector(Generic[T]):
    """Items gathered until ``max_size`` of them wait or ``max_delay_s`` after the first one,
    then handed to ``flush`` in a task of their own. With ``max_delay_s`` 0 the items are
    flushed at the next turn of the event loop when no flush is under way, else with the items
    that arrive until it ends.

    Hand-written because what it saves is the point: the group-commit ``Batcher`` gives every
    item a future of its own to await; here one timer and one task serve a whole batch, and the
    items carry their own continuation.
    """

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[None]],
        *,
        max_size: int,
        max_delay_s: float,
        spawn: Callable[[Awaitable[None]], None],
    ) -> None:
        self._flush = flush
        self.max_size = max_size
        self.max_delay_s = max_delay_s
        self._spawn = spawn
        self._items: list[T] = []
        self._timer: asyncio.Handle | None = None
        self._flushing = 0

    def add(self, item: T) -> None:
        self._items.append(item)
        if len(self._items) >= self.max_size:
            self.flush_now()
        elif self._timer is not None:
            return
        elif self.max_delay_s <= 0:
            if not self._flushing:  # the items added in this turn of the loop go together
                self._timer = asyncio.get_running_loop().call_soon(self.flush_now)
        else:
            self._timer = asyncio.get_running_loop().call_later(self.max_delay_s, self.flush_now)

    def take_all(self) -> list[T]:
        """The items waiting, taken out unflushed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._items = self._items, []
        return items

    def flush_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._items = self._items, []
        if items:
            self._flushing += 1
            self._spawn(self._flush_batch(items))

    async def _flush_batch(self, items: list[T]) -> None:
        try:
            await self._flush(items)
        finally:
            self._flushing -= 1
            if self.max_delay_s <= 0 and not self._flushing and self._items:
                self.flush_now()
