"""What the benchmark samples from the processes it measures while a timed window runs: their
resident memory (psutil), a worker's Prometheus metrics and, with ``--profile``, one replica's
stacks (py-spy).

Both run beside the measurement and must never fail it: a process that exits, or a py-spy that
cannot attach (no ptrace permission in a container, py-spy not installed), leaves a gap or an
error message in the result instead of an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from jobstream.streams.dev.bench.report import parse_collapsed, top_frames

RSS_INTERVAL_S = 0.2
PROFILE_RATE_HZ = 100


class RssSampler:
    """Resident set size of each named process every ``interval_s``; the peak is what a memory
    limit has to cover, and a single reading at the end would miss a transient one."""

    def __init__(self, pids: Mapping[str, int], interval_s: float = RSS_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.samples: dict[str, list[int]] = {name: [] for name in pids}
        self._procs: dict[str, psutil.Process] = {}
        for name, pid in pids.items():
            with contextlib.suppress(psutil.Error):
                self._procs[name] = psutil.Process(pid)
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for name, proc in self._procs.items():
            with contextlib.suppress(psutil.Error):
                self.samples[name].append(proc.memory_info().rss)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    def start(self) -> RssSampler:
        self._task = asyncio.create_task(self._run(), name="rss-sampler")
        return self

    async def stop(self) -> dict[str, list[int]]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()  # the end of the window, however short it was
        return self.samples


async def metrics_text(port: int, timeout_s: float = 5.0) -> str:
    """A worker's ``GET /metrics`` (Prometheus' text format) on this machine."""
    import aiohttp

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s,
        s.get(f"http://127.0.0.1:{port}/metrics") as r,
    ):
        r.raise_for_status()
        return await r.text()


def py_spy_path() -> str | None:
    """py-spy from the dev extra sits next to the interpreter; else whatever is on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """``py-spy record`` of one process over the timed window. The window's length is not known
    in advance, so py-spy gets ``max_s`` as its duration and is stopped with SIGINT (on which it
    writes what it has) when the window ends."""

    def __init__(self, pid: int, output: Path, log: Path, max_s: float) -> None:
        self.pid = pid
        self.output = output
        self.log = log
        self.max_s = max_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.error: str | None = None

    def start(self) -> Profiler:
        exe = py_spy_path()
        if exe is None:
            self.error = "py-spy is not installed (it is in the dev extra: make venv)"
            return self
        self.output.parent.mkdir(parents=True, exist_ok=True)
        argv = [exe, "record", "--pid", str(self.pid), "--duration", str(int(self.max_s) + 1),
                "--rate", str(PROFILE_RATE_HZ), "--format", "raw",
                "--output", str(self.output)]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        return self

    async def stop(self, top: int = 15) -> dict[str, Any]:
        """Stop sampling and rank the frames; ``{"error": ...}`` when there is no profile."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 10)
        if self.error is None and (self.proc is None or not self.output.exists()):
            self.error = self._why_not()
        if self.error is not None:
            return {"error": self.error}
        stacks = parse_collapsed(self.output.read_text(errors="replace"))
        if not stacks:
            return {"error": f"py-spy recorded no samples ({self.output})"}
        return {"file": str(self.output), "pid": self.pid, **top_frames(stacks, top)}

    def _why_not(self) -> str:
        try:
            said = self.log.read_text(errors="replace")
        except OSError:
            said = ""
        code = self.proc.returncode if self.proc is not None else None
        return f"py-spy exited with {code}: {py_spy_error(said)}"


def py_spy_error(output: str) -> str:
    """The one line of py-spy's output that says why it recorded nothing (it may follow with
    a cause chain and a Rust backtrace), with a hint when the cause is ptrace."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    said = next((line for line in lines if line.startswith("Error")), lines[-1] if lines else "")
    said = said[:300] or "no output"
    if "ermission" in output or "ptrace" in output.lower():
        said += " (py-spy needs ptrace: run as root, or with CAP_SYS_PTRACE and ptrace_scope 0)"
    return said
