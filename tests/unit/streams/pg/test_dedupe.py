"""What a deduplicated submit does, by mode, key and standing job (the decision alone; the
transaction around it runs on the real database in ``tests/integration/test_control.py``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from jobstream.models.control import Dedupe, DedupeMode
from jobstream.models.job import JobStatus
from jobstream.streams.pg.dedupe import Decision, decide

WAITING = (JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.RETRYING)
FINISHED = (JobStatus.SUCCEEDED, JobStatus.DEAD_LETTERED, JobStatus.CANCELLED, JobStatus.EXPIRED)


@pytest.mark.parametrize("mode", list(DedupeMode))
@pytest.mark.parametrize("standing", [None, *WAITING, *FINISHED])
def test_an_expired_key_or_a_vanished_job_makes_a_new_job(
    mode: DedupeMode, standing: JobStatus | None
) -> None:
    assert decide(mode, expired=True, standing=standing) is Decision.NEW
    assert decide(mode, expired=False, standing=None) is Decision.NEW


@pytest.mark.parametrize("standing", WAITING)
def test_simple_keeps_the_first_while_it_is_unfinished(standing: JobStatus) -> None:
    assert decide(DedupeMode.SIMPLE, expired=False, standing=standing) is Decision.KEEP


@pytest.mark.parametrize("standing", FINISHED)
def test_simple_makes_a_new_job_once_the_first_finished(standing: JobStatus) -> None:
    assert decide(DedupeMode.SIMPLE, expired=False, standing=standing) is Decision.NEW


@pytest.mark.parametrize("standing", [*WAITING, *FINISHED])
def test_throttle_keeps_the_first_for_the_ttl_whatever_became_of_it(standing: JobStatus) -> None:
    assert decide(DedupeMode.THROTTLE, expired=False, standing=standing) is Decision.KEEP


def test_debounce_replaces_a_waiting_job_and_makes_a_new_one_once_it_started() -> None:
    mode = DedupeMode.DEBOUNCE
    assert decide(mode, expired=False, standing=JobStatus.SCHEDULED) is Decision.REPLACE
    for standing in (JobStatus.RUNNING, JobStatus.RETRYING, *FINISHED):
        assert decide(mode, expired=False, standing=standing) is Decision.NEW


def test_a_dedupe_spec_says_what_is_wrong_with_it() -> None:
    assert Dedupe("k").mode is DedupeMode.SIMPLE
    assert Dedupe("k", "throttle", timedelta(seconds=5)).ttl_s == 5.0
    bad: list[tuple[dict[str, Any], str]] = [
        ({"key": ""}, "non-empty"),
        ({"key": "x" * 201}, "at most 200"),
        ({"key": "a\x00b"}, "U\\+0000"),
        ({"key": "k", "mode": "sometimes"}, "one of simple, throttle, debounce"),
        ({"key": "k", "mode": "throttle"}, "throttle needs a ttl"),
        ({"key": "k", "ttl": 0}, "more than 0"),
        ({"key": "k", "ttl": True}, "number of seconds"),
    ]
    for args, why in bad:
        with pytest.raises(ValueError, match=why):
            Dedupe(**args)
