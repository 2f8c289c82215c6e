"""The README's job-control example runs as written, against a real worker, Kafka and
PostgreSQL (its settings from ``JOBSTREAM_*`` variables, as it says)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.integration.harness import ROOT, WorkerFactory
from tests.unit.test_readme import python_blocks, section


async def test_the_job_control_example_runs(
    workers: WorkerFactory, kafka_bootstrap: str, database_url: str, prefix: str, tmp_path: Path
) -> None:
    [example] = python_blocks(section("Job control"))
    script = tmp_path / "control_example.py"
    script.write_text(example)
    worker = workers.start()
    await worker.wait_assigned()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSTREAM_")}
    env |= {
        "JOBSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "JOBSTREAM_DATABASE_URL": database_url,
        "JOBSTREAM_TOPIC_PREFIX": prefix,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, out.decode()
