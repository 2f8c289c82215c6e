"""The ``jobstream`` command line: every command's help, ``submit``'s validation (the API's
own), one-line errors, and the fake OpenRouter command the compose stack runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from jobstream.agents.catalog import default_registry
from jobstream.streams.cli import cli, main
from jobstream.streams.command import SettingsCommand, variable, walk
from jobstream.streams.exits import Exit
from jobstream.streams.producer.server import ApiServer
from jobstream.streams.settings import Settings

ROOT = Path(__file__).resolve().parents[3]

COMMANDS = {
    "worker", "migrate", "submit", "status", "cancel", "api", "console", "doctor", "backup",
    "restore",
    "prune", "dlq list", "dlq stats", "dlq show", "dlq replay", "dev up", "dev down",
    "dev status", "dev env", "dev fetch", "dev kafka-tool", "demo", "fake-openrouter",
    "scheduled list", "scheduled retime", "scheduled run-now", "schedules list", "schedules add",
    "schedules pause", "schedules resume", "schedules remove", "schedules run-now",
}  # fmt: skip


def all_commands() -> dict[str, click.Command]:
    return dict(walk(cli))


@pytest.fixture
def no_services(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("KAFKA_BOOTSTRAP", "DATABASE_URL", "POLICY_FILE"):
        monkeypatch.delenv(f"JOBSTREAM_{name}", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def listener() -> Iterator[tuple[str, list[object]]]:
    """A TCP port that records every connection: a command that publishes would connect."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    accepted: list[object] = []
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}", accepted
    finally:
        with contextlib.suppress(BlockingIOError):
            while True:
                accepted.append(server.accept())
        server.close()


def help_of(name: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main([*name.split(), "--help"]) == Exit.OK
    return capsys.readouterr().out


def test_every_command_is_there() -> None:
    assert set(all_commands()) == COMMANDS


def test_every_listed_variable_is_a_settings_field() -> None:
    for name, cmd in all_commands().items():
        if isinstance(cmd, SettingsCommand):
            assert set(cmd.variables) <= set(Settings.model_fields), name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_every_option_and_variable(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cmd = all_commands()[name]
    text = help_of(name, capsys)
    for param in cmd.params:
        if isinstance(param, click.Option):
            assert any(opt in text for opt in param.opts), (name, param.opts)
    if name != "fake-openrouter":  # a test server: it reads no settings
        assert isinstance(cmd, SettingsCommand), name
        assert cmd.variables, name
        assert "Environment variables:" in text
        for field in cmd.variables:
            assert variable(field) in text, (name, field)


def test_help_shows_a_variable_with_its_description_and_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = " ".join(help_of("worker", capsys).split())
    assert "JOBSTREAM_BUFFER_MAXSIZE events prefetched per partition (default: 1000)" in text
    assert "JOBSTREAM_DATABASE_URL" in text
    assert "JOBSTREAM_CONCURRENCY" in text


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nope"]) == Exit.USAGE
    assert main(["submit"]) == Exit.USAGE
    assert main(["submit", "echo", "--count", "0"]) == Exit.USAGE
    assert "Missing argument 'TYPE'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["submit", "no.such.type"], "unknown job type 'no.such.type'; known types: echo,"),
        (["submit", "sleep", "--payload", '{"seconds": "long"}'], "payload.seconds:"),
        (["submit", "echo", "--id", ""], "id:"),
        (["submit", "echo", "--payload", "[1]"], "--payload must be a JSON object"),
        (["submit", "echo", "--payload", "{"], "--payload is not JSON"),
        (["submit", "echo", "--delay", "soon"], "--delay: 'soon' is not a duration"),
        (["submit", "echo", "--at", "2027-01-01T03:00:00"], "run_at: "),
        (["submit", "echo", "--delay", "10m", "--ttl", "1m"], "ttl_s: the job would expire"),
        (["submit", "echo", "--expires-at", "2020-01-01T00:00:00Z"], "expires_at: "),
    ],
)
def test_submit_refuses_a_bad_job_in_one_line_and_publishes_nothing(
    no_services: Path,
    monkeypatch: pytest.MonkeyPatch,
    listener: tuple[str, list[object]],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: str,
) -> None:
    address, accepted = listener
    monkeypatch.setenv("JOBSTREAM_KAFKA_BOOTSTRAP", address)
    assert main(argv) == Exit.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert expected in err[0]
    assert accepted == []  # never connected to the broker


@pytest.mark.parametrize(
    "item",
    [
        {"type": "nope"},
        {"type": "sleep", "payload": {"seconds": "x", "extra": 1}},
        {"type": "http.webhook", "payload": {}},
    ],
)
async def test_submit_refuses_what_post_jobs_refuses_with_the_same_errors(
    no_services: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    item: dict[str, Any],
) -> None:
    settings = Settings()
    server = ApiServer(
        settings,
        bootstrap="127.0.0.1:1",
        dsn="postgresql://nobody@127.0.0.1:1/x",
        registry=default_registry(settings),
    )
    async with TestClient(TestServer(server.app())) as client:
        resp = await client.post("/jobs", json=item)
        assert resp.status == 400
        errors = (await resp.json())["errors"]
    expected = "; ".join(".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in errors)
    monkeypatch.setenv("JOBSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    argv = ["submit", item["type"]]
    if "payload" in item:
        argv += ["--payload", json.dumps(item["payload"])]
    code = await asyncio.to_thread(main, argv)
    assert code == Exit.USAGE
    assert capsys.readouterr().err.strip() == f"invalid job: {expected}"


@pytest.mark.parametrize("argv", [["submit", "echo"], ["worker"]])
def test_a_missing_policy_file_is_one_line_and_exit_2(
    no_services: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    monkeypatch.setenv("JOBSTREAM_POLICY_FILE", str(no_services / "nowhere.json"))
    monkeypatch.setenv("JOBSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("JOBSTREAM_DATABASE_URL", "postgresql://x@127.0.0.1:1/x")
    assert main(argv) == Exit.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "cannot read policy file" in err[0]
    assert "nowhere.json" in err[0]


def test_unreachable_kafka_names_the_service_the_address_and_the_variable(
    no_services: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("JOBSTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
    assert main(["submit", "echo"]) == Exit.UNREACHABLE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"Kafka at 127.0.0.1:{port} is unreachable" in err[0]
    assert "JOBSTREAM_KAFKA_BOOTSTRAP" in err[0]


def test_unreachable_postgresql_names_the_service_the_address_and_the_variable(
    no_services: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("JOBSTREAM_DATABASE_URL", f"postgresql://u:hunter2@127.0.0.1:{port}/db")
    assert main(["status", "x"]) == Exit.UNREACHABLE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"PostgreSQL at 127.0.0.1:{port}/db is unreachable" in err[0]
    assert "JOBSTREAM_DATABASE_URL" in err[0]
    assert "hunter2" not in err[0]


def test_settings_that_cannot_be_parsed_are_one_line_without_the_value(
    no_services: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOBSTREAM_PARTITIONS", "s3cret")
    assert main(["status", "x"]) == Exit.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "JOBSTREAM_PARTITIONS" in err[0]
    assert "s3cret" not in err[0]


def test_the_compose_fake_openrouter_command_parses() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    argv = compose["services"]["fake-openrouter"]["command"]
    assert argv[0] == "fake-openrouter"
    cmd = all_commands()["fake-openrouter"]
    ctx = cmd.make_context("fake-openrouter", list(argv[1:]))
    assert (ctx.params["host"], ctx.params["port"]) == ("0.0.0.0", 8089)


async def test_fake_openrouter_runs_with_the_readme_options_until_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jobstream", "fake-openrouter",
        "--latency-ms", "500", "--rate-limit", "50", "--port", "0",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert re.search(r"listening on http://127\.0\.0\.1:\d+/api/v1", line), line
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_production_commands_do_not_load_the_dev_tooling() -> None:
    code = (
        "import sys; from jobstream.streams.cli import main; "
        "main(['submit', '--help']); "
        "assert not [m for m in sys.modules if m.startswith('jobstream.streams.dev')], 'dev loaded'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
