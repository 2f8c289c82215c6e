"""scripts/install-prereqs.sh installs only what is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.streams.dev.test_postgres import _fake_pg_root

REPO = Path(__file__).resolve().parents[2]


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
