"""The producer API against the real Kafka and PostgreSQL: standalone, in a worker's web server,
and as the ``jobstream api`` process (SIGTERM included)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from pydantic import SecretStr

from jobstream.streams.dev.replicas import free_port
from jobstream.streams.producer.server import ApiServer
from jobstream.streams.settings import Settings
from jobstream.streams.worker.runtime import Runtime
from tests.integration.harness import ROOT, topic_reader, wait_for

pytestmark = pytest.mark.integration

TOKEN = "integration-token"

StartApi = Callable[..., Any]


@pytest.fixture
def settings_for(
    kafka_bootstrap: str, database_url: str, prefix: str, tmp_path: Path
) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        fields: dict[str, Any] = {
            "topic_prefix": prefix,
            "group_id": prefix,
            "kafka_bootstrap": kafka_bootstrap,
            "database_url": database_url,
            "partitions": 2,
            "state_dir": tmp_path / "state",
            "api_token": None,
            **overrides,
        }
        return Settings(**fields)

    return build


@pytest.fixture
async def start_api(
    kafka_bootstrap: str, database_url: str
) -> AsyncIterator[Callable[[Settings], Any]]:
    """Starts an :class:`ApiServer` on a free port; returns its base URL."""
    servers: list[ApiServer] = []

    async def start(settings: Settings) -> str:
        server = ApiServer(settings, bootstrap=kafka_bootstrap, dsn=database_url)
        servers.append(server)
        await server.connect()
        [url] = await server.listen("127.0.0.1", 0)
        return url

    yield start
    for server in servers:
        await server.stop()


async def test_a_posted_job_is_on_the_main_topic_as_posted(
    start_api: StartApi,
    settings_for: Callable[..., Settings],
    http: aiohttp.ClientSession,
    kafka_bootstrap: str,
    prefix: str,
) -> None:
    base = await start_api(settings_for())
    posted = {
        "type": "sleep",
        "payload": {"seconds": 0.5},
        "id": f"{prefix}-one",
        "metadata": {"origin": "test"},
        "partition_key": "tenant-9",
    }
    async with http.post(f"{base}/jobs", json=posted) as resp:
        assert resp.status == 202
        assert await resp.json() == {"id": posted["id"], "status": "queued"}
        location = resp.headers["Location"]
    assert location == f"/jobs/{posted['id']}"

    async with topic_reader(kafka_bootstrap, prefix) as reader:
        [record] = await reader.wait_count(1)
        await reader.poll()
        assert len(reader.records) == 1
    assert record.key == b"tenant-9"
    event = json.loads(record.value)
    assert {k: event[k] for k in posted} == posted
    assert (event["v"], event["attempt"], event["history"]) == (1, 1, [])

    # no worker runs here, so the job has no row: the Location answers "unknown" for now
    async with http.get(f"{base}{location}") as resp:
        assert resp.status == 404
        assert await resp.json() == {
            "id": posted["id"],
            "status": "unknown",
            "detail": "no row yet: the job may be queued (in Kafka or waiting for a slot),"
            " or the id was never submitted",
        }


async def test_a_batch_lands_in_the_order_it_was_sent(
    start_api: StartApi,
    settings_for: Callable[..., Settings],
    http: aiohttp.ClientSession,
    kafka_bootstrap: str,
    prefix: str,
) -> None:
    base = await start_api(settings_for())
    jobs = [{"type": "echo", "payload": {"n": i}, "partition_key": "one-key"} for i in range(50)]
    async with http.post(f"{base}/jobs", json=jobs) as resp:
        assert resp.status == 202
        ids = (await resp.json())["ids"]
    assert len(set(ids)) == 50

    async with topic_reader(kafka_bootstrap, prefix) as reader:
        await reader.wait_count(50)
        events = reader.json()
    assert [e["id"] for e in events] == ids  # one key, one partition: the order is kept
    assert [e["payload"] for e in events] == [j["payload"] for j in jobs]


async def test_a_stored_row_is_answered_with_its_fields(
    start_api: StartApi,
    settings_for: Callable[..., Settings],
    http: aiohttp.ClientSession,
    pg_pool: asyncpg.Pool,
    prefix: str,
) -> None:
    base = await start_api(settings_for())
    job_id = f"{prefix}-row"
    created = datetime(2026, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
    finished = datetime(2026, 2, 3, 4, 5, 9, tzinfo=UTC)
    await pg_pool.execute(
        "INSERT INTO jobs (job_id, type, status, attempt, result, error, error_class, source,"
        " worker, executions, created_at, finished_at)"
        " VALUES ($1, 'llm.chat', 'dead_lettered', 3, $2, 'upstream said no', 'FatalError',"
        " 'main', 'w7', 4, $3, $4)",
        job_id,
        {"partial": [1, 2]},
        created,
        finished,
    )
    try:
        async with http.get(f"{base}/jobs/{job_id}") as resp:
            assert resp.status == 200
            body = await resp.json()
    finally:
        await pg_pool.execute("DELETE FROM jobs WHERE job_id = $1", job_id)

    assert body["id"] == job_id
    assert body["type"] == "llm.chat"
    assert body["status"] == "dead_lettered"
    assert body["attempt"] == 3
    assert body["result"] == {"partial": [1, 2]}
    assert (body["error"], body["error_class"]) == ("upstream said no", "FatalError")
    assert (body["worker"], body["source"], body["replay_of"]) == ("w7", "main", None)
    assert body["executions"] == 4
    assert datetime.fromisoformat(body["created_at"]) == created
    assert datetime.fromisoformat(body["finished_at"]) == finished
    assert datetime.fromisoformat(body["updated_at"]).tzinfo is not None


async def test_an_unknown_id_is_404(
    start_api: StartApi,
    settings_for: Callable[..., Settings],
    http: aiohttp.ClientSession,
    prefix: str,
) -> None:
    base = await start_api(settings_for())
    async with http.get(f"{base}/jobs/{prefix}-never") as resp:
        assert resp.status == 404
        body = await resp.json()
    assert (body["id"], body["status"]) == (f"{prefix}-never", "unknown")


async def test_with_a_token_configured_only_the_token_gets_in(
    start_api: StartApi,
    settings_for: Callable[..., Settings],
    http: aiohttp.ClientSession,
    kafka_bootstrap: str,
    prefix: str,
) -> None:
    base = await start_api(settings_for(api_token=SecretStr(TOKEN)))
    async with http.post(f"{base}/jobs", json={"type": "echo", "id": f"{prefix}-x"}) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"] == "unauthorized"
    async with http.get(f"{base}/jobs/{prefix}-x") as resp:
        assert resp.status == 401
    for path in ("/health", "/ready", "/metrics"):
        async with http.get(f"{base}{path}") as resp:
            assert resp.status == 200, path

    auth = {"Authorization": f"Bearer {TOKEN}"}
    posted = {"type": "echo", "id": f"{prefix}-ok"}
    async with http.post(f"{base}/jobs", json=posted, headers=auth) as resp:
        assert resp.status == 202
    async with topic_reader(kafka_bootstrap, prefix) as reader:
        await reader.wait_count(1)
        await reader.poll()
        assert [e["id"] for e in reader.json()] == [f"{prefix}-ok"]  # the 401 published nothing


async def test_the_worker_web_server_mounts_the_api(
    settings_for: Callable[..., Settings],
    http: aiohttp.ClientSession,
    kafka_bootstrap: str,
    database_url: str,
    pg_pool: asyncpg.Pool,
    prefix: str,
) -> None:
    """The worker's Runtime (not faust) with its web server: POST and GET next to /health."""
    port = free_port()
    runtime = Runtime(
        settings_for(web_port=port, worker_name=f"{prefix}-w"),
        bootstrap=kafka_bootstrap,
        dsn=database_url,
    )
    await runtime.start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with http.post(f"{base}/jobs", json={"type": "echo", "id": f"{prefix}-w"}) as resp:
            assert resp.status == 202
        async with http.get(f"{base}/jobs/{prefix}-w") as resp:
            assert resp.status == 404
        async with http.get(f"{base}/health") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/metrics") as resp:
            assert 'jobstream_api_requests_total{route="submit",status="202"} 1.0' in (
                await resp.text()
            )
    finally:
        await runtime.stop()
    async with topic_reader(kafka_bootstrap, prefix) as reader:
        await reader.wait_count(1)
        assert reader.json()[0]["id"] == f"{prefix}-w"


async def test_jobstream_api_serves_and_exits_0_on_sigterm(
    http: aiohttp.ClientSession,
    kafka_bootstrap: str,
    database_url: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = api_env(kafka_bootstrap, database_url, prefix, tmp_path)
    env["JOBSTREAM_WEB_PORT"] = "1"  # the flag must win over the setting
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "jobstream", "api", "--host", "127.0.0.1", "--port", str(port)),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output = asyncio.ensure_future(proc.stdout.read())  # drained all along: a full pipe blocks
    try:

        async def ready() -> bool:
            if proc.returncode is not None:
                raise AssertionError(f"api exited early:\n{(await output).decode()}")
            try:
                async with http.get(f"http://127.0.0.1:{port}/ready") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(ready, timeout=60, what="jobstream api ready")
        job = {"type": "echo", "id": f"{prefix}-cli"}
        async with http.post(f"http://127.0.0.1:{port}/jobs", json=job) as resp:
            assert resp.status == 202

        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=30)
        text = (await output).decode()
        assert code == 0, text
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert f"listening on http://127.0.0.1:{port}" in text
    assert "Traceback" not in text
    async with topic_reader(kafka_bootstrap, prefix) as reader:
        await reader.wait_count(1)
        assert reader.json()[0]["id"] == f"{prefix}-cli"


def api_env(bootstrap: str, database_url: str, prefix: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSTREAM_")}
    env.update(
        {
            "JOBSTREAM_KAFKA_BOOTSTRAP": bootstrap,
            "JOBSTREAM_DATABASE_URL": database_url,
            "JOBSTREAM_TOPIC_PREFIX": prefix,
            "JOBSTREAM_STATE_DIR": str(tmp_path / "state"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


async def run_api(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "jobstream", "api", "--host", "127.0.0.1", "--port", "0"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def test_jobstream_api_exits_3_when_kafka_is_unreachable(
    database_url: str, prefix: str, tmp_path: Path
) -> None:
    env = api_env(f"127.0.0.1:{free_port()}", database_url, prefix, tmp_path)
    proc = await run_api(env)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 3, out.decode()
    assert "cannot reach Kafka/PostgreSQL" in out.decode()


async def test_jobstream_api_exits_0_on_sigterm_while_still_connecting(
    database_url: str, prefix: str, tmp_path: Path
) -> None:
    """A broker that accepts connections and never answers: start-up hangs until SIGTERM."""
    connected = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        connected.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proc = await run_api(api_env(f"127.0.0.1:{port}", database_url, prefix, tmp_path))
    try:
        await asyncio.wait_for(connected.wait(), timeout=30)
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=15)
        assert proc.returncode == 0, out.decode()
        assert "Traceback" not in out.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
