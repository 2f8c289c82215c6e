"""A Kafka broker of its own behind a TCP proxy that can stop acknowledging writes.

The broker advertises the proxy's address, so every client connection goes through it. While
``writes_blocked`` is set, a connection that sends a Produce request is held open and goes
silent both ways: the broker accepts connections and answers everything else, but no write is
ever acknowledged, which is what a cluster below ``min.insync.replicas`` looks like to an
idempotent producer (a single broker cannot show that: Kafka caps the minimum ISR at the
replication factor). Unblocking closes the silent connections, so clients reconnect and resend.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from jobstream.streams.dev.kafka import (
    fetch_jars,
    format_command,
    kafka_answers,
    new_cluster_id,
    render_log4j2,
    render_server_properties,
    server_command,
)
from jobstream.streams.dev.replicas import free_port
from tests.integration.harness import wait_for

PRODUCE = 0


@dataclass
class WriteBlackhole:
    upstream_port: int
    port: int = field(default_factory=free_port)
    writes_blocked: bool = False
    silenced: int = 0
    """Connections that sent a Produce request while writes were blocked."""
    _server: asyncio.Server | None = None
    _silent: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def block_writes(self) -> None:
        self.writes_blocked = True

    def unblock_writes(self) -> None:
        self.writes_blocked = False
        for writer in list(self._silent):
            writer.close()
        self._silent.clear()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        state = {"silent": False}
        up = asyncio.create_task(self._requests(client_r, broker_w, client_w, state))
        down = asyncio.create_task(self._responses(broker_r, client_w, state))
        self._tasks.update((up, down))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
                self._tasks.discard(task)
            for w in (client_w, broker_w):
                w.close()

    async def _requests(
        self,
        reader: asyncio.StreamReader,
        broker: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
        state: dict[str, bool],
    ) -> None:
        while True:
            size_bytes = await reader.readexactly(4)
            (size,) = struct.unpack(">i", size_bytes)
            body = await reader.readexactly(size)
            (api_key,) = struct.unpack(">h", body[:2])
            if state["silent"]:
                continue  # a silenced connection swallows everything
            if api_key == PRODUCE and self.writes_blocked:
                state["silent"] = True
                self.silenced += 1
                self._silent.add(client)
                continue
            broker.write(size_bytes + body)
            await broker.drain()

    async def _responses(
        self, reader: asyncio.StreamReader, client: asyncio.StreamWriter, state: dict[str, bool]
    ) -> None:
        while chunk := await reader.read(65536):
            if not state["silent"]:
                client.write(chunk)
                await client.drain()


@contextlib.asynccontextmanager
async def broker_behind_blackhole(workdir: Path) -> AsyncIterator[tuple[str, WriteBlackhole]]:
    """(bootstrap through the proxy, the proxy) for a single-node broker started here."""
    java = shutil.which("java")
    assert java is not None, "java is installed by scripts/install-prereqs.sh"
    jars = await fetch_jars()
    port, controller = free_port(), free_port()
    proxy = WriteBlackhole(upstream_port=port)
    data, logs = workdir / "data", workdir / "logs"
    for d in (data, logs):
        d.mkdir(parents=True, exist_ok=True)
    props, log4j = workdir / "server.properties", workdir / "log4j2.properties"
    text = render_server_properties(port, controller, data).replace(
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{proxy.port}",
    )
    props.write_text(text)
    log4j.write_text(render_log4j2())
    fmt = await asyncio.create_subprocess_exec(
        *format_command(java, jars, log4j, logs, props, new_cluster_id()),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await asyncio.wait_for(fmt.wait(), 120) == 0, "kafka storage format failed"
    out = (logs / "kafka.out").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *server_command(java, jars, log4j, logs, props), stdout=out, stderr=subprocess.STDOUT
    )
    await proxy.start()
    bootstrap = f"127.0.0.1:{proxy.port}"
    try:
        await wait_for(lambda: kafka_answers(bootstrap), timeout=90, what="the broker")
        yield bootstrap, proxy
    finally:
        await proxy.stop()
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        out.close()
