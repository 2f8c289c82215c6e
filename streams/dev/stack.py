"""The local Kafka + PostgreSQL stack: what jobstream talks to when nothing else is configured.

Tests, ``make`` targets and a developer's shell all need a broker and a database, and this
machine class (CI runners, sandboxes) often has no Docker. So the default is a real Apache Kafka
(jars from Maven Central, one KRaft node) and the Debian PostgreSQL binaries, both bound to
127.0.0.1, started detached so they outlive the command that started them, and described in
``<state>/stack.json`` so the next command finds them again instead of starting a second copy.

This module holds the public API (up, down, status, the dev resolver) and the CLI;
:mod:`jobstream.streams.dev.process` and :mod:`jobstream.streams.dev.state` the plumbing,
:mod:`jobstream.streams.dev.kafka` and :mod:`jobstream.streams.dev.postgres` know their service,
:mod:`jobstream.streams.dev.containers` the Docker path.

Usage: ``python -m jobstream.streams.dev.stack up|down|status|env|fetch [--state-dir D]
[--kafka-port N] [--pg-port N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobstream.models.errors import StackError
from jobstream.streams.dev.containers import docker_answers, start_containers
from jobstream.streams.dev.process import REPLACE_GRACE_S, STOP_GRACE_S, locked, run_tool
from jobstream.streams.dev.state import (
    MIN_JAVA,
    STATE_FILE,
    StackInfo,
    StackPaths,
    Tools,
    choose_port,
    env_port,
    find_java,
    parse_java_major,
    prerequisite_message,
    read_state,
    stack_info,
    write_state,
)

if TYPE_CHECKING:
    from jobstream.streams.settings import Settings

log = logging.getLogger(__name__)


# --- prerequisites ------------------------------------------------------------------------


async def check_prereqs(*, need_kafka: bool, need_pg: bool, pg_data: Path | None) -> Tools:
    from jobstream.streams.dev import kafka
    from jobstream.streams.dev import postgres as pg

    tools = Tools()
    missing: list[str] = []
    if need_kafka:
        java = find_java()
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
    from jobstream.streams.dev import kafka
    from jobstream.streams.dev import postgres as pg

    paths = StackPaths.of(state_dir)
    paths.state.mkdir(parents=True, exist_ok=True)
    if kafka_port is None:
        kafka_port = env_port("JOBSTREAM_KAFKA_PORT")
    if pg_port is None:
        pg_port = env_port("JOBSTREAM_PG_PORT")
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
            return stack_info(paths.state, state, already_running=True)

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
        return stack_info(paths.state, state)


async def stack_down(state_dir: Path) -> None:
    """Stops both services but keeps their data and ports, so the next ``up`` is warm and an
    exported environment stays valid."""
    from jobstream.streams.dev import kafka
    from jobstream.streams.dev import postgres as pg

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
    from jobstream.streams.dev import kafka
    from jobstream.streams.dev import postgres as pg

    paths = StackPaths.of(state_dir)
    state = read_state(paths.state)
    kprev, pprev = state.get("kafka") or {}, state.get("postgres") or {}
    if not kprev or not pprev:
        return None
    kpid, ppid = await asyncio.gather(
        kafka.running(paths, kprev, None), pg.running(pg.base_dir(paths, pprev), pprev, None)
    )
    return stack_info(paths.state, state, already_running=True) if kpid and ppid else None


async def local_bootstrap(state_dir: Path) -> str | None:
    """The broker a Kafka tool talks to: JOBSTREAM_KAFKA_BOOTSTRAP, else the running local stack."""
    from_env = os.environ.get("JOBSTREAM_KAFKA_BOOTSTRAP")
    if from_env:
        return from_env
    status = await stack_status(state_dir)
    return status.bootstrap if status is not None else None


# --- choosing services --------------------------------------------------------------------


async def resolve_services(settings: Settings) -> tuple[str, str]:
    """(bootstrap, dsn): explicit settings win, each on its own; then Docker if a daemon really
    answers; then the local launcher, which needs neither Docker nor network after first use."""
    bootstrap = settings.kafka_bootstrap or None
    dsn = settings.database_url.get_secret_value() if settings.database_url else None
    if bootstrap and dsn:
        return bootstrap, dsn
    if await docker_answers():
        found_b, found_d = await asyncio.to_thread(start_containers, bootstrap is None, dsn is None)
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
        prog="python -m jobstream.streams.dev.stack",
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
        from jobstream.streams.settings import Settings

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
        env_cmd = f"python -m jobstream.streams.dev.stack env --state-dir {state_dir}"
        print(f'use it: eval "$({env_cmd})"')
        return 0
    if args.command == "down":
        await stack_down(state_dir)
        print("stopped")
        return 0
    if args.command == "fetch":
        from jobstream.streams.dev import kafka
        from jobstream.streams.dev.kafka_tools import fetch_tool_jars

        print(await kafka.fetch_jars())
        print(await fetch_tool_jars())  # kafka-topics, kafka-consumer-groups, kafka-configs
        return 0
    status = await stack_status(state_dir)
    if status is None:
        hint = "start it with: python -m jobstream.streams.dev.stack up"
        print(f"not running (state dir {state_dir}); {hint}", file=sys.stderr)
        return 1
    print(status.exports() if args.command == "env" else status.describe() + "\n", end="")
    return 0


if __name__ == "__main__":
    # the registry of started processes lives in streams.dev.process, so this __main__ copy
    # shares it with the service modules
    raise SystemExit(main())
