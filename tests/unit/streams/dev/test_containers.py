"""Docker is used only when its daemon answers; testcontainers is imported only then."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobstream.streams.dev import containers


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
        "import sys, jobstream.streams.dev.stack, jobstream.streams.dev.kafka\n"
        "import jobstream.streams.dev.postgres\n"
        "print(any(m.startswith('testcontainers') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
