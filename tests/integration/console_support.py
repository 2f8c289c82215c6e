"""A database of its own and a running console for the console's integration tests.

The jobs table is shared by everything that runs on the local PostgreSQL, so the console
tests create a throw-away database on the same server: counts on the overview and job pages
are then exactly the test's own.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from jobstream.streams.console.server import start, url_of
from jobstream.streams.settings import Settings

CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')
VIEWER_TOKEN = "viewer-token-for-tests-0123456789"
OPERATOR_TOKEN = "operator-token-for-tests-9876543210"


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.asynccontextmanager
async def private_database(dsn: str) -> AsyncIterator[str]:
    """A new database on the server of ``dsn``, migrated; dropped afterwards."""
    from jobstream.streams.pg.migrations import migrate

    name = f"console_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    own = _with_database(dsn, name)
    conn = await asyncpg.connect(own)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    try:
        yield own
    finally:
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def create_topics(bootstrap: str, names: list[str], partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
        )
    finally:
        await admin.close()


def console_settings(bootstrap: str, dsn: str, prefix: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "database_url": dsn,
        "topic_prefix": prefix,
        "group_id": prefix,
        "retry_tiers_s": (1.0, 2.0, 3.0),
        "console_viewer_token": VIEWER_TOKEN,
        "console_operator_token": OPERATOR_TOKEN,
        "console_replay_rate": 200.0,
        **extra,
    }
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_console(settings: Settings, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """The console on a free port; yields its base URL (ending in ``/``)."""
    assert settings.kafka_bootstrap is not None
    runner, pool = await start(
        settings,
        bootstrap=settings.kafka_bootstrap,
        dsn=settings.database_dsn(),
        host=host,
        port=0,
    )
    try:
        yield url_of(runner)
    finally:
        await runner.cleanup()
        await pool.close()


def client() -> aiohttp.ClientSession:
    """A browser-like client: keeps cookies set by an IP-address host (aiohttp's default
    jar refuses those) and never follows redirects on its own."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def csrf_of(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url, allow_redirects=False) as r:
        found = CSRF_META.search(await r.text())
    assert found, f"no CSRF token on {url}"
    return found.group(1)


async def login(session: aiohttp.ClientSession, base: str, token: str) -> str:
    """Log in as a browser does; returns the CSRF token of the new session."""
    csrf = await csrf_of(session, base + "login")
    async with session.post(
        base + "login", data={"token": token, "csrf": csrf}, allow_redirects=False
    ) as r:
        assert r.status == 303, await r.text()
    return await csrf_of(session, base)
