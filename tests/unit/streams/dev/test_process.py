"""The local stack's processes: detached, recognised, stopped with a grace period."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobstream.models.errors import StackError
from jobstream.streams.dev import process


def _sleeper(tmp_path: Path, *, ignore_term: bool = False) -> int:
    code = "import signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('ready', flush=True)\ntime.sleep(60)\n"
    log = tmp_path / "sleeper.log"
    pid = process.spawn_detached(
        [sys.executable, "-c", code, str(tmp_path / "marker")], log_path=log, cwd=tmp_path
    )
    while "ready" not in (log.read_text() if log.exists() else ""):
        assert process.pid_alive(pid)
        time.sleep(0.01)
    return pid


async def test_spawned_process_is_detached_and_recognised(tmp_path: Path) -> None:
    pid = _sleeper(tmp_path)
    try:
        assert os.getsid(pid) == pid  # its own session: the launching shell cannot signal it
        assert process.owns(pid, str(tmp_path / "marker"))
        assert not process.owns(pid, str(tmp_path / "other"))
        assert pid in process.pids_matching(str(tmp_path / "marker"))
    finally:
        await process.terminate(pid, 5)
    assert not process.pid_alive(pid)  # reaped, not a zombie that still "exists"
    assert not process.owns(pid, str(tmp_path / "marker"))


async def test_terminate_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    pid = _sleeper(tmp_path, ignore_term=True)
    await process.terminate(pid, 0.5)
    assert not process.pid_alive(pid)


async def test_terminate_wakes_a_stopped_process(tmp_path: Path) -> None:
    pid = _sleeper(tmp_path)
    os.kill(pid, signal.SIGSTOP)
    await process.terminate(pid, 5)
    assert not process.pid_alive(pid)


def test_dead_and_bogus_pids_are_not_alive() -> None:
    assert not process.pid_alive(None)
    assert not process.pid_alive(0)
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not process.pid_alive(proc.pid)


async def test_run_tool_failure_carries_the_output() -> None:
    with pytest.raises(StackError, match=r"(?s)exit 3.*boom"):
        await process.run_tool(["sh", "-c", "echo boom; exit 3"])
    assert (await process.run_tool(["sh", "-c", "echo fine"])).strip() == "fine"


async def test_wait_ready_fails_fast_with_the_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "dies.log"
    pid = process.spawn_detached(
        ["sh", "-c", "echo 'FATAL: no way'; exit 1"], log_path=log, cwd=tmp_path
    )

    async def never() -> bool:
        return False

    with pytest.raises(StackError, match=r"(?s)Thing exited during start-up.*FATAL: no way"):
        await process.wait_ready("Thing", never, pid, 30, log)
