"""The README's "Writing your own jobs" stays true: it follows the two commands, its steps come
in order, its Python is the example project's code, and the app it runs loads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobstream import JobApp
from jobstream.agents.catalog import load_app

ROOT = Path(__file__).resolve().parents[2]
SECTION = "Writing your own jobs"


def readme() -> str:
    return (ROOT / "README.md").read_text()


def section(title: str) -> str:
    """The text under ``## title``, up to the next ``## `` heading."""
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", readme(), re.S | re.M)
    assert found is not None, f"README has no section {title!r}"
    return found.group(1)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_the_section_comes_right_after_the_two_commands() -> None:
    headings = re.findall(r"^## (.+)$", readme(), re.M)
    assert headings[headings.index("The two commands") + 1] == SECTION


def test_its_steps_are_install_define_run_test_deploy_within_a_page() -> None:
    text = section(SECTION)
    assert re.findall(r"^\*\*(\w+)\.\*\*", text, re.M) == [
        "Install",
        "Define",
        "Run",
        "Test",
        "Deploy",
    ]
    assert len(text.strip().splitlines()) <= 66


def test_its_code_is_the_example_projects_code() -> None:
    """Each block names its file in its first line; every other line of it is a line of that
    file (``...`` elides, alone or as a ``def``'s body), so changing the example without the
    README fails here."""
    blocks = python_blocks(section(SECTION))
    assert len(blocks) == 3
    for block in blocks:
        first, *lines = block.splitlines()
        path = ROOT / first.removeprefix("# ")
        assert path.is_file(), f"{first!r} names no file of the checkout"
        source = {line.strip() for line in path.read_text().splitlines()}
        shown = [
            line.strip().removesuffix(": ...") + (":" if line.endswith(": ...") else "")
            for line in lines
            if line.strip() not in ("", "...")
        ]
        assert [line for line in shown if line not in source] == [], path
        assert len(shown) >= 4


def test_the_app_it_runs_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = set(re.findall(r"--app (\S+?)`", section(SECTION)))
    assert specs == {"acme_jobs.jobs:app"}
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "acme_jobs"))
    app = load_app("acme_jobs.jobs:app")
    assert isinstance(app, JobApp)
    assert {"ticket.summarize", "event.fanout", "http.webhook"} <= set(app.jobs)
