from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import WorkerFactory

pytestmark = pytest.mark.integration


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
