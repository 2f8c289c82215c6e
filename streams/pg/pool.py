"""The PostgreSQL connection pool: jsonb codecs, and unnamed statements behind a transaction-mode
pooler.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
"""A connection of its own or one acquired from a pool: the queries run on either."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


PoolerMode = Literal["none", "transaction"]


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No reset query on release (see ``create_pool(reset=False)``)."""


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    pooler_mode: PoolerMode = "none",
    reset: bool = True,
) -> asyncpg.Pool:
    """``pooler_mode="transaction"``: the server connection may change between transactions
    (PgBouncer, Supabase's pooler), so a statement prepared under a name on one would be
    missing on the next; asyncpg then prepares only unnamed statements.

    ``reset=False``: a released connection is not reset (asyncpg's default sends
    ``RESET ALL``, ``UNLISTEN *``, ... on every release, one more round trip per statement).
    Only for a pool whose users run single statements and leave no session state behind:
    the result store's batches."""
    extra: dict[str, Any] = {}
    if pooler_mode == "transaction":
        extra["statement_cache_size"] = 0
    if not reset:
        extra["reset"] = _keep_session
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        command_timeout=30,
        **extra,
    )
    assert pool is not None
    return pool
