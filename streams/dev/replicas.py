"""Worker replicas as child processes: for the demo, the benchmark and the tests.

A replica is ``python -m streams.cli worker`` with its own ``JOBSTREAM_*`` environment; it is
ready when its ``GET /ready`` answers 200, and it is stopped with SIGTERM (drain) or SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replica_env(
    *, bootstrap: str, dsn: str, name: str, web_port: int, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The parent's environment without its JOBSTREAM_* settings, plus the replica's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSTREAM_")}
    env.update(
        {
            "JOBSTREAM_KAFKA_BOOTSTRAP": bootstrap,
            "JOBSTREAM_DATABASE_URL": dsn,
            "JOBSTREAM_WORKER_NAME": name,
            "JOBSTREAM_WEB_PORT": str(web_port),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


@dataclass
class Replica:
    name: str
    env: dict[str, str]
    log_path: Path
    web_port: int
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> Replica:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed when the process ends
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            cwd=self.cwd,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def in_flight(self) -> int | None:
        """Jobs running now, from ``/ready``; None when the replica does not answer (yet)."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s,
                s.get(f"http://127.0.0.1:{self.web_port}/ready") as r,
            ):
                if r.status != 200:
                    return None
                return int((await r.json())["in_flight"])
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def wait_ready(self, timeout_s: float = 90) -> None:
        """Until ``/ready`` answers 200: started, in the group, assignment received."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"replica {self.name} exited early:\n{self.tail()}")
            if await self.in_flight() is not None:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"replica {self.name} not ready after {timeout_s}s:\n{self.tail()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def send(self, sig: signal.Signals) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 60) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self._close_log()

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM (drain), then SIGKILL if it has not exited in time."""
        if self.proc is None:
            return None
        self.send(signal.SIGTERM)
        try:
            return self.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int | None:
        if self.proc is None:
            return None
        if self.alive:
            self.proc.kill()
        code = self.proc.wait(timeout=30)
        self._close_log()
        return code

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
