"""Property: no piece of a job's payload reaches Sentry or the log, however a handler quotes it.

Hypothesis makes payloads (any text, with a rare character in every 8 characters, see
``tests/leaks.py``) and a recipe for a handler of a test app: which slices, truncations, URL
parts (path, query, user, password) of the payload to put into its log lines and its exception,
each plain, JSON-encoded, ``repr``-ed, as bytes or percent-encoded, and which way to fail
(fatal, retried until exhausted, an exception of its own with a chained cause). The job runs
through the worker's own pipeline (``jobstream.testing.JobTester``) with sentry-sdk reporting
for real to the fake ingestion server (an HTTP server on 127.0.0.1), and the log goes through
the scrubbing record factory to a handler of the test's. Every string of every envelope that
arrived, and every log line, is searched with the leak oracle: nothing may be found.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import sentry_sdk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from jobstream.models.job import JobStatus
from jobstream.streams import observability as obs
from jobstream.streams.settings import Settings
from jobstream.testing import JobTester
from tests.integration.fake_sentry import FakeSentry
from tests.leaks import leaks, secret_text, strings_of
from tests.leaky_app import Leaky, app, leaky

EXAMPLES = 60


@dataclass
class Reporting:
    fake: FakeSentry
    log: io.StringIO


@pytest.fixture(scope="module")
def fake_sentry() -> Iterator[FakeSentry]:
    """The fake ingestion server on a loop of its own: each example runs its own loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake = asyncio.run_coroutine_threadsafe(FakeSentry().start(), loop).result(10)
    yield fake
    asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.fixture
def reporting(fake_sentry: FakeSentry) -> Iterator[Reporting]:
    settings = Settings(sentry_dsn=SecretStr(fake_sentry.dsn()), worker_name="w-property")
    assert obs.init_sentry(settings)
    undo = obs.install_log_scrubber()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        yield Reporting(fake_sentry, out)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        undo()
        obs.shutdown_sentry()


urls = st.builds(
    lambda user, pw, path, query: (
        f"http://{quote(user, safe='')}:{quote(pw, safe='')}@h.example/{quote(path)}"
        f"?q={quote_plus(query)}"
    ),
    secret_text,
    secret_text,
    secret_text,
    secret_text,
)
payloads = st.builds(
    Leaky,
    texts=st.lists(secret_text, min_size=1, max_size=3),
    url=urls,
    quotes=st.lists(
        st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 400), st.integers(1, 300)),
        min_size=1,
        max_size=5,
    ),
    failure=st.integers(0, 2),
)
COUNTS = {"examples": 0, "events": 0, "log_lines": 0}


@pytest.fixture(scope="module", autouse=True)
def _print_counts() -> Iterator[None]:
    yield
    print(f"\nscrubbing property: {COUNTS} checked, 0 leaks")  # seen with pytest -s


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=payloads)
def test_no_fragment_of_a_payload_reaches_sentry_or_the_log(
    reporting: Reporting, payload: Leaky
) -> None:
    fake, out = reporting.fake, reporting.log
    fake.clear()
    out.seek(0)
    out.truncate()

    async def run() -> Any:
        async with JobTester(app, settings=Settings(worker_name="w-property")) as tester:
            return await tester.run(leaky, payload)

    job = asyncio.run(run())
    assert job.status is JobStatus.DEAD_LETTERED
    sentry_sdk.flush(10)
    events = fake.events
    assert len(events) == 1  # one report per dead letter, nothing else
    secrets = [*payload.texts, payload.url]
    outputs = [s for envelope in fake.envelopes for s in strings_of(envelope.headers)]
    outputs += [s for body in fake.bodies for s in _item_strings(body)]
    lines = out.getvalue().splitlines()
    assert any("failed" in line for line in lines)
    found = leaks(secrets, [*outputs, *lines])
    assert found == [], found[:3]
    types = {v["type"] for v in events[0]["exception"]["values"]}
    assert types & {"FatalError", "RetryableError", "HandlerBug"}
    COUNTS["examples"] += 1
    COUNTS["events"] += len(events)
    COUNTS["log_lines"] += len(lines)


def _item_strings(body: bytes) -> Iterator[str]:
    """Every string of every JSON line of an envelope body (headers and items)."""
    for line in body.split(b"\n"):
        try:
            doc = json.loads(line)
        except ValueError:
            yield line.decode("utf-8", "replace")
            continue
        yield from strings_of(doc)
