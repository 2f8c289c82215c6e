"""Fixtures: the fake upstreams and a JobTester wired to them.

The tests run from this project (``pip install -e '.[test]' && pytest``) or from the jobstream
checkout's ``make test``, where acme_jobs is not installed: its folder is then put on
``sys.path``, as an editable install would.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path

if importlib.util.find_spec("acme_jobs") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import pytest
from acme_jobs.jobs import Resources, app
from acme_jobs.llm import OpenRouter
from pydantic import SecretStr
from upstreams import FakeOpenRouter, Receivers
from worker import RECEIVERS, RecordingClient, settings

from jobstream.testing import JobTester


@pytest.fixture
async def openrouter() -> AsyncIterator[FakeOpenRouter]:
    async with FakeOpenRouter() as fake:
        yield fake


@pytest.fixture
async def receivers() -> AsyncIterator[Receivers]:
    async with Receivers() as fake:
        yield fake


@pytest.fixture
def jobs() -> RecordingClient:
    return RecordingClient()


@pytest.fixture
async def tester(
    openrouter: FakeOpenRouter, receivers: Receivers, jobs: RecordingClient
) -> AsyncIterator[JobTester]:
    """Acme's app with the resources its lifespan would make, pointed at the fakes; the
    receivers' address is allowed as JOBSTREAM_WEBHOOK_ALLOW_HOSTS would allow it."""
    async with aiohttp.ClientSession() as http:
        resources = Resources(
            llm=OpenRouter(http, openrouter.base_url, SecretStr("sk-test"), timeout_s=5),
            model="acme/summarizer",
            jobs=jobs,
            webhooks={"order.paid": [receivers.url(p) for p in RECEIVERS]},
        )
        async with JobTester(
            app, settings=settings(receivers.host_port), resources=resources
        ) as tester:
            yield tester
