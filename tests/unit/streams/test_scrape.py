"""``/metrics`` behind a token, or on a port of its own, over real servers."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from jobstream.streams.httpserver import HttpLimits, start_http_server
from jobstream.streams.metrics import Metrics
from jobstream.streams.scrape import METRICS_RUNNER, mount_metrics
from jobstream.streams.settings import Settings

TOKEN = "metrics-token-7788"


async def get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, await r.text()


async def serve(settings: Settings, metrics: Metrics) -> web.AppRunner:
    app = web.Application()
    app.router.add_get("/health", lambda _: web.json_response({"status": "ok"}))  # type: ignore[arg-type,return-value]
    mount_metrics(app, settings, lambda: metrics.registry)
    return await start_http_server(app, host="127.0.0.1", port=0, limits=HttpLimits())


async def test_without_settings_metrics_are_open_on_the_web_port() -> None:
    runner = await serve(Settings(web_host="127.0.0.1"), Metrics())
    try:
        status, text = await get(f"http://127.0.0.1:{runner.addresses[0][1]}/metrics")
    finally:
        await runner.cleanup()
    assert status == 200
    assert "jobstream_" in text


@pytest.mark.parametrize("presented", [None, "wrong", f"{TOKEN}x", TOKEN[:-1]])
async def test_a_token_is_required_when_configured(presented: str | None) -> None:
    runner = await serve(Settings(metrics_token=SecretStr(TOKEN)), Metrics())
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    try:
        status, text = await get(url, presented)
        ok_status, ok_text = await get(url, TOKEN)
    finally:
        await runner.cleanup()
    assert status == 401
    assert "jobstream_" not in text
    assert ok_status == 200
    assert "jobstream_" in ok_text


async def test_a_metrics_port_moves_metrics_off_the_web_port_and_stops_with_it() -> None:
    runner = await serve(Settings(web_host="127.0.0.1", metrics_port=0), Metrics())
    app = runner.app
    web_port = runner.addresses[0][1]
    metrics_port = app[METRICS_RUNNER].addresses[0][1]
    try:
        assert metrics_port != web_port
        assert (await get(f"http://127.0.0.1:{web_port}/metrics"))[0] == 404
        assert (await get(f"http://127.0.0.1:{web_port}/health"))[0] == 200
        status, text = await get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        assert "jobstream_" in text
        assert (await get(f"http://127.0.0.1:{metrics_port}/health"))[0] == 404
    finally:
        await runner.cleanup()
    with pytest.raises(aiohttp.ClientConnectorError):
        await get(f"http://127.0.0.1:{metrics_port}/metrics")
