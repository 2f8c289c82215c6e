"""Production commands find Kafka and PostgreSQL from explicit settings only."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobstream.streams.cli import main
from jobstream.streams.exits import Exit
from jobstream.streams.services import (
    ServiceUnavailable,
    database_url,
    dsn_address,
    kafka_bootstrap,
)
from jobstream.streams.settings import Settings


@pytest.fixture
def no_services(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("JOBSTREAM_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("JOBSTREAM_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_missing_address_names_the_variable(no_services: Path) -> None:
    settings = Settings()
    with pytest.raises(ServiceUnavailable, match="JOBSTREAM_KAFKA_BOOTSTRAP"):
        kafka_bootstrap(settings)
    with pytest.raises(ServiceUnavailable, match="JOBSTREAM_DATABASE_URL"):
        database_url(settings)


@pytest.mark.parametrize(
    ("argv", "variable"),
    [
        (["status", "x"], "JOBSTREAM_DATABASE_URL"),
        (["migrate"], "JOBSTREAM_DATABASE_URL"),
        (["submit", "echo"], "JOBSTREAM_KAFKA_BOOTSTRAP"),
        (["worker"], "JOBSTREAM_KAFKA_BOOTSTRAP"),
    ],
)
def test_a_command_without_its_service_says_one_line_and_starts_nothing(
    no_services: Path, capsys: pytest.CaptureFixture[str], argv: list[str], variable: str
) -> None:
    assert main(argv) == Exit.UNREACHABLE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert variable in err[0]
    assert list(no_services.iterdir()) == []  # no state dir, no local stack


def test_the_address_of_a_dsn_never_shows_its_password() -> None:
    assert dsn_address("postgresql://u:secret@db:6543/jobs") == "db:6543/jobs"
