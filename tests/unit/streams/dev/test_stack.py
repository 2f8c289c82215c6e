"""The parts of the local stack launcher that need no JVM and no PostgreSQL server."""

from __future__ import annotations

import base64
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from models.errors import StackError
from streams.dev import containers, kafka, process, state
from streams.dev import postgres as pg
from streams.dev import stack as devstack
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[4]


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")


# --- Kafka rendering ----------------------------------------------------------------------


def test_server_properties_bind_loopback_only_and_fit_one_broker(tmp_path: Path) -> None:
    props = _props(kafka.render_server_properties(21001, 21002, tmp_path / "data"))

    assert props["listeners"] == "PLAINTEXT://127.0.0.1:21001,CONTROLLER://127.0.0.1:21002"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:21001"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:21002"
    assert props["process.roles"] == "broker,controller"
    assert props["log.dirs"] == str(tmp_path / "data")
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
    ):
        assert props[key] == "1", key
    assert props["num.partitions"] == str(Settings().partitions)
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "true"
    assert "0.0.0.0" not in kafka.render_server_properties(21001, 21002, tmp_path)


def test_log4j_config_writes_a_capped_file_under_the_logs_dir() -> None:
    text = kafka.render_log4j2()
    assert "${sys:kafka.logs.dir}/server.log" in text
    assert "SizeBasedTriggeringPolicy" in text


def test_pom_pins_kafka_and_a_log4j_binding() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.fromstring(kafka.render_pom())
    deps = {
        (d.findtext("m:artifactId", namespaces=ns), d.findtext("m:version", namespaces=ns))
        for d in root.iterfind("m:dependencies/m:dependency", ns)
    }
    assert ("kafka_2.13", "4.1.1") in deps
    assert ("log4j-slf4j-impl", kafka.LOG4J_VERSION) in deps
    assert ("log4j-core", kafka.LOG4J_VERSION) in deps


def test_cluster_ids_look_like_storage_tool_ones() -> None:
    for _ in range(2000):
        cid = kafka.new_cluster_id()
        assert len(cid) == 22
        assert not cid.startswith("-")
        raw = base64.urlsafe_b64decode(cid + "==")
        assert len(raw) == 16 and raw not in (bytes(16), bytes(15) + b"\x01")


def test_server_command_names_the_props_file_and_takes_jvm_opts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOBSTREAM_KAFKA_JVM_OPTS", raising=False)
    props = tmp_path / "server.properties"
    cmd = kafka.server_command(
        "java", tmp_path / "libs", tmp_path / "l.properties", tmp_path, props
    )
    assert cmd[0] == "java" and cmd[-2:] == ["kafka.Kafka", str(props)]
    assert "-Xmx512m" in cmd and "-XX:TieredStopAtLevel=1" not in cmd
    assert cmd[cmd.index("-cp") + 1] == str(tmp_path / "libs" / "*")

    monkeypatch.setenv("JOBSTREAM_KAFKA_JVM_OPTS", " ".join(kafka.FAST_START_JVM_OPTS))
    cmd = kafka.server_command("java", tmp_path, tmp_path, tmp_path, props)
    assert "-XX:TieredStopAtLevel=1" in cmd and "-Xmx512m" in cmd


def test_jars_dir_lives_outside_the_repo_unless_overridden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOBSTREAM_KAFKA_JARS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert kafka.jars_dir() == tmp_path / "cache" / "jobstream" / "kafka-4.1.1" / "libs"
    monkeypatch.setenv("JOBSTREAM_KAFKA_JARS_DIR", str(tmp_path / "mine"))
    assert kafka.jars_dir() == tmp_path / "mine"


async def test_fetch_refuses_a_foreign_non_empty_jars_dir(tmp_path: Path) -> None:
    target = tmp_path / "libs"
    target.mkdir()
    (target / "something-else.jar").write_text("")
    with pytest.raises(StackError, match="JOBSTREAM_KAFKA_JARS_DIR"):
        await kafka.fetch_jars(target)


async def test_fetch_is_a_no_op_when_the_jars_are_there(tmp_path: Path) -> None:
    (tmp_path / kafka.KAFKA_MAIN_JAR).write_text("")
    assert await kafka.fetch_jars(tmp_path) == tmp_path


# --- ports --------------------------------------------------------------------------------


class _Scripted(random.Random):
    def __init__(self, ports: list[int]) -> None:
        super().__init__(0)
        self._ports = iter(ports)

    def randrange(self, *args: Any, **kwargs: Any) -> int:  # type: ignore[override]
        return next(self._ports)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_pick_port_skips_reserved_avoided_and_busy_ports(busy_port: int) -> None:
    free = state.pick_port(avoid=[busy_port])
    rng = _Scripted([19092, 19093, 15432, 25001, busy_port, free])
    assert state.pick_port(avoid=[25001], rng=rng) == free


def test_choose_port_prefers_requested_then_previous(busy_port: int) -> None:
    free = state.pick_port()
    assert state.choose_port(free, None) == free
    assert state.choose_port(None, free) == free
    assert state.choose_port(None, busy_port) not in (busy_port, *state.RESERVED_PORTS)
    assert state.choose_port(None, free, avoid=[free]) != free
    assert state.choose_port(None, 19092) != 19092
    with pytest.raises(StackError, match=f"port {busy_port}"):
        state.choose_port(busy_port, None)


def test_port_is_free(busy_port: int) -> None:
    assert not state.port_is_free(busy_port)
    assert state.port_is_free(state.pick_port())


def test_env_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBSTREAM_KAFKA_PORT", "23456")
    assert state.env_port("JOBSTREAM_KAFKA_PORT") == 23456
    monkeypatch.setenv("JOBSTREAM_KAFKA_PORT", "")
    assert state.env_port("JOBSTREAM_KAFKA_PORT") is None
    monkeypatch.setenv("JOBSTREAM_KAFKA_PORT", "x")
    with pytest.raises(StackError, match="not a port"):
        state.env_port("JOBSTREAM_KAFKA_PORT")


# --- state file ---------------------------------------------------------------------------


def _state() -> dict[str, Any]:
    return {
        "kafka": {"version": "4.1.1", "port": 21001, "controller_port": 21002, "pid": 11,
                  "bootstrap": "127.0.0.1:21001", "log": "/s/kafka/logs/server.log"},
        "postgres": {"version": "15.18", "port": 21003, "pid": 12,
                     "dsn": "postgresql://postgres@127.0.0.1:21003/jobstream",
                     "log": "/s/pg/postgres.log", "data_dir": "/tmp/x/data"},
    }  # fmt: skip


def test_state_round_trips_atomically(tmp_path: Path) -> None:
    state.write_state(tmp_path, _state())
    assert state.read_state(tmp_path) == _state()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack.json"]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_damaged_state_reads_as_absent(tmp_path: Path, content: str) -> None:
    (tmp_path / "stack.json").write_text(content)
    assert state.read_state(tmp_path) == {}


def test_missing_state_reads_as_absent(tmp_path: Path) -> None:
    assert state.read_state(tmp_path / "nowhere") == {}


def test_stack_info_from_state_and_its_exports(tmp_path: Path) -> None:
    info = state.stack_info(tmp_path, _state())
    assert info.bootstrap == "127.0.0.1:21001"
    assert info.database_url == "postgresql://postgres@127.0.0.1:21003/jobstream"
    assert (info.kafka_port, info.pg_port, info.kafka_pid, info.pg_pid) == (21001, 21003, 11, 12)
    assert info.kafka_version == "4.1.1"
    assert info.kafka_log == Path("/s/kafka/logs/server.log")

    info.database_url = "postgresql://u:p w'x@h/db"  # survives the shell round trip
    out = subprocess.run(
        ["bash", "-c", f'{info.exports()}\nprintf "%s\\n%s" "$JOBSTREAM_KAFKA_BOOTSTRAP" '
                       '"$JOBSTREAM_DATABASE_URL"'],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.splitlines() == [info.bootstrap, info.database_url]


async def test_status_without_state_is_none(tmp_path: Path) -> None:
    assert await devstack.stack_status(tmp_path) is None


async def test_down_without_state_dir_does_nothing(tmp_path: Path) -> None:
    await devstack.stack_down(tmp_path / "never-created")
    assert not (tmp_path / "never-created").exists()


# --- prerequisites ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "11.0.2" 2019-01-15', 11),
        ("command not found", None),
    ],
)
def test_parse_java_major(text: str, major: int | None) -> None:
    assert state.parse_java_major(text) == major


def test_prerequisite_message_names_the_install_command() -> None:
    msg = state.prerequisite_message(["java >= 17", "mvn"])
    assert "java >= 17; mvn" in msg
    assert "scripts/install-prereqs.sh" in msg
    assert "apt-get update && apt-get install -y default-jre-headless maven postgresql" in msg


@pytest.fixture
def bare_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No java, no mvn, no PostgreSQL, no cached jars."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("JOBSTREAM_PG_BIN_DIR", str(tmp_path / "no-pg"))
    monkeypatch.setenv("JOBSTREAM_KAFKA_JARS_DIR", str(tmp_path / "no-jars"))
    return bin_dir


async def test_missing_prerequisites_raise_one_message(bare_machine: Path) -> None:
    with pytest.raises(StackError) as err:
        await devstack.check_prereqs(need_kafka=True, need_pg=True, pg_data=None)
    msg = str(err.value)
    assert msg.count("Install with: scripts/install-prereqs.sh") == 1
    for part in ("java >= 17", "mvn", "PostgreSQL server binaries"):
        assert part in msg


async def test_old_java_is_reported_with_its_version(bare_machine: Path) -> None:
    java = bare_machine / "java"
    java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    java.chmod(0o755)
    with pytest.raises(StackError, match=r"java >= 17 \(.*java is version 11\)"):
        await devstack.check_prereqs(need_kafka=True, need_pg=False, pg_data=None)


async def test_only_needed_prerequisites_are_checked(bare_machine: Path) -> None:
    tools = await devstack.check_prereqs(need_kafka=False, need_pg=False, pg_data=None)
    assert tools == state.Tools()


async def test_fetch_without_mvn_names_the_install_command(bare_machine: Path) -> None:
    with pytest.raises(StackError, match=r"install-prereqs\.sh"):
        await kafka.fetch_jars()


# --- PostgreSQL location and commands -----------------------------------------------------


def _fake_pg_root(root: Path, majors: list[str]) -> None:
    for major in majors:
        d = root / major / "bin"
        d.mkdir(parents=True)
        for tool in ("postgres", "initdb", "pg_ctl"):
            (d / tool).write_text("#!/bin/sh\n")
            (d / tool).chmod(0o755)


def test_find_bin_dir_prefers_the_data_dirs_major_then_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOBSTREAM_PG_BIN_DIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(pg, "DEBIAN_PG_ROOT", tmp_path)
    _fake_pg_root(tmp_path, ["9.6", "15", "16"])
    (tmp_path / "17" / "bin").mkdir(parents=True)  # a client-only install
    assert pg.find_bin_dir() == tmp_path / "16" / "bin"
    assert pg.find_bin_dir("15") == tmp_path / "15" / "bin"
    assert pg.find_bin_dir("12") == tmp_path / "16" / "bin"


def test_pg_bin_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_pg_root(tmp_path, ["15"])
    monkeypatch.setenv("JOBSTREAM_PG_BIN_DIR", str(tmp_path / "15" / "bin"))
    assert pg.find_bin_dir() == tmp_path / "15" / "bin"
    monkeypatch.setenv("JOBSTREAM_PG_BIN_DIR", str(tmp_path / "nope"))
    assert pg.find_bin_dir() is None


def test_parse_pg_version() -> None:
    assert pg.parse_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n") == "15.18"


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """Unlike tmp_path (under a 0700 pytest-of-<user>), reachable by any user."""
    path = Path(tempfile.mkdtemp(prefix="jobstream-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_traversable_by_follows_every_parent(open_dir: Path) -> None:
    uid, gid = 54321, 54321
    inner = open_dir / "a" / "b"
    inner.mkdir(parents=True)
    assert pg.traversable_by(inner, uid, {gid})
    os.chmod(open_dir / "a", 0o700)
    assert not pg.traversable_by(inner, uid, {gid})
    os.chmod(open_dir / "a", 0o701)
    assert pg.traversable_by(inner, uid, {gid})
    os.chmod(open_dir / "a", 0o710)
    assert not pg.traversable_by(inner, uid, {gid})
    assert pg.traversable_by(inner, uid, {os.stat(open_dir / "a").st_gid})
    assert pg.traversable_by(inner, 0, set())
    assert not pg.traversable_by(open_dir / "missing", uid, {gid})


def test_pg_data_moves_to_tmp_when_its_user_cannot_reach_the_state_dir(
    open_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = open_dir / "private"
    (private / "state").mkdir(parents=True)
    os.chmod(private, 0o700)
    user = type("U", (), {"pw_name": "nobody-here", "pw_uid": 54321, "pw_gid": 54321})()
    monkeypatch.setattr(os, "getgrouplist", lambda name, gid: [gid])

    base = pg.choose_base(private / "state", user)  # type: ignore[arg-type]
    assert base == pg.relocated_base(private / "state")
    assert base.parent == Path(pg.tempfile.gettempdir())
    assert base.name.startswith("jobstream-pg-")
    assert pg.relocated_base(private / "state") == base  # stable, so `down` finds it again
    assert pg.relocated_base(open_dir / "other") != base

    os.chmod(private, 0o755)
    local = pg.choose_base(private / "state", user)  # type: ignore[arg-type]
    assert local == private / "state" / "pg"


def test_pg_data_moves_when_the_socket_path_would_be_too_long(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    assert pg.choose_base(deep, None) == pg.relocated_base(deep)
    assert pg.choose_base(tmp_path / "s", None) == tmp_path / "s" / "pg"


def test_pg_commands(tmp_path: Path) -> None:
    initdb = pg.initdb_command(tmp_path, tmp_path / "data")
    assert initdb[0] == str(tmp_path / "initdb")
    assert initdb[initdb.index("-A") + 1] == "trust"
    assert initdb[initdb.index("-U") + 1] == "postgres"

    server = pg.server_command(tmp_path, tmp_path / "data", 21003, tmp_path / "run")
    assert "listen_addresses=127.0.0.1" in server
    assert "max_connections=300" in server
    assert server[server.index("-k") + 1] == str(tmp_path / "run")
    assert server[server.index("-p") + 1] == "21003"

    stop = pg.stop_command(tmp_path, tmp_path / "data", 30)
    assert stop[stop.index("-m") + 1] == "fast"
    assert pg.dsn(21003) == "postgresql://postgres@127.0.0.1:21003/jobstream"


def test_postmaster_pid(tmp_path: Path) -> None:
    assert pg.postmaster_pid(tmp_path) is None
    (tmp_path / "postmaster.pid").write_text(f"4242\n{tmp_path}\n1700000000\n21003\n")
    assert pg.postmaster_pid(tmp_path) == 4242
    (tmp_path / "postmaster.pid").write_text("garbage\n")
    assert pg.postmaster_pid(tmp_path) is None


# --- processes ----------------------------------------------------------------------------


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


async def test_probes_say_no_when_nothing_listens() -> None:
    port = state.pick_port()
    assert not await kafka.kafka_answers(f"127.0.0.1:{port}", within_s=1)
    assert not await pg.pg_answers(pg.dsn(port), within_s=1)


# --- resolve_services ---------------------------------------------------------------------


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(state_dir=tmp_path / "state", **kw)


def _fake_info(tmp_path: Path) -> state.StackInfo:
    return state.StackInfo(
        bootstrap="127.0.0.1:21001",
        database_url="postgresql://postgres@127.0.0.1:21003/jobstream",
        kafka_version="4.1.1",
        state_dir=tmp_path,
    )


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Records what resolve_services asked for, starting nothing."""
    seen: dict[str, Any] = {"docker": False}

    async def docker_answers() -> bool:
        seen["docker_asked"] = True
        return bool(seen["docker"])

    async def stack_up(state_dir: Path, **kw: Any) -> state.StackInfo:
        seen["stack_up"] = state_dir
        return _fake_info(tmp_path)

    def start_containers(need_kafka: bool, need_pg: bool) -> tuple[str | None, str | None]:
        seen["containers"] = (need_kafka, need_pg)
        container_dsn = "postgresql://postgres:postgres@localhost:32769/jobstream"
        return ("localhost:32768" if need_kafka else None, container_dsn if need_pg else None)

    monkeypatch.setattr(devstack, "docker_answers", docker_answers)
    monkeypatch.setattr(devstack, "stack_up", stack_up)
    monkeypatch.setattr(devstack, "start_containers", start_containers)
    return seen


async def test_explicit_settings_win_and_start_nothing(
    tmp_path: Path, calls: dict[str, Any]
) -> None:
    s = _settings(tmp_path, kafka_bootstrap="k:9092", database_url=SecretStr("postgresql://x/y"))
    assert await devstack.resolve_services(s) == ("k:9092", "postgresql://x/y")
    assert calls == {"docker": False}


async def test_without_docker_the_local_stack_fills_the_gaps(
    tmp_path: Path, calls: dict[str, Any]
) -> None:
    s = _settings(tmp_path, kafka_bootstrap="k:9092")
    assert await devstack.resolve_services(s) == (
        "k:9092",
        "postgresql://postgres@127.0.0.1:21003/jobstream",
    )
    assert calls["stack_up"] == tmp_path / "state"
    assert "containers" not in calls

    s = _settings(tmp_path)
    assert await devstack.resolve_services(s) == (
        "127.0.0.1:21001",
        "postgresql://postgres@127.0.0.1:21003/jobstream",
    )


async def test_with_docker_containers_fill_only_the_gaps(
    tmp_path: Path, calls: dict[str, Any]
) -> None:
    calls["docker"] = True
    s = _settings(tmp_path, database_url=SecretStr("postgresql://x/y"))
    assert await devstack.resolve_services(s) == ("localhost:32768", "postgresql://x/y")
    assert calls["containers"] == (True, False)
    assert "stack_up" not in calls


async def test_docker_answers_only_when_the_daemon_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not await containers.docker_answers()
    docker = tmp_path / "docker"
    for script, expected in (("exit 1", False), ("exit 0", True), ("exec sleep 30", False)):
        docker.write_text(f"#!/bin/sh\n{script}\n")
        docker.chmod(0o755)
        assert await containers.docker_answers(within_s=1) is expected, script


def test_testcontainers_are_imported_lazily() -> None:
    code = (
        "import sys, streams.dev.stack, streams.dev.kafka, streams.dev.postgres\n"
        "print(any(m.startswith('testcontainers') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_apache_kafka_container_wiring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked without a daemon: the entrypoint and start script suit the apache/kafka image."""
    import testcontainers.core.container as tc

    class NoDocker:
        def __init__(self, **kw: Any) -> None:
            pass

    started: dict[str, Any] = {}
    monkeypatch.setattr(tc, "DockerClient", NoDocker)

    def fake_start(self: Any) -> Any:
        started.update(kwargs=self._kwargs, command=self._command, env=dict(self.env))
        return self

    monkeypatch.setattr(tc.DockerContainer, "start", fake_start)
    monkeypatch.setattr(tc.DockerContainer, "get_container_host_ip", lambda self: "localhost")
    monkeypatch.setattr(tc.DockerContainer, "get_exposed_port", lambda self, port: 32768)
    import testcontainers.core.wait_strategies as ws

    monkeypatch.setattr(ws.LogMessageWaitStrategy, "wait_until_ready", lambda self, c: None)

    container = kafka.container()
    assert container.image == "apache/kafka:4.1.1"
    files: dict[str, bytes] = {}
    monkeypatch.setattr(
        type(container), "create_file", lambda self, data, path: files.update({path: data})
    )
    container.start()

    assert started["kwargs"] == {"entrypoint": ["/bin/sh", "-c"]}
    assert "tc-start.sh" in started["command"][0]
    env = started["env"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    script = files[container.TC_START_SCRIPT].decode()
    assert "PLAINTEXT://localhost:32768" in script
    assert "exec /etc/kafka/docker/run" in script
    assert "confluent" not in script


# --- command line -------------------------------------------------------------------------


def test_cli_status_and_env_when_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("status", "env"):
        assert devstack.main([command, "--state-dir", str(tmp_path)]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert "not running" in captured.err


def test_cli_env_prints_only_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def status(state_dir: Path) -> state.StackInfo:
        return _fake_info(state_dir)

    monkeypatch.setattr(devstack, "stack_status", status)
    assert devstack.main(["env", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == (
        "export JOBSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:21001\n"
        "export JOBSTREAM_DATABASE_URL=postgresql://postgres@127.0.0.1:21003/jobstream\n"
    )


def test_cli_up_passes_ports_and_reports_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, Any] = {}

    async def up(state_dir: Path, *, kafka_port: int | None, pg_port: int | None) -> Any:
        seen.update(state_dir=state_dir, kafka_port=kafka_port, pg_port=pg_port)
        raise StackError("no java")

    monkeypatch.setattr(devstack, "stack_up", up)
    argv = ["up", "--state-dir", str(tmp_path), "--kafka-port", "23001", "--pg-port", "23002"]
    assert devstack.main(argv) == 1
    assert seen == {"state_dir": tmp_path, "kafka_port": 23001, "pg_port": 23002}
    assert capsys.readouterr().err.strip().endswith("error: no java")


def test_cli_default_state_dir_comes_from_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, Any] = {}

    async def status(state_dir: Path) -> None:
        seen["state_dir"] = state_dir

    monkeypatch.setattr(devstack, "stack_status", status)
    monkeypatch.setenv("JOBSTREAM_STATE_DIR", str(tmp_path / "from-env"))
    devstack.main(["status"])
    assert seen["state_dir"] == tmp_path / "from-env"


def test_module_runs_as_a_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streams.dev.stack", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert "up,down,status,env,fetch" in out.stdout


# --- scripts/install-prereqs.sh -----------------------------------------------------------


@pytest.fixture
def stub_machine(tmp_path: Path) -> tuple[Path, Path]:
    """A PATH with only coreutils and stubs: apt-get records its calls, java says 11."""
    bin_dir, log = tmp_path / "bin", tmp_path / "apt.log"
    bin_dir.mkdir()
    for tool in ("sed", "head", "id", "dirname", "bash", "cat"):
        real = shutil.which(tool)
        assert real
        (bin_dir / tool).symlink_to(real)
    stubs = {
        "apt-get": f'echo "apt-get $*" >> {log}',
        "apt-cache": 'case "$2" in openjdk-17-jre-headless) exit 0;; *) exit 1;; esac',
        "java": "echo 'openjdk version \"11.0.2\" 2019-01-15' >&2",
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir, log


def _run_script(bin_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(bin_dir), "JOBSTREAM_PG_ROOT": str(tmp_path / "pg"), "HOME": str(tmp_path)}
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "install-prereqs.sh")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="the script calls apt-get directly only as root")
def test_install_script_installs_only_what_is_missing(
    stub_machine: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, log = stub_machine
    result = _run_script(bin_dir, tmp_path)
    calls = log.read_text().splitlines()
    # java stays at 11 in this stub, so the script ends by saying so
    assert result.returncode == 1, result.stderr
    assert "update-alternatives" in result.stderr
    assert calls[0] == "apt-get update -q"
    assert calls[1] == (
        "apt-get install -y -q --no-install-recommends default-jre-headless maven postgresql"
    )
    assert calls[2] == "apt-get install -y -q --no-install-recommends openjdk-17-jre-headless"
    assert calls.count("apt-get update -q") == 1

    # a machine that has everything gets no apt-get call at all
    log.unlink()
    (bin_dir / "java").write_text("#!/bin/sh\necho 'openjdk version \"17.0.15\" 2025-04-15' >&2\n")
    (bin_dir / "mvn").write_text("#!/bin/sh\n")
    (bin_dir / "mvn").chmod(0o755)
    _fake_pg_root(tmp_path / "pg", ["15"])
    result = _run_script(bin_dir, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not log.exists()
    assert "already installed" in result.stderr


def test_install_script_is_valid_bash() -> None:
    script = REPO / "scripts" / "install-prereqs.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert os.access(script, os.X_OK)
    assert "DEBIAN_FRONTEND=noninteractive" in script.read_text()
