"""The HTTP limits on a real worker's web port (a worker process on the real Kafka and
PostgreSQL): stalled headers and bodies are cut off, a client leaving mid-body is no error.

The mechanics (every phase, 500 connections, the cap) are the unit tier's
(tests/unit/test_httpserver.py); this proves the worker really serves through them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import aiohttp

from tests.integration.harness import WorkerFactory, wait_for

JOBS_1000 = (
    b"POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n"
)


async def until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    data = b""
    async with asyncio.timeout(within):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                data += chunk
    return data


async def test_the_worker_cuts_off_stalled_requests_and_shrugs_off_leaving_clients(
    workers: WorkerFactory, http: aiohttp.ClientSession
) -> None:
    worker = workers.start(
        JOBSTREAM_HTTP_HEADER_TIMEOUT_S="1",
        JOBSTREAM_HTTP_BODY_TIMEOUT_S="1",
        JOBSTREAM_HTTP_MAX_CONNECTIONS="200",
    )
    await worker.wait_assigned()
    log_from = len(worker.log_text())
    port = worker.web_port

    # headers that never end: closed, nothing answered
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: a")
    assert await until_closed(reader, within=10) == b""
    writer.close()

    # one byte of a 1,000-byte job: a JSON 408, then the connection closes
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(JOBS_1000 + b"{")
    answer = await until_closed(reader, within=10)
    assert answer.startswith(b"HTTP/1.1 408")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "body_timeout"
    writer.close()

    # a client that vanishes mid-body: counted as 499, never as a 500
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(JOBS_1000 + b'{"type": "echo", "pay')
    await writer.drain()
    writer.transport.abort()

    async def submit_counts() -> dict[str, float] | None:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
        found = re.findall(
            r'jobstream_api_requests_total\{route="submit",status="(\d+)"\} (\S+)', text
        )
        counts = {status: float(n) for status, n in found}
        return counts if "499" in counts else None

    counts = await wait_for(submit_counts, timeout=10, what="the disconnect in the metrics")
    assert counts == {"408": 1.0, "499": 1.0}

    # and the port keeps serving
    async with http.get(f"http://127.0.0.1:{port}/health") as r:
        assert r.status == 200
    since_ready = worker.log_text()[log_from:]
    assert " ERROR " not in since_ready
    assert "Traceback" not in since_ready
