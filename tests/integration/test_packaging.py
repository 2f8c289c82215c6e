"""A production install is lean, and the ``[dev]`` extra brings the development tooling back.

Builds both wheels (jobstream, and jobstream-dev from streams/dev/) from a copy of the checkout,
then installs them as the image does: the lock first (hashes checked), then the package with
nothing resolved again (``--no-index``: a dependency the lock lacks fails the install). Needs
the package index or pip's cache for the locked wheels and for setuptools (the build backend),
no Kafka and no PostgreSQL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements"
VERSION = "0.1.0"
MAIN_WHEEL = f"jobstream-{VERSION}-py3-none-any.whl"
DEV_WHEEL = f"jobstream_dev-{VERSION}-py3-none-any.whl"
DEV_ONLY = {"jobstream-dev", "psutil", "filelock", "testcontainers", "cryptography", "docker"}
# what the checkout holds besides the sources: never part of a build
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv*", ".state", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis",
    ".import_linter_cache", "__pycache__", "build", "dist", "*.egg-info", "bench-results",
    "test-artifacts", "node_modules",
)  # fmt: skip

IMPORT_ALL = """
import importlib, json, pkgutil
import jobstream
names = [m.name for m in pkgutil.walk_packages(jobstream.__path__, "jobstream.")]
for name in names:
    if not name.endswith("__main__"):
        importlib.import_module(name)
print(json.dumps(names))
"""


def run(*args: str | Path, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBSTREAM_", "PYTHON"))}
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )
    if ok:
        assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@dataclass(frozen=True)
class Install:
    bin: Path
    cwd: Path  # outside the checkout: only what is installed is importable

    def python(self, code: str) -> str:
        return run(self.bin / "python", "-c", code, cwd=self.cwd).stdout

    def jobstream(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return run(self.bin / "jobstream", *args, cwd=self.cwd, ok=ok)

    def import_all(self) -> set[str]:
        """Imports every module of the installed jobstream; their names."""
        return set(json.loads(self.python(IMPORT_ALL)))

    def distributions(self) -> set[str]:
        listed = run(self.bin / "python", "-m", "pip", "list", "--format", "json", cwd=self.cwd)
        return {canonicalize_name(d["name"]) for d in json.loads(listed.stdout)}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both wheels, built as `make dist` and the image build them, from a clean copy (an
    in-place build would reuse whatever an earlier build left in build/)."""
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=NOT_SOURCES)
    out = tmp / "wheels"
    run(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", out,
        ".", "./streams/dev", cwd=src,
    )  # fmt: skip
    return out


def _install(tmp: Path, lock: str, wheels: Path, requirement: str) -> Install:
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    pip: list[str | Path] = [env_dir / "bin" / "python", "-m", "pip", "--disable-pip-version-check"]
    install = [*pip, "install", "--quiet", "--no-compile"]
    run(*install, "--require-hashes", "-r", REQUIREMENTS / lock, cwd=tmp)
    run(*install, "--no-index", "--find-links", wheels, requirement, cwd=tmp)
    run(*pip, "check", cwd=tmp)
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    return Install(env_dir / "bin", cwd)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Install:
    return _install(tmp_path_factory.mktemp("plain"), "runtime.lock", wheels, "jobstream")


@pytest.fixture(scope="module")
def with_dev(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Install:
    return _install(tmp_path_factory.mktemp("dev"), "dev-stack.lock", wheels, "jobstream[dev]")


def _members(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def _modules(wheel: Path) -> set[str]:
    """The dotted names of the wheel's modules and packages, as pkgutil walks them."""
    names = set()
    for member in _members(wheel):
        if member.endswith(".py"):
            name = member.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            names.add(name)
    return names - {"jobstream"}


def test_the_wheels_split_the_tooling_from_the_runtime(wheels: Path) -> None:
    main, dev = _members(wheels / MAIN_WHEEL), _members(wheels / DEV_WHEEL)
    info, dev_info = f"jobstream-{VERSION}.dist-info/", f"jobstream_dev-{VERSION}.dist-info/"
    assert {m.split("/")[0] + "/" for m in main} == {"jobstream/", info}
    assert not [m for m in main if m.startswith("jobstream/streams/dev/")]
    assert {"jobstream/py.typed", "jobstream/streams/worker/service.py"} <= set(main)
    # jobstream-dev adds files under jobstream/streams/dev/ only: it owns no file of jobstream's
    assert {m for m in dev if not m.startswith(dev_info)} == {
        m for m in dev if m.startswith("jobstream/streams/dev/")
    }
    assert {"jobstream/streams/dev/demo.py", "jobstream/streams/dev/bench/run.py"} <= set(dev)


def test_a_plain_install_has_no_dev_tooling_and_no_dev_only_dependency(
    plain: Install, wheels: Path
) -> None:
    installed = plain.distributions()
    assert "jobstream" in installed
    assert not installed & DEV_ONLY
    # nothing beyond the runtime lock (a marker may leave a pin out, e.g. colorama on Windows)
    locked = set(_pins(REQUIREMENTS / "runtime.lock"))
    assert installed - locked <= {"jobstream", "pip", "setuptools"}
    spec = "import importlib.util; print(importlib.util.find_spec('jobstream.streams.dev'))"
    assert plain.python(spec).strip() == "None"
    # every module of the wheel imports with the runtime dependencies alone
    assert plain.import_all() == _modules(wheels / MAIN_WHEEL)


def test_a_plain_install_says_how_to_get_the_dev_commands(plain: Install) -> None:
    for args in (["demo"], ["demo", "--jobs", "5", "--help"], ["dev", "up"], ["fake-openrouter"]):
        proc = plain.jobstream(*args, ok=False)
        assert proc.returncode == 2, args
        (line,) = proc.stderr.splitlines()
        assert "jobstream[dev]" in line, line
        assert f"`jobstream {args[0]}`" in line, line
        assert proc.stdout == ""
    listing = plain.jobstream("--help").stdout
    assert "worker" in listing
    assert "demo" not in listing
    assert "--app" in plain.jobstream("worker", "--help").stdout


def test_the_dev_extra_brings_the_dev_commands(with_dev: Install, wheels: Path) -> None:
    installed = with_dev.distributions()
    assert {"jobstream", "jobstream-dev", "psutil", "filelock"} <= installed
    listing = with_dev.jobstream("--help").stdout
    assert "demo" in listing
    assert "fake-openrouter" in listing
    assert "--jobs" in with_dev.jobstream("demo", "--help").stdout
    assert "kafka-tool" in with_dev.jobstream("dev", "--help").stdout
    assert "--latency-ms" in with_dev.jobstream("fake-openrouter", "--help").stdout
    # the tooling and the benchmark import too (the extra's dependencies suffice)
    modules = _modules(wheels / MAIN_WHEEL) | _modules(wheels / DEV_WHEEL)
    assert with_dev.import_all() == modules
    assert "jobstream.streams.dev.bench.run" in modules


def _pins(lock: Path) -> list[str]:
    return [
        canonicalize_name(line.split("==", 1)[0])
        for line in lock.read_text().splitlines()
        if line[:1].isalnum() and "==" in line
    ]
