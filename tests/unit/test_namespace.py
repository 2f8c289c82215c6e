"""Everything jobstream installs lives under ``jobstream``: no module of it imports a top-level
``agents``, ``models`` or ``streams`` (names other packages use: the OpenAI Agents SDK is
imported as ``agents``, many services have a ``models.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECK = """
import importlib, pkgutil, sys
import jobstream

names = [m.name for m in pkgutil.walk_packages(jobstream.__path__, "jobstream.")]
for name in names:
    if name.endswith("__main__"):
        continue
    importlib.import_module(name)
clashing = sorted(
    n for n in sys.modules if n.split(".")[0] in ("agents", "models", "streams")
)
assert not clashing, clashing
print(len(names))
"""


def test_every_module_imports_under_the_one_namespace(tmp_path: Path) -> None:
    # run from a directory of its own, so the repository's folders are not importable as
    # top-level names: only the installed ``jobstream`` is
    done = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.strip()) > 100  # the sub-packages behind the symlinks were walked
