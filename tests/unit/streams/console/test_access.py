"""The console's access rule, its session cookies and its parameter checks, in memory."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from itsdangerous import URLSafeTimedSerializer

from jobstream.streams.console.access import (
    FAILED_LOGIN_WINDOW_S,
    MAX_FAILED_LOGINS,
    OFF_MESSAGE,
    AccessPolicy,
    LoginThrottle,
    Mode,
    Role,
    access_mode,
    is_loopback,
    refusal,
)
from jobstream.streams.console.params import (
    BadInput,
    ReplayRequest,
    job_filter,
    limit,
    replay_request,
)
from jobstream.streams.console.queries import (
    CursorError,
    JobFilter,
    decode_cursor,
    encode_cursor,
    jobs_page_sql,
)
from jobstream.streams.settings import Settings

STATUSES = ("running", "retrying", "succeeded", "dead_lettered")


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize(
    ("values", "host", "mode"),
    [
        ({}, "127.0.0.1", Mode.OFF),  # nothing configured: off, even on loopback
        ({"console_dev_open": True}, "127.0.0.1", Mode.DEV_OPEN),
        ({"console_dev_open": True}, "::1", Mode.DEV_OPEN),
        ({"console_dev_open": True}, "localhost", Mode.DEV_OPEN),
        ({"console_dev_open": True}, "0.0.0.0", Mode.OFF),  # never open off loopback
        ({"console_dev_open": True}, "10.0.0.5", Mode.OFF),
        ({"console_viewer_token": "v"}, "0.0.0.0", Mode.TOKENS),
        ({"console_operator_token": "o"}, "0.0.0.0", Mode.TOKENS),
        ({"console_operator_token": "o", "console_dev_open": True}, "127.0.0.1", Mode.TOKENS),
    ],
)
def test_the_access_rule(values: dict[str, object], host: str, mode: Mode) -> None:
    assert access_mode(settings(**values), host) is mode


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.2")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("example.org")


def test_tokens_decide_the_role() -> None:
    policy = AccessPolicy(
        settings(console_viewer_token="view-1", console_operator_token="op-1"), "127.0.0.1"
    )
    assert policy.role_for_token("view-1") is Role.VIEWER
    assert policy.role_for_token(" op-1 ") is Role.OPERATOR
    assert policy.role_for_token("op-2") is None
    assert policy.role_for_token("") is None


def test_session_cookies_are_signed_and_end_with_their_token() -> None:
    s = settings(console_operator_token="op-1", console_secret_key="k" * 32)
    policy = AccessPolicy(s, "127.0.0.1")
    session = policy.new_session(Role.OPERATOR)
    cookie = policy.encode(session)
    assert "op-1" not in cookie
    back = policy.decode(cookie)
    assert back is not None
    assert back.role is Role.OPERATOR
    assert back.csrf == session.csrf
    # a tampered cookie, one signed with another key, and garbage are all no session
    assert policy.decode(cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")) is None
    other = URLSafeTimedSerializer(b"other-key", salt="jobstream.console.session")
    assert policy.decode(str(other.dumps({"r": "operator", "c": "x", "f": ""}))) is None
    assert policy.decode("not-a-cookie") is None
    assert policy.decode(None) is None
    # the same key after a restart still accepts it; a rotated token does not
    assert AccessPolicy(s, "127.0.0.1").decode(cookie) is not None
    rotated_tokens = settings(console_operator_token="op-2", console_secret_key="k" * 32)
    assert AccessPolicy(rotated_tokens, "127.0.0.1").decode(cookie) is None


def test_sessions_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(console_viewer_token="v", console_secret_key="k" * 32, console_session_ttl_s=60)
    policy = AccessPolicy(s, "127.0.0.1")
    cookie = policy.encode(policy.new_session(Role.VIEWER))
    assert policy.decode(cookie) is not None
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 61)
    assert policy.decode(cookie) is None


def test_a_random_key_per_process_when_none_is_configured() -> None:
    s = settings(console_viewer_token="v")
    one, two = AccessPolicy(s, "127.0.0.1"), AccessPolicy(s, "127.0.0.1")
    assert two.decode(one.encode(one.new_session(Role.VIEWER))) is None


def test_limits_and_filters_are_checked() -> None:
    assert limit({}) == 50
    assert limit({"limit": "200"}) == 200
    for bad in ("0", "201", "-1", "x", "1.5"):
        with pytest.raises(BadInput):
            limit({"limit": bad})
    flt = job_filter({"status": "succeeded", "type": " echo ", "since": "1h"}, STATUSES)
    assert flt.status == "succeeded"
    assert flt.type == "echo"
    assert flt.since is not None
    with pytest.raises(BadInput, match="status must be one of running, retrying"):
        job_filter({"status": "lost"}, STATUSES)
    with pytest.raises(BadInput, match="since must be before until"):
        job_filter({"since": "1h", "until": "2h"}, STATUSES)


def test_cursors_round_trip_and_foreign_ones_are_refused() -> None:
    at = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert decode_cursor(encode_cursor(at, "job|with|bars")) == (at, "job|with|bars")
    for bad in ("", "!!!", "bm90LWEtY3Vyc29y", encode_cursor(at, "x")[:-3] + "@@@"):
        with pytest.raises(CursorError):
            decode_cursor(bad)


def test_the_page_query_names_only_the_filters_given() -> None:
    sql, args = jobs_page_sql(JobFilter(), None, 50)
    assert "WHERE" not in sql
    assert args == []
    assert sql.endswith("LIMIT 51")
    at = datetime(2026, 5, 1, tzinfo=UTC)
    sql, args = jobs_page_sql(JobFilter(status="succeeded", worker="w1"), (at, "j9"), 10)
    assert "status = $1 AND worker = $2 AND (updated_at, job_id) < ($3, $4)" in sql
    assert args == ["succeeded", "w1", at, "j9"]
    assert "ORDER BY updated_at DESC, job_id DESC LIMIT 11" in sql


def test_replay_requests_are_validated() -> None:
    assert replay_request({}).dry_run is True
    req = replay_request({"type": "echo", "dry_run": False, "expect": 2})
    assert isinstance(req, ReplayRequest)
    assert req.filters() == {"type": "echo"}
    for body, says in [
        ([], "JSON object"),
        ({"dry_run": False}, "expect is required"),
        ({"extra": 1}, "extra"),
        ({"rate": 0}, "rate"),
        ({"ids": []}, "ids is empty"),
        ({"expect": -1}, "expect"),
    ]:
        with pytest.raises(BadInput, match=says):
            replay_request(body)


def test_short_tokens_are_refused() -> None:
    assert refusal(settings(console_operator_token="x" * 16), "0.0.0.0") is None
    why = refusal(settings(console_operator_token="x" * 15), "0.0.0.0")
    assert why is not None
    assert "JOBSTREAM_CONSOLE_OPERATOR_TOKEN is shorter than 16" in why
    assert refusal(settings(), "127.0.0.1") == OFF_MESSAGE


def test_failed_logins_are_throttled_per_address(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    throttle = LoginThrottle()
    for _ in range(MAX_FAILED_LOGINS):
        assert throttle.wait_s("10.0.0.1") == 0
        throttle.failed("10.0.0.1")
    assert throttle.wait_s("10.0.0.1") == pytest.approx(FAILED_LOGIN_WINDOW_S)
    assert throttle.wait_s("10.0.0.2") == 0  # another address is not affected
    clock[0] += FAILED_LOGIN_WINDOW_S
    assert throttle.wait_s("10.0.0.1") == 0
