"""Fixtures shared by both tiers.

Integration tests reach the real Kafka and PostgreSQL: from ``JOBSTREAM_KAFKA_BOOTSTRAP`` /
``JOBSTREAM_DATABASE_URL`` when set, otherwise from the local stack (started on demand). They
skip on a laptop without the services, and fail when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = bool(os.environ.get("CI"))


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI is set and a real service is unreachable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def services() -> tuple[str, str]:
    """(bootstrap, dsn) of the real Kafka and PostgreSQL, resolved once per session."""
    bootstrap = os.environ.get("JOBSTREAM_KAFKA_BOOTSTRAP")
    dsn = os.environ.get("JOBSTREAM_DATABASE_URL")
    if bootstrap and dsn:
        return bootstrap, dsn
    from jobstream.streams.dev.stack import resolve_services
    from jobstream.streams.settings import Settings

    settings = Settings(state_dir=Path(os.environ.get("JOBSTREAM_STATE_DIR", ROOT / ".state")))

    def resolve() -> tuple[str, str]:
        return asyncio.run(asyncio.wait_for(resolve_services(settings), timeout=240))

    try:
        # in a thread of its own: the first test to ask may be an async one, inside a loop
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(resolve).result()
    except Exception as exc:  # any failure to reach a service is the same verdict here
        _unavailable(f"Kafka/PostgreSQL not available: {exc!r}")
        raise


@pytest.fixture(scope="session")
def kafka_bootstrap(services: tuple[str, str]) -> str:
    return services[0]


@pytest.fixture(scope="session")
def database_url(services: tuple[str, str]) -> str:
    return services[1]


@pytest.fixture
def prefix() -> str:
    """A topic prefix (and group id) of its own for every test."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def pg_pool(database_url: str) -> AsyncIterator[object]:
    from jobstream.streams.pg.migrations import migrate
    from jobstream.streams.pg.pool import create_pool

    pool = await create_pool(database_url, min_size=1, max_size=10)
    async with pool.acquire() as conn:
        await migrate(conn)
    yield pool
    await pool.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for tests that talk to a local server, closed afterwards."""
    async with aiohttp.ClientSession() as session:
        yield session
