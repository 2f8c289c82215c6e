"""Malformed requests to the real processes: a JSON 400 each, one WARNING line for all of them,
no traceback, no header value or body byte in the log (the worker's and ``jobstream api``'s).

aiohttp logs each request it cannot parse at ERROR with a traceback quoting the offending line
(``Authorization: Bearer <token>\\x01``) and answers a page quoting it again; 200 of them once
wrote 2,200 ERROR/traceback lines in 0.2 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from tests.integration.harness import ROOT, WorkerFactory, wait_for

TOKEN = "QuietTokenMarker4471"
BODY = "QuietBodyMarker5582"
MALFORMED = [
    f"GET /jobs/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\x01\r\n\r\n".encode(),
    f"GET /jobs/x HTTP/1.1\r\nX-{TOKEN} x: 1\r\n\r\n".encode(),
    b"POST /jobs HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
    + f"Authorization: Bearer {TOKEN}\r\n\r\nzz\r\n{BODY}\r\n0\r\n\r\n".encode(),
    b"POST /jobs HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    + f"4\r\n{BODY}\r\n0\r\n\r\n".encode(),
    f"GET /{BODY}\xff HTTP/1.1\r\nHost: t\r\n\r\n".encode("latin-1"),
]


async def hammer(port: int, n: int = 200) -> list[bytes]:
    answers = []
    for i in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(MALFORMED[i % len(MALFORMED)])
        await writer.drain()
        answers.append(await asyncio.wait_for(reader.read(), 10))
        writer.close()
    return answers


def assert_quiet(answers: list[bytes], log: str) -> None:
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == b"400", answer[:200]
        assert json.loads(body)["error"] == "bad_request"
        assert TOKEN.encode() not in answer
        assert BODY.encode() not in answer
    assert TOKEN not in log
    assert BODY not in log
    assert "Traceback" not in log
    assert " ERROR " not in log
    warnings = [line for line in log.splitlines() if "malformed" in line]
    assert len(warnings) == 1, warnings  # the first at once; the rest summed a minute later
    assert "WARNING" in warnings[0]


async def test_a_workers_log_stays_quiet_under_malformed_requests(workers: WorkerFactory) -> None:
    worker = workers.start(JOBSTREAM_API_TOKEN=TOKEN)
    await worker.wait_assigned()
    answers = await hammer(worker.web_port)
    assert worker.alive
    # the worker logs unbuffered (PYTHONUNBUFFERED): every line of those requests is in the file
    assert_quiet(answers, worker.log_path.read_text("utf-8", "replace"))


async def test_jobstream_apis_log_stays_quiet_under_malformed_requests(
    kafka_bootstrap: str, database_url: str, prefix: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSTREAM_")}
    env |= {
        "JOBSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "JOBSTREAM_DATABASE_URL": database_url,
        "JOBSTREAM_TOPIC_PREFIX": prefix,
        "JOBSTREAM_API_TOKEN": TOKEN,
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "api.log"
    out = await asyncio.to_thread(log_path.open, "wb")
    with out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jobstream", "api", "--host", "127.0.0.1", "--port", "0",
            cwd=ROOT, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    try:

        async def listening() -> int | None:
            assert proc.returncode is None, log_path.read_text()
            for line in log_path.read_text().splitlines():
                if "listening on http://" in line:
                    return int(line.rsplit(":", 1)[1])
            return None

        port = await wait_for(listening, timeout=90, what="jobstream api listening")
        answers = await hammer(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    assert_quiet(answers, log_path.read_text("utf-8", "replace"))
