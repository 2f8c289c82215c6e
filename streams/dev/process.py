"""The local stack's processes: spawn detached, recognise our own by their command line, stop them
with a grace period; one registry of the children this process started.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pwd
import shlex
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from models.errors import StackError

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
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return fields[0] != "Z"


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace")


def owns(pid: int | None, marker: str) -> bool:
    """Pids get reused (after a reboot, in a fresh container): only ever signal a process whose
    command line names our own files."""
    if pid is None or not pid_alive(pid):
        return False
    cmd = _cmdline(pid)
    if cmd is None:
        return not Path("/proc/self").exists()  # no procfs: the recorded pid is all we have
    return marker in cmd


def pids_matching(marker: str) -> list[int]:
    """Finds a server that outlived its state file, before a second one trips over its locks."""
    me = os.getpid()
    return [
        pid
        for pid in (int(e.name) for e in Path("/proc").glob("[0-9]*"))
        if pid != me and marker in (_cmdline(pid) or "") and pid_alive(pid)
    ]


def group_members(pgid: int, predicate: Callable[[str], bool]) -> list[int]:
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and predicate(_cmdline(int(entry.name)) or ""):
            members.append(int(entry.name))
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
    deadline = time.monotonic() + within_s
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)
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
    polled so the event loop stays free while waiting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.2)
        yield
    finally:
        os.close(fd)


async def wait_ready(
    name: str, probe: Callable[[], Awaitable[bool]], pid: int, within_s: float, log_path: Path
) -> None:
    """Polls a real request; a server that dies meanwhile fails fast, with its last words."""
    deadline = time.monotonic() + within_s
    while not await probe():
        if not pid_alive(pid):
            raise StackError(f"{name} exited during start-up; end of {log_path}:\n{tail(log_path)}")
        if time.monotonic() >= deadline:
            raise StackError(
                f"{name} did not answer within {within_s:.0f}s; end of {log_path}:\n"
                f"{tail(log_path)}"
            )
        await asyncio.sleep(0.25)
