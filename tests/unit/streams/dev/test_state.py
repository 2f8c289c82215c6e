"""The local stack's state file, its ports and its prerequisites."""

from __future__ import annotations

import random
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobstream.models.errors import StackError
from jobstream.streams.dev import state


class _Scripted(random.Random):
    def __init__(self, ports: list[int]) -> None:
        super().__init__(0)
        self._ports = iter(ports)

    def randrange(self, *args: Any, **kwargs: Any) -> int:
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
