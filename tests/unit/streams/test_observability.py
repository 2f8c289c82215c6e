"""The scrubber on every secret shape, and sentry-sdk for real against a fake ingestion server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sentry_sdk
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from jobstream.streams import observability as obs
from jobstream.streams.settings import Settings
from tests.integration.fake_sentry import FakeSentry, tags_of

PASSWORD = "Pw0rdPlanted71"
TOKEN = "TokPlanted82aa"
API_KEY = "sk-or-v1-KeyPlanted93bbbbbbbbbbbbbbbb"
MARKER = "PayloadMarker54cc"
DSN = f"postgresql://app:{PASSWORD}@db.internal:5432/jobs"


# -- the scrubber, pure ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"could not connect to {DSN}", PASSWORD),
        ("postgresql://app:p@ss@word@h:5432/db failed", "p@ss@word"),
        ("redis://:RedisSecret9@cache:6379/0", "RedisSecret9"),
        ("'postgres://u:QuotedPw99@h/db'", "QuotedPw99"),
        ("host=db port=5432 password=KvSecret1 dbname=jobs", "KvSecret1"),
        ("host=db password='two words' dbname=jobs", "two words"),
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("{'Authorization': 'Token Zm9vYmFy'}", "Zm9vYmFy"),
        ("sent with Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGciOiJIUzI1NiJ9"),
        ("header Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
        (f"upstream refused key {API_KEY}", "KeyPlanted93"),
        ("GET /v1?api_key=QueryKey123&x=1", "QueryKey123"),
        ("token=TokValue456 expired", "TokValue456"),
        ("{'password': 'ReprPw789', 'user': 'app'}", "ReprPw789"),
        ('{"api_key": "JsonKey000", "n": 1}', "JsonKey000"),
        ("client_secret: YamlSecret1 next", "YamlSecret1"),
        ("dsn=postgres://app@h/db?sslmode=require", "postgres://app@h/db"),
        ("1 validation error\n  x [type=extra_forbidden, input_value='PydVal1', input_type=str]",
         "PydVal1"),
        ("[type=dict_type, input_value={'a': 'PydVal2, with comma'}, input_type=dict]",
         "PydVal2"),
        ("truncated: input_value='PydVal3 and more", "PydVal3"),
    ],
)  # fmt: skip
def test_scrubber_removes_each_secret_shape(text: str, secret: str) -> None:
    out = obs.scrub_text(text)
    assert secret not in out
    assert obs.REDACTED in out


@pytest.mark.parametrize(
    "text",
    [
        "http://host:8080/path@v2 answered 503",
        "password authentication failed for user app",
        "tokens used: 120 of the bucket",
        "a basic check of the task-0123456789abcdefghij queue",
        "connection refused (127.0.0.1:5432)",
    ],
)
def test_scrubber_leaves_ordinary_text(text: str) -> None:
    assert obs.scrub_text(text) == text


def test_scrubber_input_value_of_a_real_validation_error() -> None:
    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")
        seconds: float

    with pytest.raises(ValidationError) as info:
        Strict.model_validate({"seconds": MARKER, "other": f"{MARKER}-2"})
    message = str(info.value)
    assert MARKER in message
    assert MARKER not in obs.scrub_text(message)


def test_scrubber_blanks_secret_named_keys_and_header_pairs() -> None:
    data = {
        "password": "x1",
        "request": {"headers": {"Authorization": "opaque", "X-Api-Key": "k", "Accept": "json"}},
        "cookies": {"session": "c"},
        "pairs": [["Cookie", "c2"], ["Accept", "text/plain"]],
        "db_dsn": None,
        "note": f"via {DSN}",
        "count": 3,
    }
    out = obs.Scrubber().data(data)
    assert out["password"] == obs.REDACTED
    assert out["request"]["headers"] == {
        "Authorization": obs.REDACTED,
        "X-Api-Key": obs.REDACTED,
        "Accept": "json",
    }
    assert out["cookies"] == obs.REDACTED
    assert out["pairs"] == [["Cookie", obs.REDACTED], ["Accept", "text/plain"]]
    assert out["db_dsn"] is None
    assert out["count"] == 3
    assert PASSWORD not in out["note"]
    assert data["password"] == "x1"  # the input is not modified


def test_known_secrets_are_removed_wherever_they_appear() -> None:
    encoded = "Pl%40nted%2Fpw"
    settings = Settings(
        database_url=SecretStr(f"postgresql://app:{encoded}@h:5432/db"),
        api_token=SecretStr("ApiTok-3344"),
        openrouter_api_key=SecretStr("or-key-5566"),
        sentry_dsn=SecretStr("https://PublicKey7788@o1.ingest.example/42"),
        worker_name="w",
    )
    obs.register_secrets(settings)
    known = obs.registered_secrets()
    for value in (encoded, "Pl@nted/pw", "ApiTok-3344", "or-key-5566", "PublicKey7788"):
        assert value in known
    text = "bare Pl@nted/pw, ApiTok-3344 and or-key-5566 with PublicKey7788"
    out = obs._scrubber.text(text)
    for value in ("Pl@nted/pw", "ApiTok-3344", "or-key-5566", "PublicKey7788"):
        assert value not in out


def test_payload_values_are_string_leaves_long_keys_and_long_numbers() -> None:
    payload = {
        "a": MARKER,
        "nested": [{"b": "abc"}, {"c": "long enough"}],
        "n": 12345,
        "card": 4111111111111111,
        "KeyPayloadMarker": 1,
    }
    values = obs.payload_values(payload)
    assert {MARKER, "long enough", "4111111111111111", "KeyPayloadMarker"} <= set(values)
    assert "abc" not in values  # too short to replace safely
    assert "nested" not in values  # a short key is the schema's word, not data
    assert "12345" not in values
    out = obs.Scrubber(payload=values).text(f"bad input {MARKER} in {payload}")
    assert MARKER not in out
    assert "4111111111" not in out
    assert "KeyPayload" not in out
    assert obs.PAYLOAD in out


def test_payload_values_of_raw_record_bytes() -> None:
    raw = b'{"id": 1, "type": ["bad"], "payload": {"k": "PayloadMarker54cc"}}'
    values = obs.payload_values(raw)
    assert raw.decode() in values
    assert MARKER in values
    assert obs.payload_values(b"\xffnot json " + MARKER.encode())[0].endswith(MARKER)


# -- the reporting API without Sentry ----------------------------------------------------------


def test_job_scope_and_reports_are_no_ops_without_sentry() -> None:
    assert not obs._enabled
    with obs.job_scope(
        job_id="j", job_type="echo", attempt=1, tier=None, worker="w",
        topic="t", partition=0, offset=1, payload={"x": MARKER},
    ):  # fmt: skip
        assert (
            obs.report_dead_letter(ValueError("x"), reason="fatal_error", job_type="echo") is None
        )
    assert obs._job_payload.get() is None


def test_outage_reports_are_deduplicated_per_step() -> None:
    step, other = "dedup-write", "dedup-outcome"
    assert obs.report_outage_started(step, ConnectionRefusedError(), 31.0)
    assert not obs.report_outage_started(step, ConnectionRefusedError(), 32.0)
    assert obs.report_outage_started(other, None, 30.0)
    assert obs.outages() >= {step, other}
    assert obs.report_outage_ended(step, 40.0)
    assert not obs.report_outage_ended(step, 41.0)
    assert not obs.report_outage_ended("never-failed", 1.0)
    assert obs.report_outage_started(step, None, 30.0)  # a new outage of the same step
    assert obs.report_outage_ended(step, 35.0)
    assert obs.report_outage_ended(other, 35.0)
    assert not obs.outages() & {step, other}


# -- sentry-sdk for real, against the fake ingestion server ------------------------------------


@pytest.fixture
async def fake_sentry() -> AsyncIterator[FakeSentry]:
    server = await FakeSentry().start()
    yield server
    await server.stop()


@pytest.fixture
def sentry_on(fake_sentry: FakeSentry) -> Any:
    settings = Settings(
        sentry_dsn=SecretStr(fake_sentry.dsn()),
        worker_name="w-unit",
        database_url=SecretStr(DSN),
        api_token=SecretStr(TOKEN),
        openrouter_api_key=SecretStr(API_KEY),
    )
    assert obs.init_sentry(settings)
    yield fake_sentry
    obs.shutdown_sentry()


async def flush() -> None:
    """The transport sends from its own thread, to a server on this loop: wait off the loop."""
    await asyncio.to_thread(sentry_sdk.flush, 5)


def planted_failure() -> Exception:
    """An exception raised with the DSN, token, key and payload in frame locals and message."""

    def connect(dsn: str, params: list[str]) -> None:
        raise ConnectionError(
            f"connect {dsn} failed; Authorization: Bearer {TOKEN}; key {API_KEY}; params {params}"
        )

    try:
        connect(DSN, [MARKER])
    except ConnectionError as exc:
        return exc
    raise AssertionError("unreachable")


def scope_of(job_id: str, payload: Any) -> Any:
    return obs.job_scope(
        job_id=job_id, job_type="sleep", attempt=3, tier="retry.1", worker="w-unit",
        topic="jobs", partition=2, offset=41, payload=payload,
    )  # fmt: skip


def assert_clean(fake: FakeSentry) -> None:
    for needle in (PASSWORD, TOKEN, API_KEY, "KeyPlanted93", MARKER):
        assert not fake.contains(needle), f"{needle} reached Sentry"


async def test_dead_letter_event_has_tags_and_no_secret(sentry_on: FakeSentry) -> None:
    log = logging.getLogger("streams.test_observability")
    log.setLevel(logging.INFO)
    with scope_of("job-1", {"marker": MARKER, "n": 1}):
        log.info("connecting to %s with token=%s", DSN, TOKEN)
        log.warning("payload was %s", {"marker": MARKER}, extra={"dsn": DSN, "k": API_KEY})
        event_id = obs.report_dead_letter(planted_failure(), reason="fatal_error", job_type="sleep")
    assert event_id
    await flush()

    [event] = sentry_on.events
    tags = tags_of(event)
    assert tags["job.id"] == "job-1"
    assert tags["job.type"] == "sleep"
    assert tags["job.attempt"] == "3"
    assert tags["job.tier"] == "retry.1"
    assert tags["worker"] == "w-unit"
    assert tags["dead_letter.reason"] == "fatal_error"
    assert event["contexts"]["kafka"] == {"topic": "jobs", "partition": 2, "offset": 41}
    assert event["fingerprint"] == ["dead-letter", "sleep", "fatal_error", "ConnectionError"]
    assert event["level"] == "error"
    assert event["release"].startswith("jobstream@")
    frames = [f for v in event["exception"]["values"] for f in v["stacktrace"]["frames"]]
    assert frames
    assert not any("vars" in f for f in frames)
    crumbs = [c["message"] for c in event["breadcrumbs"]["values"]]
    assert "connecting to [redacted] with token=[redacted]" in crumbs  # the whole DSN is known
    assert any("[payload]" in c for c in crumbs)
    assert "[redacted]" in event["exception"]["values"][0]["value"]
    assert_clean(sentry_on)
    assert sentry_on.logs == []
    assert sentry_on.transactions == []
    # the envelope's trace header keeps the key the request authenticates with
    [envelope] = sentry_on.envelopes
    assert envelope.headers["trace"]["public_key"] == "fakepublickey"


async def test_library_error_logs_are_breadcrumbs_never_events(sentry_on: FakeSentry) -> None:
    for name in ("aiokafka.conn", "faust.transport", "asyncpg.pool", "streams.pipeline"):
        logger = logging.getLogger(name)
        logger.error("%s: lost connection to %s", name, DSN)
        try:
            raise OSError(f"reset by peer, {TOKEN}")
        except OSError:
            logger.exception("unexpected error")
        logger.critical("giving up")
    with scope_of("job-2", None):
        obs.report_dead_letter(ValueError("boom"), reason="exhausted", job_type="sleep")
    await flush()

    [event] = sentry_on.events  # only the explicit report
    crumbs = event["breadcrumbs"]["values"]
    categories = {c.get("category") for c in crumbs}
    assert {"aiokafka.conn", "faust.transport", "asyncpg.pool"} <= categories
    assert any(c["level"] == "error" for c in crumbs)
    assert_clean(sentry_on)


async def test_payload_is_scrubbed_only_in_its_own_scope(sentry_on: FakeSentry) -> None:
    with scope_of("job-3", {"x": MARKER}):
        obs.report_dead_letter(ValueError(f"bad {MARKER}"), reason="fatal_error", job_type="a")
    # the same text in another job's scope is not that job's payload
    with scope_of("job-4", {"x": "something else"}):
        obs.report_dead_letter(ValueError("bad Harmless1234"), reason="fatal_error", job_type="a")
    await flush()

    by_job = {tags_of(e)["job.id"]: e for e in sentry_on.events}
    assert by_job["job-3"]["exception"]["values"][0]["value"] == "bad [payload]"
    assert by_job["job-4"]["exception"]["values"][0]["value"] == "bad Harmless1234"
    assert not sentry_on.contains(MARKER)


async def test_outage_events_once_per_outage_without_job_tags(sentry_on: FakeSentry) -> None:
    exc = ConnectionRefusedError(f"connect call failed to {DSN}")
    with scope_of("job-5", {"x": MARKER}):
        for _ in range(5):  # 5 jobs stuck on the same step
            obs.report_outage_started("write", exc, 30.5)
        obs.report_outage_started("outcome", None, 31.0)
        for _ in range(5):
            obs.report_outage_ended("write", 52.0)
    obs.report_outage_ended("outcome", 53.0)
    await flush()

    summary = [
        (tags_of(e)["outage.step"], tags_of(e)["outage.phase"], e["level"])
        for e in sentry_on.events
    ]
    assert summary == [
        ("write", "started", "warning"),
        ("outcome", "started", "warning"),
        ("write", "ended", "info"),
        ("outcome", "ended", "info"),
    ]
    for event in sentry_on.events:
        tags = tags_of(event)
        assert not set(obs.JOB_TAGS) & set(tags)
        assert "kafka" not in event["contexts"]
        assert tags["worker"] == "w-unit"
        assert event["fingerprint"][:2] == ["outage", tags["outage.step"]]
    assert_clean(sentry_on)


async def test_message_and_breadcrumb_data_are_scrubbed(sentry_on: FakeSentry) -> None:
    sentry_sdk.add_breadcrumb(
        message=f"called with {TOKEN}", data={"url": DSN, "api_key": "abcd", "body": API_KEY}
    )
    sentry_sdk.capture_message(f"plain message {DSN} Bearer {TOKEN} {API_KEY}")
    sentry_sdk.capture_event(
        {
            "logentry": {"message": "connect %s as %s", "params": [DSN, f"token={TOKEN}"]},
            "request": {
                "url": f"https://api.example/v1?api_key={API_KEY}",
                "headers": {"Authorization": f"Bearer {TOKEN}", "Accept": "*/*"},
                "data": {"password": PASSWORD, "note": MARKER},
            },
            "extra": {"settings": {"database_url": DSN}, "raw": f"dsn={DSN}"},
        }
    )
    with scope_of("job-7", {"note": MARKER}):
        sentry_sdk.capture_event({"request": {"data": {"note": MARKER}}})
    await flush()
    first, second, third = sentry_on.events
    assert first["breadcrumbs"]["values"][-1]["data"]["api_key"] == obs.REDACTED
    assert second["request"]["headers"] == {"Authorization": obs.REDACTED, "Accept": "*/*"}
    assert second["request"]["data"]["note"] == MARKER  # outside its job scope: not a payload
    assert third["request"]["data"]["note"] == obs.PAYLOAD
    for needle in (PASSWORD, TOKEN, API_KEY, "KeyPlanted93"):
        assert not sentry_on.contains(needle), needle


async def test_outgoing_requests_carry_no_trace_headers(sentry_on: FakeSentry) -> None:
    """Sentry's baggage header names the DSN key; a webhook target must never see it."""
    import urllib.request

    from aiohttp import web

    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        with scope_of("job-6", None):
            await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{port}/", None, 5)
    finally:
        await runner.cleanup()
    [headers] = seen
    assert not {"sentry-trace", "baggage"} & {h.lower() for h in headers}


# -- log lines ------------------------------------------------------------------------------------


@pytest.fixture
def log_lines() -> Any:
    """Log records through the scrubbing factory to a handler of the test's own."""
    import io

    undo = obs.install_log_scrubber()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.scrubbed")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, out
    logger.removeHandler(handler)
    undo()


def test_log_lines_lose_payload_fragments_in_a_job_scope_even_without_sentry(
    log_lines: Any,
) -> None:
    logger, out = log_lines
    assert not obs._enabled
    payload = {"note": f"card 4111-{MARKER}-tail", "url": f"http://h/p/{MARKER}?q=1"}
    with scope_of("job-log", payload):
        logger.warning("upstream echoed %r", payload["note"][3:30])
        try:
            raise ValueError(f"bad url path /p/{MARKER}")
        except ValueError:
            logger.exception("request failed with %s", DSN)
    logger.warning("outside any job: %s", MARKER)  # not a payload here
    text = out.getvalue()
    assert "Payload" not in text.split("outside any job")[0]
    assert "Traceback" in text  # the traceback is kept, scrubbed
    assert PASSWORD not in text
    assert f"outside any job: {MARKER}" in text


def test_a_scrubbed_record_formats_with_the_workers_formatter(log_lines: Any) -> None:
    """The worker logs through mode's ExtensionFormatter (faust's), which turns ``args=None``
    into ``(None,)`` and then fails to format: a scrubbed record spends its args as ``()``."""
    import io

    from mode.utils.logging import ExtensionFormatter

    logger, _ = log_lines
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(ExtensionFormatter(stream=out, fmt="%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        logger.warning("100%% of %s done", "the batch")
    finally:
        logger.removeHandler(handler)
    assert out.getvalue().strip().endswith("WARNING 100% of the batch done")


def test_a_scrubber_that_fails_withholds_the_line(
    log_lines: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, out = log_lines

    def broken(self: obs.Scrubber, s: str) -> str:
        raise RuntimeError("scrubber bug")

    monkeypatch.setattr(obs.Scrubber, "text", broken)
    logger.warning("secret %s", TOKEN)
    assert TOKEN not in out.getvalue()
    assert "withheld" in out.getvalue()
