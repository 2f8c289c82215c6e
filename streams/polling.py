"""The one wait-until: poll a condition until it holds or a deadline passes.

Used by the dev stack's readiness waits, the benchmark and the tests, so that no caller writes
its own ``while time.monotonic() < deadline`` loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(
    check: Callable[[], Awaitable[T | None]],
    *,
    within_s: float,
    what: str = "",
    interval_s: float = 0.2,
    error: type[Exception] = TimeoutError,
) -> T:
    """Await ``check`` until it returns a truthy value and return that value; past ``within_s``
    raise ``error`` naming ``what`` and the last value seen. ``check`` may raise to fail fast
    (a process that died while being waited for)."""
    deadline = time.monotonic() + within_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() >= deadline:
            name = what or getattr(check, "__name__", repr(check))
            raise error(f"timed out after {within_s:g}s waiting for {name}: last={value!r}")
        await asyncio.sleep(interval_s)
