"""What every process that serves jobs needs before its first one: topics and schema."""

from __future__ import annotations

import logging

import asyncpg

from jobstream.streams.kafka.admin import ensure_topics
from jobstream.streams.kafka.security import client_options
from jobstream.streams.pg.migrations import migrate
from jobstream.streams.pg.pool import create_pool
from jobstream.streams.settings import Settings
from jobstream.streams.topics import TopicNames, topic_configs

log = logging.getLogger(__name__)


async def prepare(
    settings: Settings, *, bootstrap: str, dsn: str, topics: TopicNames, pool_min: int = 1
) -> asyncpg.Pool:
    """Create the topics (with our partition count: a broker that auto-creates them would use
    its own) and apply the schema migrations; returns a connection pool."""
    await ensure_topics(
        bootstrap,
        topics.all(),
        partitions=settings.partitions,
        replication_factor=settings.replication_factor,
        configs=topic_configs(settings, topics),
        options=client_options(settings),
    )
    pool = await create_pool(
        dsn,
        min_size=pool_min,
        max_size=settings.db_pool_max,
        pooler_mode=settings.db_pooler_mode,
    )
    try:
        async with pool.acquire() as conn:
            applied = await migrate(conn)
    except BaseException:
        await pool.close()
        raise
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    return pool
