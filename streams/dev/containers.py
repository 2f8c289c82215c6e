"""Kafka and PostgreSQL in Docker (testcontainers), when a daemon answers."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import shutil
import subprocess
from typing import Any

# Containers started by this process; Ryuk reaps them when it exits, atexit is the backstop.
_containers: list[Any] = []


async def docker_answers(within_s: float = 5.0) -> bool:
    """Only a daemon that answers counts: a docker CLI without an engine is common on CI
    runners and would otherwise cost a long testcontainers timeout."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    proc = await asyncio.create_subprocess_exec(
        docker, "info", "--format", "{{.ServerVersion}}",
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        return await asyncio.wait_for(proc.wait(), within_s) == 0
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return False


def stop_containers() -> None:
    while _containers:
        with contextlib.suppress(Exception):
            _containers.pop().stop()


def start_containers(need_kafka: bool, need_pg: bool) -> tuple[str | None, str | None]:
    from jobstream.streams.dev import kafka
    from jobstream.streams.dev import postgres as pg

    atexit.register(stop_containers)  # registering twice is harmless: the list is emptied
    bootstrap = dsn = None
    if need_kafka:
        k = kafka.container()
        _containers.append(k.start())
        bootstrap = k.get_bootstrap_server()
    if need_pg:
        p = pg.container()
        _containers.append(p.start())
        dsn = p.get_connection_url()
    return bootstrap, dsn
