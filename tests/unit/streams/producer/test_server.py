"""The standalone API server (jobstream api): open health routes, guarded jobs, its command."""

from __future__ import annotations

import click
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from jobstream.streams.cli import cli
from jobstream.streams.producer import server as api_server
from jobstream.streams.producer.server import ApiServer
from jobstream.streams.settings import Settings
from tests.unit.streams.producer.test_api import TOKEN, post_json, registry


async def test_the_standalone_server_serves_open_health_routes_and_guarded_jobs() -> None:
    settings = Settings(topic_prefix="tapi", api_token=SecretStr(TOKEN))
    server = ApiServer(
        settings,
        bootstrap="127.0.0.1:1",
        dsn="postgresql://nobody@127.0.0.1:1/x",
        registry=registry(),
    )
    async with TestClient(TestServer(server.app())) as client:
        assert (await client.get("/health")).status == 200
        ready = await client.get("/ready")
        assert ready.status == 503  # not listening yet: its pool and producer are not started
        server.ready.set()
        assert (await client.get("/ready")).status == 200
        metrics = await client.get("/metrics")
        assert metrics.status == 200
        assert "jobstream_api_requests_total" in await metrics.text()
        assert (await post_json(client, {"type": "echo"})).status == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        no_store = await client.get("/jobs/x", headers=auth)
        assert no_store.status == 503


def test_the_cli_has_an_api_command_with_host_and_port() -> None:
    assert cli.get_command(click.Context(cli), "api") is api_server.api_command
    ctx = api_server.api_command.make_context("api", ["--host", "0.0.0.0", "--port", "0"])
    assert (ctx.params["host"], ctx.params["port"]) == ("0.0.0.0", 0)
    defaults = api_server.api_command.make_context("api", [])
    assert (defaults.params["host"], defaults.params["port"]) == (None, None)  # then the settings
