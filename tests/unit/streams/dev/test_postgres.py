"""The local PostgreSQL: binaries, data directory placement and commands."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobstream.streams.dev import postgres as pg


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

    base = pg.choose_base(private / "state", user)
    assert base == pg.relocated_base(private / "state")
    assert base.parent == Path(tempfile.gettempdir())
    assert base.name.startswith("jobstream-pg-")
    assert pg.relocated_base(private / "state") == base  # stable, so `down` finds it again
    assert pg.relocated_base(open_dir / "other") != base

    os.chmod(private, 0o755)
    local = pg.choose_base(private / "state", user)
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
