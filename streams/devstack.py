"""The local Kafka + PostgreSQL stack: what jobstream talks to when nothing else is configured.

Tests, ``make`` targets and a developer's shell all need a broker and a database, and this
machine class (CI runners, sandboxes) often has no Docker. So the default is a real Apache Kafka
(jars from Maven Central, one KRaft node) and the Debian PostgreSQL binaries, both bound to
127.0.0.1, started detached so they outlive the command that started them, and described in
``<state>/stack.json`` so the next command finds them again instead of starting a second copy.

This module holds the process and state plumbing, the public API and the CLI;
:mod:`streams.devstack_kafka` and :mod:`streams.devstack_pg` know their service.

Usage: ``python -m streams.devstack up|down|status|env|fetch [--state-dir D]
[--kafka-port N] [--pg-port N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import fcntl
import json
import logging
import os
import pwd
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.errors import StackError

if TYPE_CHECKING:
    from streams.settings import Settings

log = logging.getLogger(__name__)

STATE_FILE = "stack.json"
MIN_JAVA = 17
INSTALL_HINT = (
    "scripts/install-prereqs.sh (or: apt-get update && apt-get install -y "
    "default-jre-headless maven postgresql)"
)
# Other long-lived development services on this machine own these; never hand them out.
RESERVED_PORTS = frozenset({19092, 19093, 15432})
# Below Linux's ephemeral range (32768+), so an outgoing connection can never be holding the
# port a restarted service wants back.
PORT_RANGE = (20000, 32000)
STOP_GRACE_S = 30.0
# a leftover that stopped answering gets less patience than a healthy service being stopped
REPLACE_GRACE_S = 10.0


@dataclass
class StackInfo:
    """Where the running stack is: everything a caller or a human needs to reach it."""

    bootstrap: str
    database_url: str
    kafka_version: str
    state_dir: Path
    pg_version: str = ""
    kafka_port: int = 0
    controller_port: int = 0
    pg_port: int = 0
    kafka_pid: int | None = None
    pg_pid: int | None = None
    kafka_log: Path | None = None
    pg_log: Path | None = None
    pg_data_dir: Path | None = None
    already_running: bool = False

    def exports(self) -> str:
        return (
            f"export JOBSTREAM_KAFKA_BOOTSTRAP={shlex.quote(self.bootstrap)}\n"
            f"export JOBSTREAM_DATABASE_URL={shlex.quote(self.database_url)}\n"
        )

    def describe(self) -> str:
        return "\n".join(
            [
                f"kafka {self.kafka_version}: {self.bootstrap} (pid {self.kafka_pid})",
                f"  log: {self.kafka_log}",
                f"postgresql {self.pg_version}: {self.database_url} (pid {self.pg_pid})",
                f"  log: {self.pg_log}",
                f"  data: {self.pg_data_dir}",
                f"state: {self.state_dir / STATE_FILE}",
            ]
        )


@dataclass(frozen=True)
class StackPaths:
    """Absolute paths only: the servers run with another cwd than the command that started them."""

    state: Path

    @classmethod
    def of(cls, state_dir: Path) -> StackPaths:
        return cls(Path(state_dir).expanduser().resolve())

    @property
    def lock(self) -> Path:
        return self.state / "stack.lock"

    @property
    def kafka(self) -> Path:
        return self.state / "kafka"

    @property
    def pg_log(self) -> Path:
        # always under the state dir, even when the cluster itself had to move to /tmp
        return self.state / "pg" / "postgres.log"


# --- state file ---------------------------------------------------------------------------


def read_state(state_dir: Path) -> dict[str, Any]:
    """A damaged file is treated as absent: the services are re-detected, not trusted blindly."""
    try:
        data = json.loads((state_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", state_dir / STATE_FILE, exc)
        return {}
    return data if isinstance(data, dict) else {}


def write_state(state_dir: Path, data: dict[str, Any]) -> None:
    """Write-then-rename, so a concurrent reader never sees half a file."""
    path = state_dir / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _info(state_dir: Path, state: dict[str, Any], *, already_running: bool = False) -> StackInfo:
    k, p = state["kafka"], state["postgres"]
    return StackInfo(
        bootstrap=k["bootstrap"],
        database_url=p["dsn"],
        kafka_version=k["version"],
        state_dir=state_dir,
        pg_version=p.get("version", ""),
        kafka_port=k["port"],
        controller_port=k.get("controller_port", 0),
        pg_port=p["port"],
        kafka_pid=k.get("pid"),
        pg_pid=p.get("pid"),
        kafka_log=Path(k["log"]) if k.get("log") else None,
        pg_log=Path(p["log"]) if p.get("log") else None,
        pg_data_dir=Path(p["data_dir"]) if p.get("data_dir") else None,
        already_running=already_running,
    )


# --- ports --------------------------------------------------------------------------------


def port_is_free(port: int) -> bool:
    """SO_REUSEADDR like the servers themselves, so TIME_WAIT leftovers do not count as busy."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(avoid: Iterable[int] = (), rng: random.Random | None = None) -> int:
    rng = rng or random.SystemRandom()
    taken = RESERVED_PORTS | set(avoid)
    for _ in range(500):
        port = rng.randrange(*PORT_RANGE)
        if port not in taken and port_is_free(port):
            return port
    raise StackError(f"no free TCP port on 127.0.0.1 in {PORT_RANGE[0]}-{PORT_RANGE[1] - 1}")


def choose_port(requested: int | None, previous: int | None, avoid: Iterable[int] = ()) -> int:
    """Keep the previous port when possible, so exported env vars stay valid across restarts."""
    avoid = set(avoid)
    if requested is not None:
        if requested in avoid or not port_is_free(requested):
            raise StackError(f"port {requested} on 127.0.0.1 is already in use")
        return requested
    if previous and previous not in RESERVED_PORTS | avoid and port_is_free(previous):
        return previous
    return pick_port(avoid)


def _env_port(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise StackError(f"{name}={value!r} is not a port number") from None


# --- processes ----------------------------------------------------------------------------

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


# --- prerequisites ------------------------------------------------------------------------


def parse_java_major(text: str) -> int | None:
    """``openjdk version "17.0.15"`` -> 17; the pre-9 scheme ``"1.8.0_392"`` -> 8."""
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


def prerequisite_message(missing: list[str]) -> str:
    """One message naming everything at once, so a fresh machine needs one install round."""
    return f"the local dev stack is missing: {'; '.join(missing)}. Install with: {INSTALL_HINT}"


def _find_java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


@dataclass
class Tools:
    java: str = ""
    pg_bin: Path | None = None
    pg_version: str = ""


async def check_prereqs(*, need_kafka: bool, need_pg: bool, pg_data: Path | None) -> Tools:
    from streams import devstack_kafka as kafka
    from streams import devstack_pg as pg

    tools = Tools()
    missing: list[str] = []
    if need_kafka:
        java = _find_java()
        major = None
        if java:
            with contextlib.suppress(StackError, OSError):
                major = parse_java_major(await run_tool([java, "-version"], limit_s=30))
        if java is None:
            missing.append(f"java >= {MIN_JAVA} (no java on PATH or in JAVA_HOME)")
        elif major is None or major < MIN_JAVA:
            missing.append(f"java >= {MIN_JAVA} ({java} is version {major or 'unknown'})")
        else:
            tools.java = java
        if not kafka.jars_ready(kafka.jars_dir()) and not shutil.which("mvn"):
            missing.append("mvn (Apache Maven, fetches the Kafka jars once)")
    if need_pg:
        tools.pg_bin = pg.find_bin_dir(pg.data_major(pg_data) if pg_data else None)
        if tools.pg_bin is None:
            missing.append(
                f"PostgreSQL server binaries (initdb, pg_ctl, postgres in "
                f"{pg.DEBIAN_PG_ROOT}/<version>/bin)"
            )
        elif os.geteuid() == 0 and pg.system_user() is None:
            missing.append(f"the '{pg.PG_SYSTEM_USER}' system user (PostgreSQL refuses root)")
    if missing:
        raise StackError(prerequisite_message(missing))
    if tools.pg_bin is not None:
        version = await run_tool([str(tools.pg_bin / "postgres"), "-V"], limit_s=30)
        tools.pg_version = pg.parse_version(version)
    return tools


# --- public API ---------------------------------------------------------------------------
# The service modules build on the helpers above, hence the imports inside the functions.


async def stack_up(
    state_dir: Path, *, kafka_port: int | None = None, pg_port: int | None = None
) -> StackInfo:
    """Start whatever is not answering; a service that answers is left alone, so calling this
    from every test session and every ``make`` target is cheap after the first time."""
    from streams import devstack_kafka as kafka
    from streams import devstack_pg as pg

    paths = StackPaths.of(state_dir)
    paths.state.mkdir(parents=True, exist_ok=True)
    if kafka_port is None:
        kafka_port = _env_port("JOBSTREAM_KAFKA_PORT")
    if pg_port is None:
        pg_port = _env_port("JOBSTREAM_PG_PORT")
    async with locked(paths.lock):
        state = read_state(paths.state)
        kprev, pprev = state.get("kafka") or {}, state.get("postgres") or {}
        user = pg.system_user()
        base = pg.base_dir(paths, pprev)
        kpid, ppid = await asyncio.gather(
            kafka.running(paths, kprev, kafka_port), pg.running(base, pprev, pg_port)
        )
        if kpid and ppid:
            log.info("stack already running (state in %s)", paths.state / STATE_FILE)
            return _info(paths.state, state, already_running=True)

        tools = await check_prereqs(
            need_kafka=kpid is None, need_pg=ppid is None, pg_data=base / "data"
        )
        taken: set[int] = set()
        if kpid:
            taken |= {kprev["port"], kprev.get("controller_port", 0)}
        if ppid:
            taken.add(pprev["port"])
        jobs: dict[str, Awaitable[dict[str, Any]]] = {}
        if kpid is None:
            await kafka.stop(paths, kprev, REPLACE_GRACE_S)
            kport = choose_port(kafka_port, kprev.get("port"), taken)
            cport = choose_port(None, kprev.get("controller_port"), taken | {kport})
            taken |= {kport, cport}
            jobs["kafka"] = kafka.start(paths, tools, kport, cport)
        if ppid is None:
            await pg.stop(base, tools.pg_bin, user, REPLACE_GRACE_S)
            pport = choose_port(pg_port, pprev.get("port"), taken)
            jobs["postgres"] = pg.start(paths, base, tools, user, pport)

        # Kafka's first start waits on a jar download; PostgreSQL need not wait for it
        results = await asyncio.gather(*jobs.values(), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for name, result in zip(jobs, results, strict=True):
            if not isinstance(result, BaseException):
                state[name] = result
            elif isinstance(state.get(name), dict):
                state[name]["pid"] = None  # keep its ports for the retry
        if "kafka" in state and "postgres" in state:
            state.update(bootstrap=state["kafka"]["bootstrap"], dsn=state["postgres"]["dsn"])
        state.update(format=1, updated_at=time.time())
        write_state(paths.state, state)
        if errors:
            raise errors[0]
        return _info(paths.state, state)


async def stack_down(state_dir: Path) -> None:
    """Stops both services but keeps their data and ports, so the next ``up`` is warm and an
    exported environment stays valid."""
    from streams import devstack_kafka as kafka
    from streams import devstack_pg as pg

    paths = StackPaths.of(state_dir)
    if not paths.state.is_dir():
        return
    async with locked(paths.lock):
        state = read_state(paths.state)
        kprev, pprev = state.get("kafka") or {}, state.get("postgres") or {}
        base = pg.base_dir(paths, pprev)
        bin_dir = pg.find_bin_dir(pg.data_major(base / "data"))
        await asyncio.gather(
            kafka.stop(paths, kprev, STOP_GRACE_S),
            pg.stop(base, bin_dir, pg.system_user(), STOP_GRACE_S),
        )
        if state:
            for name in ("kafka", "postgres"):
                if isinstance(state.get(name), dict):
                    state[name]["pid"] = None
            state["updated_at"] = time.time()
            write_state(paths.state, state)


async def stack_status(state_dir: Path) -> StackInfo | None:
    """None unless both services answer a real request; a live pid alone proves nothing."""
    from streams import devstack_kafka as kafka
    from streams import devstack_pg as pg

    paths = StackPaths.of(state_dir)
    state = read_state(paths.state)
    kprev, pprev = state.get("kafka") or {}, state.get("postgres") or {}
    if not kprev or not pprev:
        return None
    kpid, ppid = await asyncio.gather(
        kafka.running(paths, kprev, None), pg.running(pg.base_dir(paths, pprev), pprev, None)
    )
    return _info(paths.state, state, already_running=True) if kpid and ppid else None


# --- choosing services --------------------------------------------------------------------

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


def _stop_containers() -> None:
    while _containers:
        with contextlib.suppress(Exception):
            _containers.pop().stop()


def _start_containers(need_kafka: bool, need_pg: bool) -> tuple[str | None, str | None]:
    from streams import devstack_kafka as kafka
    from streams import devstack_pg as pg

    atexit.register(_stop_containers)  # registering twice is harmless: the list is emptied
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


async def resolve_services(settings: Settings) -> tuple[str, str]:
    """(bootstrap, dsn): explicit settings win, each on its own; then Docker if a daemon really
    answers; then the local launcher, which needs neither Docker nor network after first use."""
    bootstrap = settings.kafka_bootstrap or None
    dsn = settings.database_url.get_secret_value() if settings.database_url else None
    if bootstrap and dsn:
        return bootstrap, dsn
    if await docker_answers():
        found_b, found_d = await asyncio.to_thread(
            _start_containers, bootstrap is None, dsn is None
        )
    else:
        info = await stack_up(settings.state_dir)
        found_b, found_d = info.bootstrap, info.database_url
    bootstrap, dsn = bootstrap or found_b, dsn or found_d
    if not bootstrap or not dsn:
        raise StackError("could not resolve both Kafka and PostgreSQL")
    return bootstrap, dsn


# --- command line -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streams.devstack",
        description="Local Kafka + PostgreSQL on 127.0.0.1 for development and tests.",
    )
    parser.add_argument("command", choices=["up", "down", "status", "env", "fetch"])
    parser.add_argument("--state-dir", type=Path, help="default: JOBSTREAM_STATE_DIR or .state")
    parser.add_argument("--kafka-port", type=int, help="default: JOBSTREAM_KAFKA_PORT or free")
    parser.add_argument("--pg-port", type=int, help="default: JOBSTREAM_PG_PORT or free")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # a broker that is still booting makes aiokafka log connection errors we expect
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    if args.state_dir is None:
        from streams.settings import Settings

        args.state_dir = Settings().state_dir
    try:
        return asyncio.run(_command(args))
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def _command(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir
    if args.command == "up":
        started = time.monotonic()
        info = await stack_up(state_dir, kafka_port=args.kafka_port, pg_port=args.pg_port)
        verb = "already running" if info.already_running else "started"
        print(f"{verb} in {time.monotonic() - started:.1f}s\n{info.describe()}")
        print(f'use it: eval "$(python -m streams.devstack env --state-dir {state_dir})"')
        return 0
    if args.command == "down":
        await stack_down(state_dir)
        print("stopped")
        return 0
    if args.command == "fetch":
        from streams import devstack_kafka as kafka
        from streams.devstack_kafka_tools import fetch_tool_jars

        print(await kafka.fetch_jars())
        print(await fetch_tool_jars())  # kafka-topics, kafka-consumer-groups, kafka-configs
        return 0
    status = await stack_status(state_dir)
    if status is None:
        hint = "start it with: python -m streams.devstack up"
        print(f"not running (state dir {state_dir}); {hint}", file=sys.stderr)
        return 1
    print(status.exports() if args.command == "env" else status.describe() + "\n", end="")
    return 0


if __name__ == "__main__":
    # Run the canonical module rather than this __main__ copy, so the helpers the service
    # modules import share one registry of started processes.
    from streams.devstack import main as _main

    raise SystemExit(_main())
