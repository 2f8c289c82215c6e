"""The local stack's processes: spawn detached, recognise our own by their command line, stop them
with a grace period; one registry of the children this process started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shlex
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import psutil
from filelock import AsyncFileLock

from jobstream.models.errors import StackError
from jobstream.streams.polling import wait_until

log = logging.getLogger(__name__)

STOP_GRACE_S = 30.0


# a leftover that stopped answering gets less patience than a healthy service being stopped
REPLACE_GRACE_S = 10.0


# Popen objects of the servers this process started: polling them reaps a crashed server, which
# would otherwise linger as a zombie that still looks alive to kill(pid, 0).
_children: dict[int, subprocess.Popen[bytes]] = {}


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _children[pid]
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _cmdline(pid: int) -> str | None:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return None


def owns(pid: int | None, marker: str) -> bool:
    """Pids get reused (after a reboot, in a fresh container): only ever signal a process whose
    command line names our own files."""
    if pid is None or not pid_alive(pid):
        return False
    return marker in (_cmdline(pid) or "")


def pids_matching(marker: str) -> list[int]:
    """Finds a server that outlived its state file, before a second one trips over its locks."""
    me = os.getpid()
    return [
        proc.pid
        for proc in psutil.process_iter()
        if proc.pid != me and marker in (_cmdline(proc.pid) or "") and pid_alive(proc.pid)
    ]


def group_members(pgid: int, predicate: Callable[[str], bool]) -> list[int]:
    members = []
    for proc in psutil.process_iter():
        try:
            in_group = os.getpgid(proc.pid) == pgid
        except (ProcessLookupError, PermissionError):
            continue
        if in_group and predicate(_cmdline(proc.pid) or ""):
            members.append(proc.pid)
    return members


def send_signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def kill_hard(pid: int) -> None:
    """Our servers lead their own process group; killing the group takes any helpers along."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
            return
    except (ProcessLookupError, PermissionError):
        pass
    send_signal(pid, signal.SIGKILL)


async def wait_gone(pid: int, within_s: float) -> bool:
    async def gone() -> bool:
        return not pid_alive(pid)

    try:
        await wait_until(gone, within_s=within_s, interval_s=0.1, what=f"pid {pid} to exit")
    except TimeoutError:
        return False
    return True


async def terminate(pid: int, grace_s: float) -> None:
    """SIGTERM first so Kafka closes its logs cleanly (no index rebuild on the next start);
    SIGKILL only for a process that will not go."""
    send_signal(pid, signal.SIGCONT)  # a stopped process would never act on the SIGTERM
    send_signal(pid, signal.SIGTERM)
    if await wait_gone(pid, grace_s):
        return
    log.warning("pid %s ignored SIGTERM for %.0fs; killing it", pid, grace_s)
    kill_hard(pid)
    await wait_gone(pid, 10.0)


def _user_kwargs(user: pwd.struct_passwd | None) -> dict[str, Any]:
    if user is None:
        return {}
    groups = os.getgrouplist(user.pw_name, user.pw_gid)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": groups}


def spawn_detached(
    cmd: list[str],
    *,
    log_path: Path,
    cwd: Path,
    env: dict[str, str] | None = None,
    user: pwd.struct_passwd | None = None,
) -> int:
    """Own session, no terminal: Ctrl-C in the launching shell or the end of a ``make`` recipe
    must not take the server down with it. ``user`` switches uid in the child (like runuser)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **_user_kwargs(user),
        )
    _children[proc.pid] = proc
    return proc.pid


async def run_tool(
    cmd: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    user: pwd.struct_passwd | None = None,
    limit_s: float = 300.0,
) -> str:
    """Runs a short-lived tool to completion; a failure carries its output, which is the only
    place initdb, StorageTool or mvn say what went wrong."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **_user_kwargs(user),
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise StackError(
            f"`{shlex.join(cmd)}` failed (exit {proc.returncode}):\n{last_lines(text)}"
        )
    return text


def last_lines(text: str, n: int = 20) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def tail(path: Path, n: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            return last_lines(f.read().decode(errors="replace"), n)
    except OSError:
        return "(no log)"


@contextlib.asynccontextmanager
async def locked(path: Path) -> AsyncIterator[None]:
    """Serialises ``up``/``down``/fetch across processes (parallel test sessions, two shells);
    the event loop stays free while waiting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    async with AsyncFileLock(path, mode=0o644, poll_interval=0.2):
        yield


async def wait_ready(
    name: str, probe: Callable[[], Awaitable[bool]], pid: int, within_s: float, log_path: Path
) -> None:
    """Polls a real request; a server that dies meanwhile fails fast, with its last words."""

    async def answered() -> bool:
        if await probe():
            return True
        if not pid_alive(pid):
            raise StackError(f"{name} exited during start-up; end of {log_path}:\n{tail(log_path)}")
        return False

    try:
        await wait_until(answered, within_s=within_s, interval_s=0.25, what=name)
    except TimeoutError:
        raise StackError(
            f"{name} did not answer within {within_s:.0f}s; end of {log_path}:\n{tail(log_path)}"
        ) from None


class Child:
    """A child process this program owns, its output in ``log_path``: the benchmark's workers,
    baseline and fake upstream, and the worker replicas of the demo and the tests. Every live one
    is tracked, so that Ctrl-C, an error or a crashed caller still stops it (:meth:`reap_all`).

    ``new_session``: a Ctrl-C in the terminal reaches only the owner, which then stops its
    children in order instead of racing them.
    """

    live: ClassVar[set[Child]] = set()

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        port: int | None = None,
        new_session: bool = True,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.port = port
        """The port it serves HTTP on, if any."""
        self.new_session = new_session
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.new_session,
            )
        Child.live.add(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def cpu_s(self) -> float | None:
        """User + system CPU seconds so far; None once it has exited."""
        if not self.alive:
            return None
        try:
            times = psutil.Process(self.pid).cpu_times()
        except psutil.Error:
            return None
        return float(times.user + times.system)

    def send(self, sig: signal.Signals) -> None:
        if self.alive:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 60) -> int:
        """The exit code; ``subprocess.TimeoutExpired`` if it is still running after
        ``timeout_s``."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout_s)
        Child.live.discard(self)
        return code

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM (a worker drains), SIGKILL past ``timeout_s``: the exit code, None if it had
        to be killed (or never started)."""
        if self.proc is None:
            return None
        self.send(signal.SIGTERM)
        try:
            return self.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    async def stop_async(self, timeout_s: float = 60) -> int | None:
        """:meth:`stop` without blocking the event loop."""
        return await asyncio.to_thread(self.stop, timeout_s)

    def kill(self) -> int | None:
        if self.proc is None:
            return None
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        Child.live.discard(self)
        return self.proc.returncode

    @classmethod
    def reap_all(cls, grace_s: float = 10.0) -> None:
        """Synchronous last resort: works after the event loop is gone."""
        children = [c for c in cls.live if c.alive]
        for c in children:
            c.send(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for c in children:
            assert c.proc is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            c.kill()
        cls.live.clear()
