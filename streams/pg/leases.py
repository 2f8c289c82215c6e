"""Work one replica at a time does, held through a lease row renewed while it works.

Not a session advisory lock and no LISTEN: both break behind a transaction-mode pooler, where
consecutive statements may run on different server connections. A holder that dies stops
renewing; its lease lapses and another replica takes the work over.
"""

from __future__ import annotations

import asyncpg

_TAKE = """
INSERT INTO leases AS l (name, holder, until, acquired_at)
VALUES ($1, $2, now() + make_interval(secs => $3), now())
ON CONFLICT (name) DO UPDATE SET
    holder      = EXCLUDED.holder,
    until       = EXCLUDED.until,
    acquired_at = CASE WHEN l.holder = EXCLUDED.holder THEN l.acquired_at ELSE now() END
WHERE l.holder = EXCLUDED.holder OR l.until < now()
RETURNING holder
"""

_GIVE_BACK = "UPDATE leases SET until = now() WHERE name = $1 AND holder = $2"

_READ = "SELECT holder, until, acquired_at, until > now() AS live FROM leases WHERE name = $1"


async def take(pool: asyncpg.Pool, name: str, holder: str, ttl_s: float) -> bool:
    """Take or renew the lease ``name`` for ``ttl_s`` seconds; False while another holds it."""
    return await pool.fetchval(_TAKE, name, holder, ttl_s) is not None


async def give_back(pool: asyncpg.Pool, name: str, holder: str) -> None:
    """End our lease now (a drain): another replica takes the work over at once."""
    await pool.execute(_GIVE_BACK, name, holder)


async def read(pool: asyncpg.Pool, name: str) -> dict[str, object] | None:
    """The lease's holder, its end and whether it is live (``jobstream doctor``)."""
    row = await pool.fetchrow(_READ, name)
    return dict(row) if row is not None else None
