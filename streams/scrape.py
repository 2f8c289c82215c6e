"""``GET /metrics`` for Prometheus: open, behind a bearer token, or on a port of its own.

The metrics name job types, workers, upstream keys and queue depths: nothing secret, but a map
of the system for whoever can reach the web port, which also serves the producer API. Two ways
to close it, either or both:

* ``JOBSTREAM_METRICS_TOKEN``: every scrape must send ``Authorization: Bearer <token>``
  (Prometheus: ``authorization.credentials``; the chart wires it into its ServiceMonitor).
* ``JOBSTREAM_METRICS_PORT``: ``/metrics`` moves to a server of its own on that port (same
  address, same HTTP limits) and leaves the web port, so a NetworkPolicy can admit Prometheus to
  that port alone. Its server starts and stops with the web server it belongs to.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from jobstream.streams.httpserver import HttpLimits, start_http_server
from jobstream.streams.settings import Settings

log = logging.getLogger(__name__)

Registry = Callable[[], CollectorRegistry]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METRICS_RUNNER = web.AppKey("metrics_runner", web.AppRunner)
"""The runner of the separate metrics server, when there is one (its ``addresses`` say where)."""


def metrics_handler(settings: Settings, registry: Registry) -> Handler:
    token = settings.metrics_token.get_secret_value().encode() if settings.metrics_token else None

    async def metrics(request: web.Request) -> web.Response:
        if token is not None and not _authorized(request, token):
            return web.json_response(
                {"error": "unauthorized", "detail": "send 'Authorization: Bearer <metrics token>'"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="jobstream-metrics"'},
            )
        body = generate_latest(registry())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics


def _authorized(request: web.Request, token: bytes) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    # bytes for compare_digest; header bytes that are not UTF-8 arrive as lone surrogates
    given = presented.strip().encode("utf-8", "surrogatepass")
    return scheme.lower() == "bearer" and hmac.compare_digest(given, token)


def mount_metrics(app: web.Application, settings: Settings, registry: Registry) -> None:
    """``/metrics`` on ``app``, or, with ``metrics_port`` set, on a server of its own that
    starts when ``app`` starts and stops when ``app`` is cleaned up."""
    handler = metrics_handler(settings, registry)
    if settings.metrics_port is None:
        app.router.add_get("/metrics", handler)
        return
    port = settings.metrics_port

    async def start(app: web.Application) -> None:
        own = web.Application()
        own.router.add_get("/metrics", handler)
        app[METRICS_RUNNER] = await start_http_server(
            own,
            host=settings.web_host,
            port=port,
            limits=HttpLimits.from_settings(settings),
            shutdown_timeout_s=1.0,
        )

    async def stop(app: web.Application) -> None:
        runner = app.get(METRICS_RUNNER)
        if runner is not None:
            await runner.cleanup()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
