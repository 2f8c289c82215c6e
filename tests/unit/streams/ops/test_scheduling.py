"""``jobstream scheduled``/``schedules`` and ``submit``'s timing flags without a database: what
is refused before PostgreSQL is asked (exit 2, one line), and how the flags become the fields of
``POST /jobs``. What the commands change in PostgreSQL is tested in
tests/integration/test_timed_ops.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobstream.streams.cli import main
from jobstream.streams.command import CommandError
from jobstream.streams.console.params import BadInput
from jobstream.streams.console.timed import ahead
from jobstream.streams.exits import Exit
from jobstream.streams.ops.scheduling import submit_timing


@pytest.fixture
def unreachable_db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A database address where nothing listens: a command that gets as far as connecting
    exits 3, so an exit 2 says it refused before."""
    monkeypatch.setenv("JOBSTREAM_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.delenv("JOBSTREAM_POLICY_FILE", raising=False)
    monkeypatch.chdir(tmp_path)


def test_submit_timing_turns_durations_into_seconds_and_keeps_times() -> None:
    got = submit_timing(
        {"delay": "1h30m", "ttl": "90", "run_at": None, "expires_at": "2030-01-01T00:00:00Z"}
    )
    assert got == {"delay_s": 5400.0, "ttl_s": 90.0, "expires_at": "2030-01-01T00:00:00Z"}
    assert submit_timing({"delay": None, "ttl": None, "run_at": None, "expires_at": None}) == {}


def test_a_duration_that_is_none_exits_2() -> None:
    with pytest.raises(CommandError) as err:
        submit_timing({"ttl": "a while"})
    assert err.value.exit_code == Exit.USAGE
    assert "--ttl" in err.value.message


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["schedules", "add", "n", "--type", "echo"], "give --cron EXPR or --every DURATION"),
        (
            ["schedules", "add", "n", "--type", "echo", "--cron", "* * * * *", "--every", "5s"],
            "give --cron EXPR or --every DURATION",
        ),
        (["schedules", "add", "n", "--type", "echo", "--every", "often"], "--every"),
        (["schedules", "add", "n", "--type", "nope", "--every", "5s"], "unknown job type 'nope'"),
        (
            ["schedules", "add", "n", "--type", "echo", "--cron", "0 3 * * *", "--timezone", "X/Y"],
            "unknown time zone 'X/Y'",
        ),
        (["schedules", "add", "n", "--type", "echo", "--cron", "0 25 * * *"], "cron expression"),
        (
            [
                "schedules",
                "add",
                "n",
                "--type",
                "sleep",
                "--every",
                "1m",
                "--payload",
                '{"seconds": "x"}',
            ],
            "payload.seconds",
        ),
        (
            ["schedules", "add", "n", "--type", "echo", "--every", "1m", "--payload", "{"],
            "--payload",
        ),
        (["scheduled", "retime", "j1"], "give --at TIME or --in DURATION"),
        (["scheduled", "retime", "j1", "--at", "2030-01-01T00:00:00"], "no UTC offset"),
        (["scheduled", "retime", "j1", "--in", "later"], "--in"),
        (["scheduled", "list", "--due-before", "someday"], "due-before"),
    ],
)
def test_bad_arguments_exit_2_in_one_line_before_the_database(
    unreachable_db: None, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert main(argv) == Exit.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert expected in err[0]


def test_a_database_that_does_not_answer_exits_3(
    unreachable_db: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schedules", "list"]) == Exit.UNREACHABLE
    assert main(["scheduled", "run-now", "j1"]) == Exit.UNREACHABLE
    err = capsys.readouterr().err
    assert "nobody" not in err  # the DSN's user is not echoed


def test_the_console_reads_a_duration_as_time_ahead() -> None:
    now = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
    assert ahead("due before", "90m", now) == now + timedelta(minutes=90)
    assert ahead("run_at", "2027-01-02T00:00:00+01:00", now) == datetime(
        2027, 1, 1, 23, 0, tzinfo=UTC
    )
    with pytest.raises(BadInput, match="due after"):
        ahead("due after", "soonish", now)
