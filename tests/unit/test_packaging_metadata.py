"""The two distributions and the three locks agree with each other.

jobstream and jobstream-dev (streams/dev/) are released together: the ``[dev]`` extra pins
jobstream-dev to jobstream's version and jobstream-dev pins jobstream back. The locks come from one
resolution (``make lock``): the image installs requirements/runtime.lock, so each of its pins must
be the one CI tested in requirements/dev.lock. Building and installing the wheels is
tests/integration/test_packaging.py.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.MULTILINE)


def project(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads(path.read_text())["project"]
    return data


def pins(lock: Path) -> dict[str, str]:
    found: dict[str, str] = {
        canonicalize_name(name): version for name, version in _PIN.findall(lock.read_text())
    }
    assert found, f"no pins in {lock}"
    return found


def requirement(requirements: list[str], name: str) -> Requirement:
    (found,) = [r for r in map(Requirement, requirements) if canonicalize_name(r.name) == name]
    return found


def test_the_dev_extra_and_jobstream_dev_pin_each_other_at_one_version() -> None:
    main = project(ROOT / "pyproject.toml")
    dev = project(ROOT / "streams" / "dev" / "pyproject.toml")
    assert dev["version"] == main["version"]
    assert dev["requires-python"] == main["requires-python"]
    extra = requirement(main["optional-dependencies"]["dev"], "jobstream-dev")
    assert str(extra.specifier) == f"=={main['version']}"
    back = requirement(dev["dependencies"], "jobstream")
    assert str(back.specifier) == f"=={main['version']}"


def test_the_runtime_needs_no_dev_only_dependency() -> None:
    runtime = {
        canonicalize_name(Requirement(r).name)
        for r in project(ROOT / "pyproject.toml")["dependencies"]
    }
    dev_only = {
        canonicalize_name(Requirement(r).name)
        for r in project(ROOT / "streams" / "dev" / "pyproject.toml")["dependencies"]
    } - {"jobstream"}
    assert dev_only >= {"psutil", "filelock", "testcontainers", "cryptography"}
    assert not runtime & dev_only
    assert not dev_only & set(pins(REQUIREMENTS / "runtime.lock"))


def test_the_classifiers_name_the_versions_ci_tests() -> None:
    main = project(ROOT / "pyproject.toml")
    listed = {
        c.rsplit(" :: ", 1)[1]
        for c in main["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    makefile = (ROOT / "Makefile").read_text()
    others = re.search(r"^PYTHONS \?= (.+)$", makefile, re.MULTILINE)
    assert others, "the Makefile names the other Pythons in PYTHONS"
    floor = main["requires-python"].removeprefix(">=")
    assert listed == {floor, *others.group(1).split()}


@pytest.mark.parametrize("lock", ["runtime.lock", "dev-stack.lock"])
def test_each_lock_pins_what_dev_lock_pins(lock: str) -> None:
    full = pins(REQUIREMENTS / "dev.lock")
    subset = pins(REQUIREMENTS / lock)
    assert {name: full.get(name) for name in subset} == subset
    text = (REQUIREMENTS / lock).read_text()
    for name in subset:  # every pin carries its hashes: pip install --require-hashes
        block = re.search(rf"^{re.escape(name)}==[^\n]*\n((?:    [^\n]*\n)*)", text, re.M | re.I)
        assert block, name
        assert "--hash=sha256:" in block.group(1), name
