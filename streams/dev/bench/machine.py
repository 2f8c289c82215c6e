"""What the benchmark says about the machine and the services beside its figures: a ratio or a
CPU per job means little without the cores, the load and the versions it was measured on."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any

import psutil


def load_avg() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds over all cores since boot: two readings give the busy
    fraction."""
    times = psutil.cpu_times()
    total = float(sum(times))
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def cpu_model(cpuinfo: str) -> str | None:
    """The first ``model name`` of /proc/cpuinfo (x86 and most ARM kernels print one)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return None


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or None
    return cpu_model(text) or platform.processor() or None


def machine_info() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for dist in ("faust-streaming", "aiokafka", "asyncpg", "aiohttp", "pydantic"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_total_mb": round(psutil.virtual_memory().total / 1e6),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "load_avg_at_start": load_avg(),
        "load_avg_at_end": None,
        "packages": versions,
    }


async def service_info(bootstrap: str, dsn: str, state_dir: Path) -> dict[str, Any]:
    """Versions of the services, where they can be known: Kafka does not report its version
    over the wire (and aiokafka >= 0.13 no longer guesses it), so it comes from the local
    devstack's record when that is the broker used."""
    info: dict[str, Any] = {"kafka_bootstrap": bootstrap}
    try:
        stack = json.loads((state_dir / "stack.json").read_text())
    except (OSError, ValueError):
        stack = {}
    kafka = stack.get("kafka") or {}
    if kafka.get("bootstrap") == bootstrap and kafka.get("version"):
        info["kafka_version"] = kafka["version"]
        info["kafka_version_source"] = "devstack stack.json"
    else:
        info["kafka_version"] = None
        info["kafka_version_source"] = "unknown: not the devstack broker"
    try:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            info["postgres_version"] = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
    except Exception as exc:  # noqa: BLE001 - diagnostics only: the version is reported as unknown
        info["postgres_version"] = f"unknown ({type(exc).__name__})"
    return info
