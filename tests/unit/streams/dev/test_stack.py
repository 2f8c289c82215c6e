"""The local stack's public API and CLI: status, down, prerequisites, the dev resolver."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from jobstream.models.errors import StackError
from jobstream.streams.dev import kafka, state
from jobstream.streams.dev import postgres as pg
from jobstream.streams.dev import stack as devstack
from jobstream.streams.settings import Settings

# --- Kafka rendering ----------------------------------------------------------------------


# --- ports --------------------------------------------------------------------------------


# --- state file ---------------------------------------------------------------------------


async def test_status_without_state_is_none(tmp_path: Path) -> None:
    assert await devstack.stack_status(tmp_path) is None


async def test_down_without_state_dir_does_nothing(tmp_path: Path) -> None:
    await devstack.stack_down(tmp_path / "never-created")
    assert not (tmp_path / "never-created").exists()


# --- prerequisites ------------------------------------------------------------------------


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


# --- processes ----------------------------------------------------------------------------


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
        [sys.executable, "-m", "jobstream.streams.dev.stack", "--help"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0
    assert "up,down,status,env,fetch" in out.stdout


# --- scripts/install-prereqs.sh -----------------------------------------------------------
