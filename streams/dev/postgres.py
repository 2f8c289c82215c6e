"""The PostgreSQL half of the local dev stack: binaries, where the data may live, start, stop.

Location and command building are pure functions, so they are unit-tested without a server;
the process plumbing they rely on is shared with Kafka in :mod:`jobstream.streams.dev.stack`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import re
import shutil
import signal
import stat
import tempfile
from pathlib import Path
from typing import Any

import asyncpg

from jobstream.models.errors import StackError
from jobstream.streams.dev.process import (
    REPLACE_GRACE_S,
    group_members,
    kill_hard,
    owns,
    pid_alive,
    run_tool,
    send_signal,
    spawn_detached,
    wait_gone,
    wait_ready,
)
from jobstream.streams.dev.state import StackPaths, Tools

log = logging.getLogger(__name__)

PG_DATABASE = "jobstream"
PG_SUPERUSER = "postgres"
PG_SYSTEM_USER = "postgres"
DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
PG_IMAGE = "postgres:15"
READY_WITHIN_S = 60.0
_TOOLS = ("postgres", "initdb", "pg_ctl")
# sun_path holds 108 bytes; keep a margin for ".s.PGSQL.<port>" and its ".lock" sibling
_MAX_SOCKET_DIR = 90


def _is_bin_dir(path: Path) -> bool:
    return all(os.access(path / tool, os.X_OK) for tool in _TOOLS)


def _major(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", name)) or (0,)


def find_bin_dir(prefer_major: str | None = None) -> Path | None:
    """Debian installs each major side by side; an existing data dir can only be opened by the
    major that created it, so that one wins over the newest."""
    override = os.environ.get("JOBSTREAM_PG_BIN_DIR")
    if override:
        return Path(override) if _is_bin_dir(Path(override)) else None
    candidates = sorted(
        (p for p in DEBIAN_PG_ROOT.glob("*/bin") if _is_bin_dir(p)),
        key=lambda p: _major(p.parent.name),
        reverse=True,
    )
    if prefer_major:
        candidates.sort(key=lambda p: p.parent.name != prefer_major)
    on_path = shutil.which("postgres")
    if on_path and _is_bin_dir(Path(on_path).parent):
        candidates.append(Path(on_path).parent)
    return candidates[0] if candidates else None


def parse_version(text: str) -> str:
    """``postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`` -> ``15.18``."""
    m = re.search(r"\(PostgreSQL\)\s+(\S+)", text)
    return m.group(1) if m else text.strip()


def data_major(data_dir: Path) -> str | None:
    try:
        return (data_dir / "PG_VERSION").read_text().strip() or None
    except OSError:
        return None


def system_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root, so as root it runs as its own system user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        return None


def traversable_by(path: Path, uid: int, gids: set[int]) -> bool:
    """Whether ``uid`` may reach ``path``: every directory from / down needs its x bit for it.

    Plain mode bits only (no ACLs), which errs on the side of relocating the data.
    """
    if uid == 0:
        return True
    for directory in [path, *path.parents]:
        try:
            st = directory.stat()
        except OSError:
            return False
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def relocated_base(state_dir: Path) -> Path:
    """Stable per state dir, so a later ``up``/``down`` finds the same cluster again."""
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"jobstream-pg-{digest}"


def choose_base(state_dir: Path, user: pwd.struct_passwd | None) -> Path:
    """``<state>/pg`` when the server user can reach it and the socket path fits, else /tmp."""
    local = state_dir / "pg"
    if len(str(local / "run")) > _MAX_SOCKET_DIR:
        return relocated_base(state_dir)
    if user is not None:
        gids = set(os.getgrouplist(user.pw_name, user.pw_gid))
        if not traversable_by(state_dir, user.pw_uid, gids):
            return relocated_base(state_dir)
    return local


def dsn(port: int, database: str = PG_DATABASE) -> str:
    return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{port}/{database}"


def initdb_command(bin_dir: Path, data_dir: Path) -> list[str]:
    # --no-sync: a throw-away dev cluster need not wait for ~1,000 fsyncs on creation
    return [
        str(bin_dir / "initdb"),
        "-D",
        str(data_dir),
        "-A",
        "trust",
        "-U",
        PG_SUPERUSER,
        "-E",
        "UTF8",
        "--no-locale",
        "--no-sync",
        "--no-instructions",
    ]


def server_command(bin_dir: Path, data_dir: Path, port: int, socket_dir: Path) -> list[str]:
    """Settings go on the command line, so a port change needs no edit of postgresql.conf."""
    return [
        str(bin_dir / "postgres"),
        "-D",
        str(data_dir),
        "-p",
        str(port),
        "-k",
        str(socket_dir),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "max_connections=300",
    ]


def stop_command(bin_dir: Path, data_dir: Path, timeout: float) -> list[str]:
    return [
        str(bin_dir / "pg_ctl"),
        "stop",
        "-D",
        str(data_dir),
        "-m",
        "fast",
        "-w",
        "-t",
        str(max(1, int(timeout))),
    ]


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid PostgreSQL itself recorded; the file outlives a crash, so callers check it."""
    try:
        first = (data_dir / "postmaster.pid").read_text().split("\n", 1)[0].strip()
        return int(first)
    except (OSError, ValueError):
        return None


async def pg_answers(url: str, within_s: float = 3.0) -> bool:
    """A real query: a listening port is also what a stopped or recovering server shows."""
    try:
        conn = await asyncpg.connect(url, timeout=within_s)
    except Exception:  # noqa: BLE001 - any failure at all means "not answering"
        return False
    try:
        return bool(await conn.fetchval("SELECT 1", timeout=within_s) == 1)
    except Exception:  # noqa: BLE001 - any failure at all means "not answering"
        return False
    finally:
        with contextlib.suppress(Exception):
            await conn.close(timeout=within_s)


async def ensure_database(port: int) -> None:
    """initdb only creates ``postgres``; the application database is ours to create once."""
    conn = await asyncpg.connect(dsn(port, "postgres"), timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", PG_DATABASE)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
    finally:
        await conn.close()


# --- lifecycle ----------------------------------------------------------------------------


def base_dir(paths: StackPaths, prev: dict[str, Any]) -> Path:
    """The recorded location wins, so a later change of permissions cannot orphan a cluster."""
    return (
        Path(prev["base_dir"]) if prev.get("base_dir") else choose_base(paths.state, system_user())
    )


def _env(user: pwd.struct_passwd | None) -> dict[str, str]:
    """A clean environment: a developer's PGDATA/PGPORT/PGHOST must not redirect our tools."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C",
        "LC_ALL": "C",
        "HOME": user.pw_dir if user else os.environ.get("HOME", "/"),
    }
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    return env


async def running(base: Path, prev: dict[str, Any], requested: int | None) -> int | None:
    """The postmaster's pid, if it serves our data dir, on the wanted port, and answers."""
    data = base / "data"
    pid, port = postmaster_pid(data), prev.get("port")
    if not port or not owns(pid, str(data)):
        return None
    if requested is not None and requested != port:
        return None
    return pid if await pg_answers(dsn(port)) else None


async def stop(
    base: Path, bin_dir: Path | None, user: pwd.struct_passwd | None, grace_s: float
) -> None:
    """``pg_ctl stop -m fast``, SIGKILL if that hangs, then clear what a crash leaves behind."""
    data = base / "data"
    pid = postmaster_pid(data)
    if pid is None:
        return
    if owns(pid, str(data)):
        log.info("stopping PostgreSQL (pid %s)", pid)
        send_signal(pid, signal.SIGCONT)  # a stopped postmaster would never act on pg_ctl
        if bin_dir is not None:
            try:
                cmd = stop_command(bin_dir, data, grace_s)
                await run_tool(cmd, env=_env(user), user=user, cwd=base, limit_s=grace_s + 5)
            except StackError as exc:
                log.warning("pg_ctl stop failed: %s", exc)
        else:
            send_signal(pid, signal.SIGINT)  # what `pg_ctl stop -m fast` sends
        if not await wait_gone(pid, grace_s):
            log.warning("PostgreSQL (pid %s) did not stop in %.0fs; killing it", pid, grace_s)
            kill_hard(pid)
            await wait_gone(pid, 10.0)
    if not pid_alive(pid):
        # Backends of a postmaster killed with -9 hold its shared memory for a moment, and a new
        # postmaster refuses to start while they do. A dead leader's pid cannot have been
        # reused as a process group id, so its group holds only its own orphans.
        orphans = group_members(pid, lambda cmd: cmd.startswith("postgres"))
        for orphan in orphans:
            send_signal(orphan, signal.SIGKILL)
        for orphan in orphans:
            await wait_gone(orphan, 10.0)
    if not owns(pid, str(data)):
        # postgres cannot tell a reused pid from a live postmaster of another user, and would
        # refuse to start over a stale file naming one
        (data / "postmaster.pid").unlink(missing_ok=True)


def _prepare_dirs(base: Path, state_dir: Path, user: pwd.struct_passwd | None) -> None:
    base.mkdir(parents=True, exist_ok=True)
    if not base.is_relative_to(state_dir):
        # /tmp is world-writable: refuse a base someone else planted, or a symlink to elsewhere
        st = os.lstat(base)
        allowed = {os.geteuid(), *([user.pw_uid] if user else [])}
        if stat.S_ISLNK(st.st_mode) or st.st_uid not in allowed:
            raise StackError(f"{base} exists but is not ours; remove it and try again")
        os.chmod(base, 0o755)
    for sub, mode in (("data", 0o700), ("run", 0o755)):
        d = base / sub
        d.mkdir(exist_ok=True)
        if user is not None:
            os.chown(d, user.pw_uid, user.pw_gid)
        os.chmod(d, mode)


async def start(
    paths: StackPaths, base: Path, tools: Tools, user: pwd.struct_passwd | None, port: int
) -> dict[str, Any]:
    if tools.pg_bin is None:
        raise StackError("no PostgreSQL binaries")
    data, run = base / "data", base / "run"
    _prepare_dirs(base, paths.state, user)
    env = _env(user)
    if not (data / "PG_VERSION").is_file():
        if any(data.iterdir()):
            # initdb refuses a non-empty dir; without PG_VERSION this never became a cluster
            log.warning("%s holds no PostgreSQL cluster; re-initialising it", data)
            for child in data.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        log.info("initialising a PostgreSQL cluster in %s", data)
        await run_tool(initdb_command(tools.pg_bin, data), env=env, user=user, cwd=base)
    cmd = server_command(tools.pg_bin, data, port, run)
    pid = spawn_detached(cmd, log_path=paths.pg_log, cwd=base, env=env, user=user)
    log.info("starting PostgreSQL %s on 127.0.0.1:%s (pid %s)", tools.pg_version, port, pid)
    try:
        probe_url = dsn(port, "postgres")
        await wait_ready(
            "PostgreSQL", lambda: pg_answers(probe_url), pid, READY_WITHIN_S, paths.pg_log
        )
        await ensure_database(port)
    except BaseException:
        await stop(base, tools.pg_bin, user, REPLACE_GRACE_S)
        raise
    return {
        "version": tools.pg_version,
        "port": port,
        "pid": pid,
        "dsn": dsn(port),
        "base_dir": str(base),
        "data_dir": str(data),
        "socket_dir": str(run),
        "log": str(paths.pg_log),
        "bin_dir": str(tools.pg_bin),
    }


# --- Docker -------------------------------------------------------------------------------


def container() -> Any:
    """A postgres:15 container through testcontainers, imported only when Docker answers."""
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers < 4.10
        from testcontainers.postgres import PostgresContainer
    return PostgresContainer(
        PG_IMAGE, username=PG_SUPERUSER, password="postgres", dbname=PG_DATABASE, driver=None
    )
