"""The benchmark's runner: what it passes to workers, what it reads back, its command line."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from jobstream.models.job import JobOutcome, JobStatus
from jobstream.streams.dev.bench import machine, sampling
from jobstream.streams.dev.bench import run as bench
from jobstream.streams.dev.bench.outputs import parse_outcome
from jobstream.streams.dev.bench.run import passthrough_env


def test_passthrough_env_masks_secrets_and_skips_what_the_bench_sets() -> None:
    env = {
        "JOBSTREAM_BATCH_MAX_DELAY_MS": "2",
        "JOBSTREAM_DATABASE_URL": "postgresql://u:pw@h/db",
        "JOBSTREAM_OPENROUTER_API_KEY": "sk-live",
        "JOBSTREAM_CONCURRENCY": "7",
        "HOME": "/root",
    }
    assert passthrough_env(env, ["JOBSTREAM_CONCURRENCY"]) == {
        "JOBSTREAM_BATCH_MAX_DELAY_MS": "2",
        "JOBSTREAM_DATABASE_URL": "***",
        "JOBSTREAM_OPENROUTER_API_KEY": "***",
    }


def test_parse_outcome_reads_the_wire_model() -> None:
    outcome = JobOutcome(
        job_id="j1", type="echo", status=JobStatus.SUCCEEDED, attempt=1, duration_ms=0.25
    )
    record = SimpleNamespace(value=outcome.to_bytes(), timestamp=1_700_000_000_123)
    parsed = parse_outcome(record)
    assert parsed is not None
    job_id, done = parsed
    assert job_id == "j1"
    assert done.at == pytest.approx(1_700_000_000.123)
    assert done.status == "succeeded"
    assert done.finished_at == pytest.approx(outcome.finished_at.timestamp())
    assert done.handler_ms == 0.25
    assert done.reemitted is False


def test_cli_refuses_bad_options_before_touching_any_service(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (["--scenarios", "nope"], ["--jobs", "0"], ["--warmup", "-1"]):
        with pytest.raises(SystemExit) as exc:
            bench.main(argv)
        assert exc.value.code == 2
    assert "unknown scenario" in capsys.readouterr().err


def test_cli_lists_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--list", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "llm-500" in out
    assert "concurrency=500" in out
    assert "jobs=1500" in out


def test_worker_settings_keep_the_knobs_and_drop_plumbing_and_secrets() -> None:
    env = {
        "JOBSTREAM_CONCURRENCY": "25",
        "JOBSTREAM_RATE_LIMIT_LEASE": "500",
        "JOBSTREAM_WEB_PORT": "40001",
        "JOBSTREAM_DATABASE_URL": "postgresql://u:pw@h/db",
        "JOBSTREAM_OPENROUTER_API_KEY": "sk-bench",
        "PATH": "/usr/bin",
    }
    assert bench.worker_settings(env) == {
        "concurrency": "25",
        "openrouter_api_key": "***",
        "rate_limit_lease": "500",
    }


def test_cpu_model_is_the_first_model_name() -> None:
    cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU\n"
    assert machine.cpu_model(cpuinfo + "processor\t: 1\nmodel name\t: other\n") == (
        "Intel(R) Xeon(R) CPU"
    )
    assert machine.cpu_model("processor\t: 0\nModel\t\t: Raspberry Pi 4\n") == "Raspberry Pi 4"
    assert machine.cpu_model("processor\t: 0\n") is None


def test_machine_facts_sit_beside_the_figures() -> None:
    info = machine.machine_info()
    assert info["cores"] >= 1
    assert info["memory_total_mb"] > 0
    assert "faust-streaming" in info["packages"]
    assert "aiokafka" in info["packages"]
    assert set(info) >= {"cpu_model", "load_avg_at_start", "load_avg_at_end", "python"}


def test_py_spy_error_names_the_reason_not_the_backtrace() -> None:
    out = (
        "Error: Failed to get process executable name. Check that the process is running.\n\n"
        "Caused by:\n    0: No such file or directory (os error 2)\n\nStack backtrace:\n"
        "   0: <E as anyhow::context::ext::StdError>::ext_context\n"
    )
    assert sampling.py_spy_error(out) == (
        "Error: Failed to get process executable name. Check that the process is running."
    )
    denied = "Error: Permission denied (os error 1)\n"
    assert sampling.py_spy_error(denied).startswith("Error: Permission denied (os error 1) (")
    assert "CAP_SYS_PTRACE" in sampling.py_spy_error(denied)
    assert sampling.py_spy_error("") == "no output"


async def test_rss_sampler_keeps_every_reading_and_survives_a_gone_process() -> None:
    gone = psutil.Popen(["true"])
    gone.wait()
    sampler = sampling.RssSampler({"me": os.getpid(), "gone": gone.pid}, interval_s=0.01).start()
    await asyncio.sleep(0.05)
    samples = await sampler.stop()
    assert len(samples["me"]) >= 2
    assert all(v > 0 for v in samples["me"])
    assert samples["gone"] == []


async def test_a_profiler_that_cannot_attach_says_why_instead_of_raising(tmp_path: Path) -> None:
    gone = psutil.Popen(["true"])
    gone.wait()
    out, log = tmp_path / "p.collapsed.txt", tmp_path / "py-spy.log"
    profiler = sampling.Profiler(gone.pid, out, log, max_s=5).start()
    if profiler.proc is not None:
        await asyncio.to_thread(profiler.proc.wait, 30)  # it gives up on its own, as on EPERM
    profile = await profiler.stop()
    assert set(profile) == {"error"}
    if sampling.py_spy_path() is None:
        assert "not installed" in profile["error"]
    else:
        assert profile["error"].startswith("py-spy exited with 1: Error: ")
        assert "backtrace" not in profile["error"].lower()
