"""The job-control additions to the public API: exported by ``jobstream``, named in the README,
typed, and every parameter documented in its docstring."""

from __future__ import annotations

import inspect
import re

import pytest

import jobstream
from jobstream import JobClient
from tests.unit.test_readme import section

METHODS = ("submit_unique", "cancel", "cancel_many", "result", "watch", "submit_and_wait")
TYPES = (
    "Dedupe", "DedupeMode", "Submission", "CancelAnswer", "CancelResult", "JobResult",
    "Progress", "JobUpdate", "ResultTimeoutError",
)  # fmt: skip


@pytest.mark.parametrize("name", TYPES)
def test_the_types_are_exported_and_named_in_the_readme(name: str) -> None:
    assert name in jobstream.__all__
    assert getattr(jobstream, name) is not None
    if name not in ("DedupeMode", "CancelAnswer", "JobUpdate"):  # the README names their values
        assert re.search(rf"\b{name}\b", section("Job control")), name


@pytest.mark.parametrize("name", METHODS)
def test_each_method_is_typed_documented_and_named_in_the_readme(name: str) -> None:
    method = getattr(JobClient, name)
    doc = inspect.getdoc(method) or ""
    build = inspect.getdoc(JobClient.build) or ""
    hints = inspect.get_annotations(method)
    assert "return" in hints, name
    for param in list(inspect.signature(method).parameters)[1:]:
        assert param in hints, f"{name}({param}) has no type"
        documented = f":param {param}:" in doc
        from_build = (
            "The other parameters are :meth:`build`'s" in doc and f":param {param}:" in build
        )
        assert documented or from_build, f"{name}({param}) is not documented"
    assert re.search(rf"`{name}\(", section("Job control")), name


def test_the_control_parameters_of_the_client_are_documented() -> None:
    doc = inspect.getdoc(JobClient) or ""
    for param in ("database_url", "pool", "pooler_mode"):
        assert f":param {param}:" in doc
