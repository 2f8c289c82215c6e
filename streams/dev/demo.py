"""``make demo``: the whole thing on this machine, end to end, with a progress display.

Brings up (or reuses) the local Kafka + PostgreSQL, starts the fake OpenRouter server and
worker replicas, submits a batch of jobs, shows progress from the database, and prints how
many succeeded and how long it took. Nothing is mocked: the numbers are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
import uuid
from pathlib import Path

import asyncpg
from aiohttp import web

from jobstream.streams.console.server import start as start_console
from jobstream.streams.console.server import url_of
from jobstream.streams.dev.fake_openrouter import FakeConfig, FakeOpenRouter
from jobstream.streams.dev.replicas import Replica, free_port, replica_env
from jobstream.streams.dev.stack import resolve_services
from jobstream.streams.output import Progress
from jobstream.streams.polling import wait_until
from jobstream.streams.producer.client import JobClient
from jobstream.streams.settings import Settings


async def _demo(settings: Settings, jobs: int, job_type: str, replicas: int) -> int:
    print("jobstream demo")
    print("  starting or finding Kafka and PostgreSQL ...", flush=True)
    t0 = time.monotonic()
    bootstrap, dsn = await resolve_services(settings)
    print(f"  Kafka      {bootstrap}\n  PostgreSQL {dsn}   ({time.monotonic() - t0:.1f}s)")

    async with contextlib.AsyncExitStack() as teardown:  # released in reverse, last first
        codes: list[int | None] = []
        teardown.callback(
            lambda: print(
                f"  workers stopped (exit codes {codes}); the stack keeps running: make stack-down"
            )
        )
        fake = FakeOpenRouter(FakeConfig(latency_ms=50, latency_jitter_ms=20))
        fake_url = await fake.start()
        teardown.push_async_callback(fake.stop)
        print(f"  fake OpenRouter {fake_url}")

        run = uuid.uuid4().hex[:8]
        prefix = f"demo-{run}"
        log_dir = Path(settings.state_dir) / "demo"
        workers: list[Replica] = []
        teardown.callback(lambda: codes.extend(w.stop() for w in workers))
        for i in range(replicas):
            name = f"demo-{run}-{i + 1}"
            port = free_port()
            env = replica_env(
                bootstrap=bootstrap,
                dsn=dsn,
                name=name,
                web_port=port,
                extra={
                    "JOBSTREAM_TOPIC_PREFIX": prefix,
                    "JOBSTREAM_GROUP_ID": prefix,
                    "JOBSTREAM_STATE_DIR": str(settings.state_dir),
                    "JOBSTREAM_OPENROUTER_BASE_URL": fake_url,
                    "JOBSTREAM_OPENROUTER_API_KEY": "demo-key",
                    "JOBSTREAM_LOG_LEVEL": "WARNING",
                },
            )
            log_path = log_dir / f"{name}.log"
            workers.append(Replica(name=name, env=env, log_path=log_path, web_port=port).start())
        for w in workers:
            await w.wait_ready()
        print(f"  {replicas} worker replica(s) ready, topic {prefix!r}; logs in {log_dir}")
        runner, console_pool = await _start_console(settings, bootstrap, dsn, prefix)
        teardown.push_async_callback(console_pool.close)
        teardown.push_async_callback(runner.cleanup)
        print(f"  console    {url_of(runner)}  (dev mode: no login, on 127.0.0.1 only)")

        def payload(i: int) -> dict[str, object]:
            if job_type == "llm.chat":
                return {"messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": 8}
            return {"n": i}

        async with JobClient(bootstrap, topic_prefix=prefix) as client:
            started = time.monotonic()
            ids = await client.submit_many(
                [client.build(job_type, payload(i)) for i in range(jobs)]
            )
        print(f"  submitted {len(ids)} {job_type} jobs in {time.monotonic() - started:.2f}s")

        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        assert pool is not None
        teardown.push_async_callback(pool.close)
        query = (
            "SELECT status, count(*) FROM jobs WHERE job_id = ANY($1::text[])"
            " AND status IN ('succeeded', 'dead_lettered') GROUP BY status"
        )
        counts: dict[str, int] = {}
        with Progress(jobs, "  finished", file=sys.stdout) as progress:

            async def finished() -> bool:
                counts.clear()
                counts.update({r["status"]: r["count"] for r in await pool.fetch(query, ids)})
                progress.update(sum(counts.values()))
                return sum(counts.values()) >= jobs

            within_s = started + max(120.0, jobs / 5) - time.monotonic()
            with contextlib.suppress(TimeoutError):  # the summary says how many are unfinished
                await wait_until(finished, within_s=within_s, interval_s=0.25, what="the jobs")
        elapsed = time.monotonic() - started
        succeeded = counts.get("succeeded", 0)
        print(
            f"  done: {succeeded} succeeded, {counts.get('dead_lettered', 0)} dead-lettered,"
            f" {jobs - sum(counts.values())} unfinished, in {elapsed:.2f}s"
            f" ({sum(counts.values()) / elapsed:.1f} jobs/s end to end)"
        )
        if sys.stdin.isatty():
            print(f"  the console stays up at {url_of(runner)}; press Enter to stop")
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        return 0 if succeeded == jobs else 1


async def _start_console(
    settings: Settings, bootstrap: str, dsn: str, prefix: str
) -> tuple[web.AppRunner, asyncpg.Pool]:
    """The console on the demo's topics, open without login because it listens on loopback."""
    demo = settings.model_copy(
        update={
            "topic_prefix": prefix,
            "group_id": prefix,
            "console_host": "127.0.0.1",
            "console_dev_open": True,
        }
    )
    try:
        return await start_console(
            demo, bootstrap=bootstrap, dsn=dsn, host="127.0.0.1", port=settings.console_port
        )
    except OSError:  # the usual port is taken (another console): any free one
        return await start_console(demo, bootstrap=bootstrap, dsn=dsn, host="127.0.0.1", port=0)


def run_demo(settings: Settings, *, jobs: int, job_type: str, replicas: int) -> int:
    # Ctrl-C reaches the children too; let them drain instead of dying mid-batch
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return asyncio.run(_demo(settings, jobs, job_type, replicas))
    except KeyboardInterrupt:
        print("\n  interrupted")
        return 130
