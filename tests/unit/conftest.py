from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for tests that talk to a local server, closed afterwards."""
    async with aiohttp.ClientSession() as session:
        yield session
