"""``jobstream cancel``, ``submit --dedupe-*`` and ``status --wait``: arguments that cannot work
are one line and exit 2, before any service is reached (what they do to real rows is
``tests/integration/test_control.py``'s)."""

from __future__ import annotations

import pytest

from jobstream.streams.cli import main
from jobstream.streams.exits import Exit


@pytest.fixture(autouse=True)
def nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Services that would refuse: a usage error must come before any connection."""
    monkeypatch.setenv("JOBSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    monkeypatch.setenv("JOBSTREAM_DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["cancel"], "give job ids, or filter options"),
        (["cancel", "a", "--type", "echo"], "job ids or filter options, not both"),
        (["cancel", "a", "--dry-run"], "--dry-run lists what a filter selects"),
        (["cancel", "--status", "succeeded"], "is finished; give one of scheduled"),
        (["cancel", "--status", "sleeping"], "is no status"),
        (["cancel", "--since", "yesterday"], "--since"),
        (["submit", "echo", "--dedupe-mode", "throttle"], "need --dedupe-key"),
        (["submit", "echo", "--dedupe-key", "k", "--dedupe-mode", "throttle"], "needs a ttl"),
        (["submit", "echo", "--dedupe-key", "k", "--dedupe-ttl", "soon"], "not a duration"),
        (["submit", "echo", "--dedupe-key", "k", "--count", "2"], "not with --count"),
        (["submit", "echo", "--dedupe-key", "k", "--dedupe-mode", "often"], "often"),
        (["status", "x", "--wait", "0"], "0"),
    ],
)
def test_arguments_that_cannot_work_exit_2_in_one_line(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == Exit.USAGE
    err = capsys.readouterr().err
    assert says in err
    assert "Traceback" not in err
