"""The replica's HTTP server: liveness, readiness, Prometheus metrics and the producer API.

Every refusal of the API and of aiohttp's router (unknown path or method) is JSON
(:func:`jobstream.streams.producer.api.json_errors`); ``/metrics`` may need a token or live on
a port of its own (:mod:`jobstream.streams.scrape`).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiohttp import web

from jobstream.streams.httpserver import HttpLimits, start_http_server
from jobstream.streams.producer.api import ApiRuntime, api_routes, json_errors
from jobstream.streams.scrape import mount_metrics


class Replica(ApiRuntime, Protocol):
    """What the health routes read of a replica: satisfied by
    :class:`jobstream.streams.worker.runtime.Runtime`, which starts this server."""

    @property
    def ready(self) -> asyncio.Event: ...
    @property
    def joined(self) -> asyncio.Event: ...
    @property
    def draining(self) -> asyncio.Event: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def running(self) -> int: ...
    def degraded(self) -> dict[str, float]: ...


def health_routes(runtime: Replica) -> list[web.RouteDef]:
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        stuck = runtime.degraded()
        ok = (
            runtime.ready.is_set()
            and runtime.joined.is_set()
            and not runtime.draining.is_set()
            and not stuck
        )
        body: dict[str, object] = {
            "ready": ok,
            "in_flight": runtime.in_flight,
            "running": runtime.running,
        }
        if stuck:
            # a durable step (row write, publish) keeps failing past its deadline
            body["degraded"] = {step: round(s, 1) for step, s in stuck.items()}
        return web.json_response(body, status=200 if ok else 503)

    return [web.get("/health", health), web.get("/ready", ready)]


async def start_web(runtime: Replica) -> web.AppRunner:
    """Serves the health routes and the producer API under the configured HTTP limits."""
    s = runtime.settings
    app = web.Application(client_max_size=s.api_max_body_bytes, middlewares=[json_errors])
    app.add_routes(health_routes(runtime))
    app.add_routes(api_routes(runtime))
    mount_metrics(app, s, lambda: runtime.metrics.registry)
    return await start_http_server(
        app, host=s.web_host, port=s.web_port, limits=HttpLimits.from_settings(s)
    )
