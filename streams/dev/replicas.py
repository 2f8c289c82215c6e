"""Worker replicas as child processes: for the demo, the benchmark and the tests.

A replica is ``python -m jobstream worker`` with its own ``JOBSTREAM_*`` environment; it is
ready when its ``GET /ready`` answers 200, and it is stopped with SIGTERM (drain) or SIGKILL.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from jobstream.streams.dev.process import Child
from jobstream.streams.dev.state import pick_port
from jobstream.streams.polling import wait_until

free_port = pick_port
"""A free TCP port on 127.0.0.1 (the dev stack's one port helper), for a replica's web port."""


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


class Replica(Child):
    """``python -m jobstream worker`` as a child process, serving ``/ready`` on ``web_port``.

    It shares its owner's session: a Ctrl-C in the terminal reaches it too, and it drains."""

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        log_path: Path,
        web_port: int,
        cwd: Path | None = None,
    ) -> None:
        argv = [sys.executable, "-m", "jobstream", "worker"]
        super().__init__(name, argv, env, log_path, cwd=cwd, port=web_port, new_session=False)
        self.web_port = web_port

    async def in_flight(self) -> int | None:
        """Records taken and not finished, from ``/ready``; None when the replica does not
        answer (yet)."""
        return await self._ready_field("in_flight")

    async def running(self) -> int | None:
        """Jobs holding a handler slot now (at most the concurrency), from ``/ready``."""
        return await self._ready_field("running")

    async def _ready_field(self, name: str) -> int | None:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s,
                s.get(f"http://127.0.0.1:{self.web_port}/ready") as r,
            ):
                if r.status != 200:
                    return None
                return int((await r.json())[name])
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def wait_ready(self, timeout_s: float = 90) -> None:
        """Until ``/ready`` answers 200: started, in the group, assignment received."""

        async def ready() -> bool:
            if not self.alive:
                raise RuntimeError(f"replica {self.name} exited early:\n{self.tail()}")
            return await self.in_flight() is not None

        try:
            await wait_until(ready, within_s=timeout_s, what=f"replica {self.name}")
        except TimeoutError:
            raise TimeoutError(
                f"replica {self.name} not ready after {timeout_s}s:\n{self.tail()}"
            ) from None
