"""The parts of backup/restore that need no server: where the password goes, which tool."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobstream.streams.ops.backup import BackupError, dump_path, find_tool, libpq_target, redacted


def test_the_password_goes_to_the_environment_not_the_command_line() -> None:
    target, env = libpq_target("postgresql://app:s%40cret@db.example:6432/jobs?sslmode=require")
    assert target == "postgresql://app@db.example:6432/jobs?sslmode=require"
    assert "cret" not in target
    assert env["PGPASSWORD"] == "s@cret"
    assert redacted("postgresql://app:s3cret@db.example:6432/jobs") == "db.example:6432/jobs"


def test_a_dsn_without_password_is_passed_as_is() -> None:
    target, _ = libpq_target("postgresql://postgres@127.0.0.1:5432/jobstream")
    assert target == "postgresql://postgres@127.0.0.1:5432/jobstream"


def test_no_tool_older_than_the_server() -> None:
    with pytest.raises(BackupError, match="PostgreSQL 99 or newer"):
        find_tool("pg_dump", 99)


def test_a_directory_gets_a_timestamped_dump(tmp_path: Path) -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert dump_path(f"{tmp_path}/new/", at) == tmp_path / "new" / "jobstream-20260102T030405Z.dump"
    assert dump_path(str(tmp_path), at).parent == tmp_path
    assert dump_path(f"{tmp_path}/x.dump", at) == tmp_path / "x.dump"


def test_keep_deletes_the_oldest_dumps_with_their_manifests(tmp_path: Path) -> None:
    from jobstream.streams.ops.backup import prune_dumps

    names = [f"jobstream-2026010{d}T000000Z.dump" for d in range(1, 6)]
    for name in names:
        for suffix in ("", ".manifest.json", ".offsets.csv"):
            (tmp_path / f"{name}{suffix}").write_text("x")
    (tmp_path / "other.dump").write_text("not ours")
    removed = prune_dumps(tmp_path, 2)
    assert sorted(p.name for p in removed) == names[:3]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(
        ["other.dump"]
        + [f"{n}{s}" for n in names[3:] for s in ("", ".manifest.json", ".offsets.csv")]
    )
