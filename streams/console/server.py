"""``jobstream console``: the console as its own server, or as a sub-app of ``jobstream api``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import click
from aiohttp import web

from jobstream.streams.command import (
    CONSOLE,
    HTTP,
    KAFKA,
    POSTGRES,
    app_option,
    command,
    names,
    with_settings,
)
from jobstream.streams.console import params, rollup
from jobstream.streams.console.access import (
    BASE_KEY,
    POLICY_KEY,
    AccessPolicy,
    UnreadableBody,
    access_middleware,
    json_error,
    wants_json,
)
from jobstream.streams.console.context import Console
from jobstream.streams.console.control import routes as control_routes
from jobstream.streams.console.routes import CONSOLE_KEY, render, routes
from jobstream.streams.console.timed import timed_routes
from jobstream.streams.exits import Exit
from jobstream.streams.httpserver import HttpLimits, start_http_server
from jobstream.streams.services import ServiceUnavailable, resolve
from jobstream.streams.settings import Settings

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    """No framing, no sniffing, no caching of pages that show job data."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        _secure(request, exc)
        raise
    _secure(request, response)
    return response


def _secure(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if "/static/" not in request.path:
        response.headers.setdefault("Cache-Control", "no-store")


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bad input is a 400 that says why (JSON for the API, a page for pages); a database
    outage is a 503 that names no address or credential."""
    base = request.app[BASE_KEY]
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except (params.BadInput, UnreadableBody) as exc:
        if wants_json(request, base):
            raise json_error(400, str(exc)) from None
        return render(request, "error.html", status=400, message=str(exc))
    except web.HTTPException as exc:
        # the router's own refusals (unknown path or method): JSON under /api/ as well
        if not (400 <= exc.status < 500 and wants_json(request, base)):
            raise
        if exc.content_type == "application/json":
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return web.json_response({"error": exc.reason}, status=exc.status, headers=allow)
    except ConnectionResetError:
        raise  # the client left: streams.httpserver answers that
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        log.warning("console: database error on %s: %s", request.path, type(exc).__name__)
        raise json_error(503, f"PostgreSQL is unavailable ({type(exc).__name__})") from None


async def _warm_up(pool: asyncpg.Pool) -> None:
    try:
        await rollup.window(pool, "1d")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        log.warning("console: counting the last day failed (%s); done on request", exc)


def console_app(
    settings: Settings, *, bootstrap: str, pool: asyncpg.Pool, host: str | None, base: str = ""
) -> web.Application:
    """The console as an aiohttp application; ``base`` is its path when mounted as a sub-app.

    ``host`` is the address it listens on, for the access rule; None (a mounted console,
    whose host the parent owns) never counts as loopback, so tokens are required.
    """
    app = web.Application(middlewares=[_headers, _errors, access_middleware])
    app[POLICY_KEY] = AccessPolicy(settings, host if host is not None else "0.0.0.0")
    app[BASE_KEY] = base.rstrip("/")

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        app[CONSOLE_KEY] = await Console.open(settings, bootstrap=bootstrap, pool=pool)
        # count the day's finished minutes now, not on the first request for the day chart
        warm = asyncio.create_task(_warm_up(pool))
        yield
        warm.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await warm
        await app[CONSOLE_KEY].close()

    app.cleanup_ctx.append(lifecycle)
    app.add_routes(routes)
    app.add_routes(timed_routes)
    app.add_routes(control_routes)
    app.router.add_static("/static", STATIC, append_version=True)
    return app


async def listen(app: web.Application, settings: Settings, host: str, port: int) -> web.AppRunner:
    """The one place the standalone console starts serving (with the shared HTTP limits)."""
    return await start_http_server(
        app,
        host=host,
        port=port,
        limits=HttpLimits.from_settings(settings),
        shutdown_timeout_s=settings.shutdown_grace_s,
    )


def url_of(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def start(
    settings: Settings, *, bootstrap: str, dsn: str, host: str, port: int
) -> tuple[web.AppRunner, asyncpg.Pool]:
    """Pool, schema (the console's indexes are a migration), app, listening socket."""
    from jobstream.streams.pg.migrations import migrate
    from jobstream.streams.pg.pool import create_pool

    pool = await create_pool(dsn, min_size=1, max_size=max(2, settings.db_pool_max))
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        app = console_app(settings, bootstrap=bootstrap, pool=pool, host=host)
        runner = await listen(app, settings, host, port)
    except BaseException:
        await pool.close()
        raise
    return runner, pool


async def serve(settings: Settings, bootstrap: str, dsn: str, host: str, port: int) -> int:
    policy = AccessPolicy(settings, host)
    if policy.refusal is not None:
        print(policy.refusal, file=sys.stderr)
        return Exit.USAGE
    mode = policy.mode
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            runner, pool = await start(settings, bootstrap=bootstrap, dsn=dsn, host=host, port=port)
        except OSError as exc:
            print(f"cannot start the console on {host}:{port}: {exc}", file=sys.stderr)
            return Exit.FAILED
        print(f"jobstream console on {url_of(runner)} (access: {mode.value})", flush=True)
        await stop.wait()
        await runner.cleanup()
        await pool.close()
        return Exit.OK
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


@command(
    "console",
    variables=names(
        KAFKA,
        POSTGRES,
        ("db_pool_max", "topic_prefix", "group_id", "retry_tiers_s"),
        CONSOLE,
        HTTP,
        ("shutdown_grace_s", "log_level"),
    ),
    short_help="run the operator console (jobs, dead letters, replay, throughput, lag)",
    help="The operator web console. Access needs JOBSTREAM_CONSOLE_VIEWER_TOKEN and/or "
    "JOBSTREAM_CONSOLE_OPERATOR_TOKEN, or JOBSTREAM_CONSOLE_DEV_OPEN=true on a loopback "
    "address.",
)
@click.option("--host", default=None, help="bind address (default: JOBSTREAM_CONSOLE_HOST)")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="port, 0 for any (default: JOBSTREAM_CONSOLE_PORT)",
)
@app_option
@with_settings
def console_command(settings: Settings, host: str | None, port: int | None) -> int:
    from jobstream.streams.observability import configure_logging

    configure_logging(settings.log_level)
    host = host if host is not None else settings.console_host
    port = port if port is not None else settings.console_port
    refused = AccessPolicy(settings, host).refusal
    if refused is not None:
        print(refused, file=sys.stderr)
        return Exit.USAGE
    try:
        bootstrap, dsn = resolve(settings)
    except ServiceUnavailable as exc:
        print(exc, file=sys.stderr)
        return Exit.UNREACHABLE
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(settings, bootstrap, dsn, host, port))
    return Exit.OK
