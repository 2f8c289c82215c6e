"""The PostgreSQL connection pool: jsonb codecs, and unnamed statements behind a transaction-mode
pooler.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal, TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from jobstream.streams.failures import pooler_symptom

Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
"""A connection of its own or one acquired from a pool: the queries run on either."""


def _jsonb(value: Any) -> str:
    """orjson (several times faster than json: every row holds a result); what it refuses
    (a lone surrogate) goes as json writes it, for PostgreSQL to refuse by its own rule."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_jsonb, decoder=orjson.loads, schema="pg_catalog")


log = logging.getLogger(__name__)
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
    connect: dict[str, Any] = {"command_timeout": 30}
    if pooler_mode == "transaction":
        connect["statement_cache_size"] = 0
    extra: dict[str, Any] = {}
    if not reset:
        extra["reset"] = _keep_session
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, **connect, **extra
    )
    assert pool is not None
    # asyncpg's Pool takes no weak reference: closed pools are dropped as new ones come
    _pools[:] = [p for p in _pools if not p[0].is_closing()] + [(pool, dsn, connect)]
    return pool


_pools: list[tuple[asyncpg.Pool, str, dict[str, Any]]] = []
"""The open pools of this process with their connect arguments, for :func:`heal_pooler`."""
_switched = False


async def heal_pooler(exc: BaseException) -> bool:
    """On a :func:`pooler_symptom`: every pool of this process switches to unnamed statements
    (its connections are replaced as they are next used), said once in the log with the setting
    that avoids it. True when ``exc`` was such a symptom (the step may be retried)."""
    global _switched
    if not pooler_symptom(exc):
        return False
    for pool, dsn, connect in _pools:
        if not pool.is_closing() and connect.get("statement_cache_size") != 0:
            connect["statement_cache_size"] = 0
            pool.set_connect_args(dsn, **connect)
            await pool.expire_connections()  # replaced as they are next acquired
    if not _switched:
        _switched = True
        log.warning(
            "PostgreSQL answered as from behind a transaction-mode pooler (%s): switched to"
            " unnamed statements; set JOBSTREAM_DB_POOLER_MODE=transaction to start that way",
            type(exc).__name__,
        )
    return True
