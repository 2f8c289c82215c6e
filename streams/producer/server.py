"""``jobstream api``: the producer API without a worker, for deployments that scale it apart.

It has its own producer, pool and job-type registry, and its own /health, /ready and /metrics
(the worker's versions report on consumer state this process does not have).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable
from typing import Any

import asyncpg
import click
from aiohttp import web

from jobstream.streams.command import (
    API,
    HTTP,
    JOB_TYPES,
    KAFKA,
    LOGS,
    POOL,
    POSTGRES,
    TOPICS,
    app_option,
    command,
    names,
    with_settings,
)
from jobstream.streams.exits import Exit
from jobstream.streams.httpserver import HttpLimits, start_http_server
from jobstream.streams.metrics import Metrics
from jobstream.streams.pg.results import fetch_job
from jobstream.streams.producer.api import JobTypes, api_routes, json_errors
from jobstream.streams.scrape import mount_metrics
from jobstream.streams.services import ServiceUnavailable, resolve
from jobstream.streams.settings import Settings
from jobstream.streams.topics import TopicNames, topic_names

log = logging.getLogger(__name__)


class PgJobLookup:
    """``get(job_id)`` straight from the pool: the API reads single rows and never writes, so
    it needs none of :class:`jobstream.streams.pg.results.ResultStore`'s batching."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, job_id: str) -> dict[str, Any] | None:
        return await fetch_job(self._pool, job_id)


class ServiceUnreachable(Exception):
    """Raised by :meth:`ApiServer.connect` when Kafka or PostgreSQL cannot be reached."""


class ApiServer:
    """The API without a worker: its own producer, pool and registry, and its own /health,
    /ready and /metrics (the worker's versions report on consumer state it does not have)."""

    def __init__(
        self,
        settings: Settings,
        *,
        bootstrap: str,
        dsn: str,
        registry: JobTypes | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        from jobstream.agents.catalog import default_registry
        from jobstream.streams.kafka.publisher import Publisher
        from jobstream.streams.kafka.security import client_options

        self.settings = settings
        self.bootstrap = bootstrap
        self.dsn = dsn
        self.topics: TopicNames = topic_names(settings.topic_prefix, settings.retry_tiers_s)
        self.registry: JobTypes = registry or default_registry(settings)
        self.metrics = metrics or Metrics()
        self.publisher = Publisher(
            bootstrap,
            client_id=f"jobstream-api-{settings.worker_name}",
            options=client_options(settings),
        )
        self.pool: asyncpg.Pool | None = None
        self.store: PgJobLookup | None = None
        self.ready = asyncio.Event()
        self.runner: web.AppRunner | None = None

    async def connect(self) -> None:
        """Topics, schema, producer."""
        from jobstream.streams.setup import prepare

        try:
            self.pool = await prepare(
                self.settings, bootstrap=self.bootstrap, dsn=self.dsn, topics=self.topics
            )
            self.store = PgJobLookup(self.pool)
            await self.publisher.start()
        except Exception as exc:
            from jobstream.streams.services import explain

            line = await explain(exc, self.settings, self.bootstrap)  # names the setting
            raise ServiceUnreachable(line or f"{type(exc).__name__}: {exc}") from exc

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.api_max_body_bytes, middlewares=[json_errors]
        )
        app.add_routes(self.health_routes())
        app.add_routes(api_routes(self))
        mount_metrics(app, self.settings, lambda: self.metrics.registry)
        if self.settings.console_enabled and self.pool is not None:
            from jobstream.streams.console.server import console_app  # tokens required when mounted

            console = console_app(
                self.settings, bootstrap=self.bootstrap, pool=self.pool, host=None, base="/console"
            )
            app.add_subapp("/console", console)
        return app

    async def listen(self, host: str, port: int) -> list[str]:
        """Starts serving; returns the URLs bound (port 0 picks a free one)."""
        runner = await start_http_server(
            self.app(),
            host=host,
            port=port,
            limits=HttpLimits.from_settings(self.settings),
            shutdown_timeout_s=self.settings.shutdown_grace_s,
        )
        self.runner = runner
        self.ready.set()
        return [_url(addr) for addr in runner.addresses]

    async def stop(self) -> None:
        """Unready first, then stop accepting and let in-flight requests finish (bounded by
        ``shutdown_grace_s``), then flush the producer and close the pool."""
        self.ready.clear()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        await self.publisher.stop()
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        self.store = None

    def health_routes(self) -> list[web.RouteDef]:
        async def health(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def ready(_: web.Request) -> web.Response:
            ok = self.ready.is_set()
            return web.json_response({"ready": ok}, status=200 if ok else 503)

        return [web.get("/health", health), web.get("/ready", ready)]


def _url(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(settings: Settings, bootstrap: str, dsn: str, host: str, port: int) -> int:
    """Runs until SIGTERM or SIGINT, then shuts down cleanly and returns the exit code."""
    from jobstream.models.errors import ConfigurationError

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server: ApiServer | None = None
    try:
        try:
            server = ApiServer(settings, bootstrap=bootstrap, dsn=dsn)
        except ConfigurationError as exc:
            print(f"invalid configuration: {exc}", file=sys.stderr)
            return Exit.USAGE
        try:
            if not await _unless_stopped(server.connect(), stop):
                return Exit.OK  # a signal while still connecting: nothing to drain
        except ServiceUnreachable as exc:
            print(f"cannot reach Kafka/PostgreSQL: {exc}", file=sys.stderr)
            return Exit.UNREACHABLE
        try:
            urls = await server.listen(host, port)
        except OSError as exc:
            print(f"cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return Exit.FAILED
        print(f"jobstream api listening on {', '.join(urls)}", flush=True)
        await stop.wait()
        log.info("signal received: shutting down the API server")
        return Exit.OK
    finally:
        if server is not None:
            await server.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Runs ``work`` unless ``stop`` is set first (then cancels it); True when it finished.

    Connecting to a broker that is down can take a long time, and a SIGTERM must not wait
    for it (an orchestrator sends SIGKILL soon after).
    """
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        task.result()  # raises what connect raised
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return False


API_VARIABLES = names(
    KAFKA,
    POSTGRES,
    POOL,
    TOPICS,
    JOB_TYPES,
    API,
    HTTP,
    ("console_enabled", "shutdown_grace_s"),
    LOGS,
)


@command(
    "api",
    variables=API_VARIABLES,
    short_help="run the producer HTTP API on its own (POST /jobs, GET /jobs/{id})",
    help="Standalone producer API with its own Kafka producer and PostgreSQL pool, for "
    "deployments that scale it apart from the workers. Stops cleanly on SIGTERM.",
)
@click.option("--host", default=None, help="bind address (default: JOBSTREAM_WEB_HOST)")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="port, 0 for any free one (default: JOBSTREAM_WEB_PORT)",
)
@app_option
@with_settings
def api_command(settings: Settings, host: str | None, port: int | None) -> int:
    from jobstream.streams.observability import configure_logging, init_sentry

    configure_logging(settings.log_level)
    init_sentry(settings)
    try:
        bootstrap, dsn = resolve(settings)
    except ServiceUnavailable as exc:
        print(exc, file=sys.stderr)
        return Exit.UNREACHABLE
    host = host if host is not None else settings.web_host
    port = port if port is not None else settings.web_port
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(settings, bootstrap, dsn, host, port))
    return Exit.OK
