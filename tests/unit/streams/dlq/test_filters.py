"""Filter parsing and matching, and the replay selection built on it: no services needed."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from jobstream.models.deadletter import REPLAY_HEADER, DeadLetter, DeadLetterReason, b64
from jobstream.models.job import FailureRecord, JobEvent
from jobstream.streams.dlq.cli import DlqArgs, main, parse_args, run_dlq_async
from jobstream.streams.dlq.filters import DeadLetterFilter, FilterError, parse_time
from jobstream.streams.dlq.replay import (
    Action,
    ReplayOptions,
    build_record,
    plan,
)
from jobstream.streams.settings import Settings

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def dead_letter(
    n: int = 0,
    *,
    job_type: str | None = "email",
    reason: DeadLetterReason = DeadLetterReason.EXHAUSTED,
    error_class: str = "models.errors.RetryableError",
    at: datetime = NOW,
    key: bytes | None = b"customer-7",
    value: bytes | None = None,
    event: JobEvent | None = None,
) -> DeadLetter:
    event = event or JobEvent(id=f"job-{n}", type=job_type or "x", attempt=5)
    raw = value if value is not None else event.to_bytes()
    return DeadLetter(
        id=DeadLetter.coordinates("jobs", 0, n),
        job_id=f"job-{n}",
        job_type=job_type,
        reason=reason,
        error_class=error_class,
        error_message="boom",
        source_topic="jobs",
        source_partition=0,
        source_offset=n,
        first_failure_at=at,
        last_failure_at=at,
        original_key=b64(key),
        original_value=b64(raw),
        original_headers=[("trace", b64(b"abc")), ("empty", None)],
    )


class TestParseTime:
    @pytest.mark.parametrize(
        ("text", "delta"),
        [
            ("45s", timedelta(seconds=45)),
            ("30m", timedelta(minutes=30)),
            ("2h", timedelta(hours=2)),
            ("7d", timedelta(days=7)),
            ("1w", timedelta(weeks=1)),
            ("1h30m", timedelta(hours=1, minutes=30)),
            ("1.5h", timedelta(minutes=90)),
            (" 2H ", timedelta(hours=2)),
        ],
    )
    def test_relative_is_an_age_before_now(self, text: str, delta: timedelta) -> None:
        assert parse_time(text, now=NOW) == NOW - delta

    def test_iso_with_offset_and_z(self) -> None:
        assert parse_time("2024-04-30T10:00:00+02:00", now=NOW) == datetime(
            2024, 4, 30, 8, tzinfo=UTC
        )
        assert parse_time("2024-04-30T10:00:00Z", now=NOW) == datetime(2024, 4, 30, 10, tzinfo=UTC)

    def test_naive_and_date_only_mean_utc(self) -> None:
        assert parse_time("2024-04-30T10:00", now=NOW) == datetime(2024, 4, 30, 10, tzinfo=UTC)
        assert parse_time("2024-04-30", now=NOW) == datetime(2024, 4, 30, tzinfo=UTC)

    @pytest.mark.parametrize("text", ["", "yesterday", "2 h", "-2h", "2", "h", "2x", "2024-13-01"])
    def test_bad_values_raise_filter_error(self, text: str) -> None:
        with pytest.raises(FilterError):
            parse_time(text, now=NOW)


class TestFilterParse:
    def test_repeated_and_comma_values_are_alternatives(self) -> None:
        f = DeadLetterFilter.parse(types=["a,b", "c"], reasons=["EXHAUSTED", "fatal_error"])
        assert f.types == {"a", "b", "c"}
        assert f.reasons == {DeadLetterReason.EXHAUSTED, DeadLetterReason.FATAL_ERROR}

    def test_unknown_reason_names_the_valid_ones(self) -> None:
        with pytest.raises(FilterError, match="invalid_json"):
            DeadLetterFilter.parse(reasons=["exhausted", "tired"])

    @pytest.mark.parametrize("flag", ["types", "error_classes", "keys"])
    def test_empty_value_is_an_error(self, flag: str) -> None:
        with pytest.raises(FilterError, match="empty value"):
            DeadLetterFilter.parse(**{flag: ["a,,b"]})  # type: ignore[arg-type]

    def test_since_must_precede_until(self) -> None:
        with pytest.raises(FilterError, match="before"):
            DeadLetterFilter.parse(since="1h", until="2h", now=NOW)
        f = DeadLetterFilter.parse(since="2h", until="1h", now=NOW)
        assert f.since == NOW - timedelta(hours=2)
        assert f.until == NOW - timedelta(hours=1)

    def test_bad_since_is_a_filter_error(self) -> None:
        with pytest.raises(FilterError, match="relative age"):
            DeadLetterFilter.parse(since="last tuesday")


class TestFilterMatch:
    def test_empty_filter_matches_everything(self) -> None:
        assert DeadLetterFilter().matches(dead_letter(job_type=None))

    def test_type(self) -> None:
        f = DeadLetterFilter.parse(types=["email,sms"])
        assert f.matches(dead_letter(job_type="sms"))
        assert not f.matches(dead_letter(job_type="webhook"))
        assert not f.matches(dead_letter(job_type=None))

    def test_reason(self) -> None:
        f = DeadLetterFilter.parse(reasons=["fatal_error"])
        assert f.matches(dead_letter(reason=DeadLetterReason.FATAL_ERROR))
        assert not f.matches(dead_letter(reason=DeadLetterReason.EXHAUSTED))

    def test_error_class_full_or_bare_name(self) -> None:
        dl = dead_letter(error_class="models.errors.RetryableError")
        assert DeadLetterFilter.parse(error_classes=["RetryableError"]).matches(dl)
        assert DeadLetterFilter.parse(error_classes=["models.errors.RetryableError"]).matches(dl)
        assert not DeadLetterFilter.parse(error_classes=["Retryable"]).matches(dl)
        assert not DeadLetterFilter.parse(error_classes=["FatalError"]).matches(dl)

    def test_since_inclusive_until_exclusive(self) -> None:
        f = DeadLetterFilter.parse(since="2h", until="1h", now=NOW)
        assert f.matches(dead_letter(at=NOW - timedelta(hours=2)))
        assert f.matches(dead_letter(at=NOW - timedelta(minutes=90)))
        assert not f.matches(dead_letter(at=NOW - timedelta(hours=1)))
        assert not f.matches(dead_letter(at=NOW - timedelta(hours=3)))

    def test_naive_failure_time_is_taken_as_utc(self) -> None:
        f = DeadLetterFilter.parse(since="2024-05-01T11:00Z", now=NOW)
        assert f.matches(dead_letter(at=datetime(2024, 5, 1, 11, 30)))

    def test_key_matches_job_id_original_key_or_dead_letter_id(self) -> None:
        dl = dead_letter(3, key=b"customer-7")
        for key in ("job-3", "customer-7", "jobs:0:3"):
            assert DeadLetterFilter.parse(keys=[key]).matches(dl)
        assert not DeadLetterFilter.parse(keys=["job-4"]).matches(dl)

    def test_criteria_combine_with_and(self) -> None:
        f = DeadLetterFilter.parse(types=["email"], reasons=["fatal_error"])
        assert not f.matches(dead_letter(reason=DeadLetterReason.EXHAUSTED))
        assert f.matches(dead_letter(reason=DeadLetterReason.FATAL_ERROR))


class TestReplaySelection:
    def test_record_is_the_original_event_with_the_replay_header(self) -> None:
        past = datetime(2024, 1, 1, tzinfo=UTC)
        history = [FailureRecord(attempt=1, error_class="E", message="m", at=past)]
        event = JobEvent(id="job-1", type="email", attempt=4, not_before=past, history=history)
        rec = build_record(dead_letter(1, event=event), reset_attempts=False, include_invalid=False)
        assert rec is not None
        assert rec.as_event
        out = JobEvent.model_validate_json(rec.value)
        assert (out.attempt, out.not_before, out.history) == (4, None, history)
        assert rec.key == b"customer-7"
        assert rec.headers == [("trace", b"abc"), ("empty", None), (REPLAY_HEADER, b"jobs:0:1")]

    def test_reset_attempts_keeps_history(self) -> None:
        past = datetime(2024, 1, 1, tzinfo=UTC)
        history = [FailureRecord(attempt=1, error_class="E", message="m", at=past)]
        event = JobEvent(id="job-1", type="email", attempt=4, history=history)
        rec = build_record(dead_letter(1, event=event), reset_attempts=True, include_invalid=False)
        assert rec is not None
        out = JobEvent.model_validate_json(rec.value)
        assert (out.attempt, out.history) == (1, history)

    def test_missing_key_falls_back_to_the_event_key(self) -> None:
        rec = build_record(dead_letter(1, key=None), reset_attempts=False, include_invalid=False)
        assert rec is not None
        assert rec.key == b"job-1"

    def test_invalid_bytes_skipped_unless_included_then_unchanged(self) -> None:
        dl = dead_letter(1, reason=DeadLetterReason.INVALID_JSON, value=b"{nope")
        assert build_record(dl, reset_attempts=True, include_invalid=False) is None
        rec = build_record(dl, reset_attempts=True, include_invalid=True)
        assert rec is not None
        assert rec.value == b"{nope"
        assert not rec.as_event

    def test_undecodable_reason_is_never_rewritten(self) -> None:
        dl = dead_letter(1, reason=DeadLetterReason.OVERSIZE)
        assert build_record(dl, reset_attempts=True, include_invalid=False) is None
        rec = build_record(dl, reset_attempts=True, include_invalid=True)
        assert rec is not None
        assert rec.value == base64.b64decode(dl.original_value or "")

    def test_plan_limit_counts_only_republished(self) -> None:
        dls = [dead_letter(n) for n in range(6)]
        bad = dead_letter(9, reason=DeadLetterReason.INVALID_JSON, value=b"x")
        items = plan(
            [dls[0], bad, dls[1], dls[2], dls[3]], {"jobs:0:1"}, ReplayOptions("t", limit=2)
        )
        assert [(i.dead_letter.id, i.action) for i in items] == [
            ("jobs:0:0", Action.REPLAY),
            ("jobs:0:9", Action.SKIP_INVALID),
            ("jobs:0:1", Action.SKIP_REPLAYED),
            ("jobs:0:2", Action.REPLAY),
        ]

    def test_plan_force_replays_already_replayed(self) -> None:
        items = plan([dead_letter(1)], {"jobs:0:1"}, ReplayOptions("t", force=True))
        assert [i.action for i in items] == [Action.REPLAY]


class TestCli:
    @staticmethod
    def parse(*argv: str) -> DlqArgs:
        return parse_args(argv)

    @pytest.mark.parametrize(
        "argv",
        [
            ("list", "--since", "yesterday"),
            ("stats", "--until", "2h", "--since", "1h"),
            ("replay", "--reason", "tired"),
            ("replay", "--limit", "0"),
            ("replay", "--rate", "-1"),
            ("list", "--type", ","),
        ],
    )
    async def test_bad_filters_exit_2_before_any_connection(
        self, argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
    ) -> None:
        # an unreachable broker proves the filters are checked first
        settings = Settings(
            kafka_bootstrap="127.0.0.1:1", database_url=SecretStr("postgresql://x@127.0.0.1:1/x")
        )
        assert await run_dlq_async(self.parse(*argv), settings) == 2
        assert capsys.readouterr().err.startswith("error: ")

    def test_main_usage_errors_exit_2_and_help_exits_0(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["nope"]) == 2
        assert main(["replay", "--limit", "many"]) == 2
        assert main(["replay", "--help"]) == 0
        out = capsys.readouterr().out
        assert "exit codes:" in out
        assert "--reset-attempts" in out
        assert "dlq_replays" in out
