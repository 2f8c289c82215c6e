"""jobstream as a team installs it: the wheel and the example project (examples/acme_jobs) in a
fresh virtualenv beside openai-agents (import name ``agents``), the worker started with
``--app`` from a folder holding the team's own ``models.py`` and ``agents.py``, jobs submitted
with the typed client from that virtualenv, their ends read from PostgreSQL and Kafka.

Third-party packages are the versions of requirements/dev.lock (as constraints) plus
openai-agents; they are downloaded once into a wheelhouse under ~/.cache/jobstream keyed by
what decides them, so later runs install offline. The two wheels are built anew every run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import zipfile
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from filelock import FileLock

from jobstream.models.deadletter import DeadLetter
from jobstream.models.job import JobOutcome
from jobstream.streams.dev.fake_openrouter import FakeConfig, FakeOpenRouter
from jobstream.streams.dev.replicas import Replica, free_port
from jobstream.streams.topics import topic_names
from tests.integration.harness import TIERS_S, settled, topic_reader, wait_terminal

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "acme_jobs"
OPENAI_AGENTS = "openai-agents==0.24.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jobstream"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
API_KEY = "sk-or-acme-install-test"
PACKAGES = ["agents", "models", "streams"]
"""The top-level folders that jobstream/ links to."""


# -- the virtualenv ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TeamVenv:
    path: Path
    wheels: dict[str, Path]
    """Distribution name -> the wheel built from this checkout."""

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def run(self, *argv: str, cwd: Path) -> str:
        """A command of the venv, in a clean environment; its output, or the test fails."""
        done = subprocess.run(
            argv, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stderr}"
        return done.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would make a venv see the checkout."""
    drop = ("JOBSTREAM_", "ACME_", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return env | extra


def pip(*args: str) -> None:
    done = subprocess.run([*PIP, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"pip {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


def locked_constraints() -> str:
    """requirements/dev.lock as pip constraints: every pin with its marker, no hashes (a hash
    would make pip demand one for openai-agents and its own dependencies too)."""
    pins = re.findall(
        r"^([A-Za-z0-9][\w.-]*==[^\s\\;]+(?: ; [^\\\n]+?)?)\s*\\?$",
        (ROOT / "requirements" / "dev.lock").read_text(),
        flags=re.MULTILINE,
    )
    assert len(pins) > 50, "requirements/dev.lock: no pins found"
    return "\n".join(pins) + "\n"


def wheelhouse_key(constraints: str) -> str:
    """What decides the third-party wheels: the pins, both projects' dependencies, the
    openai-agents version, the interpreter and the machine."""
    deps = [
        tomllib.loads((p / "pyproject.toml").read_text())["project"]["dependencies"]
        for p in (ROOT, EXAMPLE)
    ]
    python = "{}.{}".format(*sys.version_info)
    facts = [constraints, json.dumps(deps), OPENAI_AGENTS, python, platform.machine()]
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]


def copy_source(src: Path, dest: Path, names: list[str]) -> Path:
    """A copy to build from: the build leaves build/ and *.egg-info behind, not in the checkout."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info", "tests")
    for name in names:
        if (src / name).is_dir():
            shutil.copytree(src / name, dest / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(src / name, dest / name)
    return dest


def build_wheels(tmp: Path, index: list[str]) -> dict[str, Path]:
    jobstream_src = copy_source(
        ROOT, tmp / "src" / "jobstream", ["pyproject.toml", "README.md", "jobstream", *PACKAGES]
    )
    example_src = copy_source(
        EXAMPLE, tmp / "src" / "acme_jobs", ["pyproject.toml", "README.md", "acme_jobs"]
    )
    dist = tmp / "dist"
    pip("wheel", "--quiet", "--no-deps", *index, "-w", str(dist), str(jobstream_src),
        str(example_src))  # fmt: skip
    return {w.name.split("-")[0]: w for w in dist.glob("*.whl")}


def wheelhouse(tmp: Path, constraints: Path) -> tuple[Path, dict[str, Path]]:
    """The cached third-party wheels (downloaded through pip's cache on first use) and this
    checkout's two wheels, built against them."""
    house = CACHE / f"install-test-wheels-{wheelhouse_key(constraints.read_text())}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(CACHE / "install-test.lock"), timeout=600):
        if (house / "COMPLETE").exists():
            return house, build_wheels(tmp, ["--no-index", "--find-links", str(house)])
        for stale in CACHE.glob("install-test-wheels-*"):  # other keys', or a broken fill
            shutil.rmtree(stale)
        built = build_wheels(tmp, [])
        filling = Path(f"{house}.partial")
        requirements = [str(w) for w in built.values()]
        pip("wheel", "--quiet", "-w", str(filling), "-c", str(constraints), *requirements,
            OPENAI_AGENTS, "setuptools>=77")  # fmt: skip
        for ours in built.values():
            (filling / ours.name).unlink()
        (filling / "COMPLETE").touch()
        filling.rename(house)
    return house, built


@pytest.fixture(scope="module")
def team_venv(tmp_path_factory: pytest.TempPathFactory) -> TeamVenv:
    """A fresh virtualenv with jobstream's wheel, the example's wheel and openai-agents. It has
    no pip of its own (ensurepip costs seconds): this checkout's pip installs into it."""
    tmp = tmp_path_factory.mktemp("install")
    constraints = tmp / "constraints.txt"
    constraints.write_text(locked_constraints())
    house, wheels = wheelhouse(tmp, constraints)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip("--python", str(venv / "bin" / "python"), "install", "--quiet", "--no-compile",
        "--no-index", "--find-links", str(house), "-c", str(constraints),
        *map(str, wheels.values()), OPENAI_AGENTS)  # fmt: skip
    return TeamVenv(venv, wheels)


def top_level_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return {n.split("/")[0] for n in zf.namelist() if ".dist-info/" not in n}


def test_the_wheel_installs_one_name_and_openai_agents_keeps_its_own(
    team_venv: TeamVenv, tmp_path: Path
) -> None:
    assert top_level_names(team_venv.wheels["jobstream"]) == {"jobstream"}
    assert top_level_names(team_venv.wheels["acme_jobs"]) == {"acme_jobs"}
    pip("--python", str(team_venv.python), "check")  # every requirement met, openai-agents' too
    probe = (
        "import json, agents, jobstream, jobstream.agents.app, acme_jobs.jobs\n"
        "from agents import Agent\n"
        "print(json.dumps([agents.__file__, Agent.__module__, jobstream.agents.app.__file__]))"
    )
    agents_file, agent_module, app_file = json.loads(
        team_venv.run(str(team_venv.python), "-c", probe, cwd=tmp_path)
    )
    site = team_venv.path / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert agents_file == str(site / "site-packages" / "agents" / "__init__.py")
    assert agent_module.startswith("agents.")  # openai-agents' Agent, not a file of jobstream
    assert app_file == str(site / "site-packages" / "jobstream" / "agents" / "app.py")


# -- the team's folder, its receivers and its worker --------------------------------------------

BODY = "Since Monday the CSV export of the EU tenant fails with error 500 for every admin user"
"""A ticket's text: it reaches the fake OpenRouter and never a log line."""


class Receivers:
    """Webhook receivers on one local server, one per path; ``script`` queues statuses a path
    answers before 200."""

    def __init__(self, script: dict[str, list[int]]) -> None:
        self.script = defaultdict(deque, {p: deque(s) for p, s in script.items()})
        self.received: defaultdict[str, list[tuple[dict[str, str], Any]]] = defaultdict(list)
        self.app = web.Application()
        self.app.router.add_post("/{path:.*}", self._receive)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _receive(self, request: web.Request) -> web.Response:
        self.received[request.path].append((dict(request.headers), await request.json()))
        queued = self.script[request.path]
        return web.Response(status=queued.popleft() if queued else 200)

    async def __aenter__(self) -> Receivers:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


class TeamWorker(Replica):
    """``jobstream worker --app acme_jobs.jobs:app`` of the team's venv, in the team's folder."""

    def __init__(self, venv: TeamVenv, cwd: Path, env: dict[str, str], log_path: Path) -> None:
        port = free_port()
        env = env | {"JOBSTREAM_WEB_PORT": str(port), "JOBSTREAM_WORKER_NAME": "acme-1"}
        super().__init__("acme-1", env, log_path, port, cwd=cwd)
        self.argv = [str(venv.path / "bin" / "jobstream"), "worker", "--app", "acme_jobs.jobs:app"]

    async def tokens(self, key: str) -> float:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.web_port}/metrics") as resp,
        ):
            text = await resp.text()
        found = re.search(rf'^jobstream_upstream_tokens_total{{key="{key}"}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0


async def submit(venv: TeamVenv, team: Path, bootstrap: str, prefix: str, *argv: str) -> str:
    """``python submit.py ...`` of the team's web application; the job id it printed."""
    code, out, err = await run_submit(venv, team, bootstrap, prefix, *argv)
    assert code == 0, err
    return out.strip()


async def run_submit(
    venv: TeamVenv, team: Path, bootstrap: str, prefix: str, *argv: str
) -> tuple[int, str, str]:
    env = clean_env(JOBSTREAM_KAFKA_BOOTSTRAP=bootstrap, JOBSTREAM_TOPIC_PREFIX=prefix)
    proc = await asyncio.create_subprocess_exec(
        str(venv.python), "submit.py", *argv, cwd=team, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def rows(pool: asyncpg.Pool, ids: list[str]) -> dict[str, asyncpg.Record]:
    found = await pool.fetch(
        "SELECT job_id, status, attempt, executions, result, error_class FROM jobs"
        " WHERE job_id = ANY($1::text[])",
        ids,
    )
    return {r["job_id"]: r for r in found}


@pytest.fixture
async def receivers() -> AsyncIterator[Receivers]:
    async with Receivers({"/billing": [503], "/legacy": [410]}) as server:
        yield server


@pytest.fixture
async def openrouter() -> AsyncIterator[FakeOpenRouter]:
    async with FakeOpenRouter(FakeConfig(api_key=API_KEY)) as fake:
        yield fake


async def test_a_team_worker_runs_its_jobs_beside_its_own_models_and_agents_modules(
    team_venv: TeamVenv,
    kafka_bootstrap: str,
    database_url: str,
    pg_pool: asyncpg.Pool,
    prefix: str,
    tmp_path: Path,
    receivers: Receivers,
    openrouter: FakeOpenRouter,
) -> None:
    team = tmp_path / "webapp"  # a copy: running from it writes __pycache__
    shutil.copytree(EXAMPLE / "webapp", team, ignore=shutil.ignore_patterns("__pycache__"))
    assert {"models.py", "agents.py"} <= {p.name for p in team.iterdir()}
    paths = ["/crm", "/billing", "/legacy"]
    env = clean_env(
        JOBSTREAM_KAFKA_BOOTSTRAP=kafka_bootstrap,
        JOBSTREAM_DATABASE_URL=database_url,
        JOBSTREAM_TOPIC_PREFIX=prefix,
        JOBSTREAM_GROUP_ID=prefix,
        JOBSTREAM_STATE_DIR=str(tmp_path / "state"),
        JOBSTREAM_PARTITIONS="4",
        JOBSTREAM_RETRY_TIERS_S=json.dumps(TIERS_S),
        JOBSTREAM_COMMIT_INTERVAL_S="0.5",
        JOBSTREAM_RETENTION_ENABLED="false",
        JOBSTREAM_WEBHOOK_ALLOW_HOSTS=json.dumps([f"127.0.0.1:{receivers.port}"]),
        ACME_OPENROUTER_URL=str(openrouter.base_url),
        ACME_OPENROUTER_API_KEY=API_KEY,
        ACME_WEBHOOKS=json.dumps({"order.paid": [receivers.url(p) for p in paths]}),
        PYTHONUNBUFFERED="1",
    )
    worker = TeamWorker(team_venv, team, env, tmp_path / "worker.log")
    worker.start()
    try:
        await worker.wait_ready(120)
        invalid = json.dumps({"ticket_id": "T-2", "subject": "s", "body": ""})
        summary_id, fanout_id, (code, _, err) = await asyncio.gather(  # three web requests
            submit(team_venv, team, kafka_bootstrap, prefix, "ticket", "T-1", "Export fails", BODY),
            submit(team_venv, team, kafka_bootstrap, prefix, "paid", "42", "1999"),
            run_submit(team_venv, team, kafka_bootstrap, prefix, "ticket.summarize", invalid),
        )
        assert code == 2, err
        assert err.startswith("refused: ticket.summarize:")
        assert "body" in err  # checked against Ticket before anything was published

        # the summary and the fan-out, then the three deliveries the fan-out published
        await wait_terminal(pg_pool, [summary_id, fanout_id], timeout=60)
        got = await rows(pg_pool, [summary_id, fanout_id])
        summary, fanout = got[summary_id], got[fanout_id]
        assert (summary["status"], summary["attempt"]) == ("succeeded", 1)
        assert summary["result"]["summary"] == f"Ticket T-1: Export fails {BODY}"
        assert summary["result"]["tokens"] > 0
        assert (fanout["status"], fanout["attempt"]) == ("succeeded", 1)
        deliveries = fanout["result"]["deliveries"]
        assert len(set(deliveries)) == 3
        await wait_terminal(pg_pool, deliveries, timeout=60)
        got = await rows(pg_pool, deliveries)
        crm, billing, legacy = (got[d] for d in deliveries)
        assert (crm["status"], crm["attempt"]) == ("succeeded", 1)
        assert (billing["status"], billing["attempt"]) == ("succeeded", 2)  # 503, then 200
        assert (legacy["status"], legacy["attempt"]) == ("dead_lettered", 1)  # 410: fatal
        for path, delivery, calls in zip(paths, deliveries, (1, 2, 1), strict=True):
            seen = receivers.received[path]
            assert len(seen) == calls
            assert {h["Idempotency-Key"] for h, _ in seen} == {delivery}
            assert seen[0][1] == {
                "event": "order.paid",
                "id": fanout_id,
                "data": {"order": 42, "amount_cents": 1999, "on_call": "ada"},
            }
        assert await worker.tokens("openrouter") == summary["result"]["tokens"]

        # the account's key is revoked: OpenRouter answers 401, and no retry can help
        openrouter.configure(FakeConfig(api_key="sk-or-rotated"))
        rejected_id = await submit(
            team_venv, team, kafka_bootstrap, prefix, "ticket", "T-3", "Login loop", BODY
        )
        await wait_terminal(pg_pool, [rejected_id], timeout=60)
        rejected = (await rows(pg_pool, [rejected_id]))[rejected_id]
        assert (rejected["status"], rejected["attempt"]) == ("dead_lettered", 1)
        assert rejected["error_class"] == "UpstreamRejectedError"
        assert openrouter.stats.by_status[401] == 1

        names = topic_names(prefix, TIERS_S)
        async with (
            topic_reader(kafka_bootstrap, names.outcomes) as outcomes,
            topic_reader(kafka_bootstrap, names.dlq) as dlq,
        ):
            await settled(kafka_bootstrap, prefix, [outcomes, dlq])
        ended = [JobOutcome.model_validate_json(r.value) for r in outcomes.records]
        letters = [DeadLetter.model_validate_json(r.value) for r in dlq.records]
        assert sorted((o.job_id, o.status.value) for o in ended) == sorted(
            [
                (summary_id, "succeeded"),
                (fanout_id, "succeeded"),
                (deliveries[0], "succeeded"),
                (deliveries[1], "succeeded"),
                (deliveries[2], "dead_lettered"),
                (rejected_id, "dead_lettered"),
            ]
        )
        assert sorted((d.job_id, d.reason.value, d.error_class) for d in letters) == sorted(
            [
                (deliveries[2], "fatal_error", "FatalError"),
                (rejected_id, "fatal_error", "UpstreamRejectedError"),
            ]
        )
        # nothing else was published: the refused job would be here as a dead letter

        worker.send(signal.SIGTERM)
        assert worker.wait(60) == 0  # drained; the lifespan closed its client and session
    finally:
        worker.kill()
    log = worker.log_text()
    assert API_KEY not in log
    assert BODY not in log


def test_the_example_type_checks_strict_with_its_own_config() -> None:
    """mypy as the team runs it (examples/acme_jobs/pyproject.toml: strict, its tests too),
    against this checkout's jobstream: an installed wheel has no py.typed marker yet."""
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(CACHE / "mypy-acme_jobs")],
        cwd=EXAMPLE,
        env=clean_env(MYPYPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("Success: no issues found")
