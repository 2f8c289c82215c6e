"""A dead letter whose job was cancelled since is replayed only on purpose
(``--include-cancelled``), and then its job is reopened by the replay."""

from __future__ import annotations

from jobstream.streams.dlq.cli import parse_args
from jobstream.streams.dlq.replay import Action, ReplayOptions, plan
from tests.unit.streams.dlq.test_filters import dead_letter


def test_a_cancelled_jobs_dead_letter_is_skipped_unless_asked_for() -> None:
    letters = [dead_letter(1), dead_letter(2)]
    cancelled = {"job-2"}
    items = plan(letters, set(), ReplayOptions("t"), cancelled)
    assert [(i.action, i.reopen) for i in items] == [
        (Action.REPLAY, False),
        (Action.SKIP_CANCELLED, False),
    ]
    items = plan(letters, set(), ReplayOptions("t", include_cancelled=True), cancelled)
    assert [(i.action, i.reopen) for i in items] == [(Action.REPLAY, False), (Action.REPLAY, True)]


def test_skipping_a_cancelled_job_comes_before_and_beside_the_other_rules() -> None:
    # already replayed and cancelled: still skipped as cancelled (the reason that matters)
    items = plan([dead_letter(3)], {"jobs:0:3"}, ReplayOptions("t", force=True), {"job-3"})
    assert [i.action for i in items] == [Action.SKIP_CANCELLED]
    # asked for, but already replayed: --force is needed as for any other
    opts = ReplayOptions("t", include_cancelled=True)
    assert [i.action for i in plan([dead_letter(3)], {"jobs:0:3"}, opts, {"job-3"})] == [
        Action.SKIP_REPLAYED
    ]


def test_the_flag_on_the_command_line() -> None:
    assert parse_args(["replay", "--include-cancelled"]).include_cancelled
    assert not parse_args(["replay"]).include_cancelled
