"""``python -m jobstream.streams.dev.bench.console``: the console's pages against a
million-row jobs table.

Creates a throw-away database on the server of ``JOBSTREAM_DATABASE_URL`` (or the local
stack's), applies the migrations, fills ``jobs`` with generated rows spread over the last
``--hours`` hours, starts the console on it and times each page and API call over HTTP
(median and worst of ``--repeat`` requests), then prints each page query's plan from
``EXPLAIN (ANALYZE, BUFFERS)``. The database is dropped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from jobstream.streams.console.queries import JobFilter, decode_cursor, jobs_page_sql
from jobstream.streams.settings import Settings

FILL = """
INSERT INTO jobs (job_id, type, status, attempt, result, error, error_class, source, worker,
                  executions, created_at, finished_at, updated_at)
SELECT 'bench-' || lpad(i::text, 8, '0'),
       (ARRAY['echo', 'sleep', 'llm.chat', 'http.webhook'])[1 + i % 4],
       CASE WHEN i % 50 = 0 THEN 'dead_lettered' WHEN i % 20 = 0 THEN 'retrying'
            ELSE 'succeeded' END,
       1 + (i % 20 = 0)::int,
       CASE WHEN i % 50 <> 0 THEN '{"ok": true}'::jsonb END,
       CASE WHEN i % 50 = 0 THEN 'boom' END,
       CASE WHEN i % 50 = 0 THEN 'FatalError' END,
       'bench',
       'worker-' || (i % 8),
       1,
       t - interval '1 second' * (0.05 + (i % 97) / 100.0),
       t,
       t
FROM (SELECT i, $2::timestamptz - ($3::float8 * i / $1) * interval '1 hour' AS t
      FROM generate_series(1, $1) AS i) AS g
"""


def _database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def _timed(session: aiohttp.ClientSession, url: str, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        async with session.get(url, allow_redirects=False) as r:
            await r.read()
            assert r.status in (200, 303), f"{url}: {r.status}"
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times)


async def run(rows: int, hours: float, repeat: int, keep: bool) -> int:
    from jobstream.streams.console.server import start, url_of
    from jobstream.streams.pg.migrations import migrate

    settings = Settings()
    if settings.database_url is None or settings.kafka_bootstrap is None:
        from jobstream.streams.dev.stack import resolve_services

        bootstrap, dsn = await resolve_services(settings)
    else:
        bootstrap, dsn = settings.kafka_bootstrap, settings.database_url.get_secret_value()
    name = f"bench_console_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    own = _database(dsn, name)
    try:
        conn = await asyncpg.connect(own)
        await migrate(conn)
        now = datetime.now(UTC)
        t0 = time.perf_counter()
        await conn.execute(FILL, rows, now, hours)
        await conn.execute("VACUUM (ANALYZE) jobs")
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('jobs'))")
        print(f"{rows:,} rows over {hours:g} h in {time.perf_counter() - t0:.1f}s; jobs is {size}")
        console_settings = settings.model_copy(
            update={"console_dev_open": True, "topic_prefix": name, "group_id": name}
        )
        runner, pool = await start(
            console_settings, bootstrap=bootstrap, dsn=own, host="127.0.0.1", port=0
        )
        base = url_of(runner).rstrip("/")
        deep = await conn.fetchrow(
            "SELECT updated_at, job_id FROM jobs ORDER BY updated_at DESC, job_id DESC"
            " OFFSET $1 LIMIT 1",
            rows // 2,
        )
        assert deep is not None, "the benchmark's jobs table is empty"
        from jobstream.streams.console.queries import encode_cursor

        middle = encode_cursor(deep["updated_at"], deep["job_id"])
        since = (now - timedelta(hours=hours / 2)).isoformat()
        pages = {
            "overview page (1h, rendered)": "/",
            "api/overview?window=1h": "/api/overview?window=1h",
            "api/overview?window=1d": "/api/overview?window=1d",
            "jobs page 1": "/jobs",
            "jobs page at row 500,000 (cursor)": f"/jobs?after={middle}",
            "jobs status=dead_lettered": "/jobs?status=dead_lettered",
            "jobs type=llm.chat worker=worker-3": "/jobs?type=llm.chat&worker=worker-3",
            "jobs since=half-window": "/jobs?since=" + since.replace("+", "%2B"),
            "jobs worker=worker-5 limit=200": "/jobs?worker=worker-5&limit=200",
            "jobs id lookup (redirect)": "/jobs?id=bench-00500000",
            "job detail": "/jobs/bench-00500000",
            "api/jobs status=retrying": "/api/jobs?status=retrying",
        }
        print(f"\n{'page':<40} {'median ms':>10} {'worst ms':>9}   ({repeat} requests each)")
        async with aiohttp.ClientSession() as session:
            await _timed(session, base + "/", 2)  # warm the pool and the caches
            for label, path in pages.items():
                med, worst = await _timed(session, base + path, repeat)
                print(f"{label:<40} {med:>10.1f} {worst:>9.1f}")
        await runner.cleanup()
        await pool.close()

        print("\nplans (EXPLAIN ANALYZE; a backfill counts the stored minutes once):")
        after = decode_cursor(middle)
        shapes: list[tuple[str, JobFilter, Any]] = [
            ("page 1", JobFilter(), None),
            ("page at row 500,000", JobFilter(), after),
            ("status=dead_lettered", JobFilter(status="dead_lettered"), None),
            ("type+worker", JobFilter(type="llm.chat", worker="worker-3"), None),
        ]
        for label, flt, cursor in shapes:
            sql, args = jobs_page_sql(flt, cursor, 50)
            plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
            top = json.loads(plan)[0] if isinstance(plan, str) else plan[0]
            node = top["Plan"]
            while node.get("Plans") and node["Node Type"] == "Limit":
                node = node["Plans"][0]
            print(
                f"  {label:<22} {node['Node Type']} on {node.get('Index Name', '-')}:"
                f" {top['Execution Time']:.2f} ms"
            )
        for window in ("1 hour", "1 day"):
            plan = await conn.fetchval(
                "EXPLAIN (ANALYZE, FORMAT JSON) SELECT date_trunc('minute', finished_at),"
                " count(*) FILTER (WHERE status = 'succeeded'),"
                " percentile_cont(0.95) WITHIN GROUP"
                " (ORDER BY extract(epoch FROM finished_at - created_at))"
                f" FROM jobs WHERE finished_at >= now() - interval '{window}' GROUP BY 1",
            )
            top = json.loads(plan)[0] if isinstance(plan, str) else plan[0]
            scan = top["Plan"]
            while scan.get("Plans"):
                scan = scan["Plans"][0]
            print(
                f"  backfill {window:<13} {scan['Node Type']} on {scan.get('Index Name', '-')}:"
                f" {top['Execution Time']:.2f} ms ({scan.get('Actual Rows', 0):,} rows)"
            )
        await conn.close()
    finally:
        if not keep:
            admin = await asyncpg.connect(dsn)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
        else:
            print(f"kept database {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobstream.streams.dev.bench.console", description=__doc__
    )
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--hours", type=float, default=22.0, help="spread the rows over this long")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--keep", action="store_true", help="keep the throw-away database")
    args = p.parse_args(argv)
    return asyncio.run(run(args.rows, args.hours, args.repeat, args.keep))


if __name__ == "__main__":
    sys.exit(main())
