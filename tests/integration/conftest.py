from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import WorkerFactory

pytestmark = pytest.mark.integration

INTEGRATION_TIMEOUT_S = 300
"""Per test against the real services (worker processes start, topics are created); a unit
test gets pytest's ``timeout`` (30 s), a test that needs more says so with its own marker."""


@pytest.fixture
def workers(
    kafka_bootstrap: str, database_url: str, prefix: str, tmp_path: Path
) -> Iterator[WorkerFactory]:
    factory = WorkerFactory(
        bootstrap=kafka_bootstrap, dsn=database_url, prefix=prefix, tmp=tmp_path
    )
    yield factory
    factory.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(INTEGRATION_TIMEOUT_S))
