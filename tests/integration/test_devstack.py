"""The local stack for real: a Kafka JVM and a PostgreSQL server in a throw-away state dir.

Needs java >= 17 and the PostgreSQL server binaries (scripts/install-prereqs.sh); the Kafka
jars come from ~/.cache/jobstream (fetched by Maven on first use).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from jobstream.streams.dev import postgres as pg
from jobstream.streams.dev import process
from jobstream.streams.dev import stack as devstack
from jobstream.streams.dev import state as stack_state

pytestmark = pytest.mark.integration


def _remove_relocated_pg(state: Path) -> None:
    """tmp_path is private to root, so the cluster itself lives in /tmp; remove it too."""
    shutil.rmtree(pg.relocated_base(state.resolve()), ignore_errors=True)


@pytest.fixture
async def state_dir(tmp_path: Path) -> AsyncIterator[Path]:
    state = tmp_path / "state"
    try:
        yield state
    finally:
        # whatever a failing test left running must not outlive the session
        await devstack.stack_down(state)
        _remove_relocated_pg(state)


def _listening(port: int) -> list[str]:
    """Local addresses with a TCP socket (IPv4 or IPv6) listening on ``port``."""
    found = []
    for conn in psutil.net_connections("tcp"):
        addr = conn.laddr
        if conn.status == psutil.CONN_LISTEN and addr and addr.port == port:
            found.append(addr.ip)
    return found


async def _assert_answers(info: stack_state.StackInfo) -> None:
    """A message round trip and a query, not just open ports; on loopback only."""
    topic = f"devstack-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=info.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=info.bootstrap, auto_offset_reset="earliest", group_id=topic
    )
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), 30)
        assert msg.value == b"hello"
    finally:
        await consumer.stop()

    conn = await asyncpg.connect(info.database_url)
    try:
        assert await conn.fetchval("SELECT current_database()") == "jobstream"
        assert await conn.fetchval("SHOW max_connections") == "300"
    finally:
        await conn.close()

    for port in (info.kafka_port, info.controller_port, info.pg_port):
        assert _listening(port) == ["127.0.0.1"], port  # and nothing on IPv6


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobstream.streams.dev.stack", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


async def test_cli_started_stack_outlives_the_command_and_restarts_cleanly(
    state_dir: Path,
) -> None:
    up = _cli("up", "--state-dir", str(state_dir))
    assert up.returncode == 0, up.stderr
    # the launching process has exited; the services must still be there
    info = await devstack.stack_status(state_dir)
    assert info is not None
    await _assert_answers(info)
    assert os.getsid(info.kafka_pid or 0) == info.kafka_pid

    env = _cli("env", "--state-dir", str(state_dir))
    assert env.returncode == 0
    assert f"export JOBSTREAM_KAFKA_BOOTSTRAP={info.bootstrap}" in env.stdout
    assert f"export JOBSTREAM_DATABASE_URL={info.database_url}" in env.stdout

    again = await devstack.stack_up(state_dir)
    assert again.already_running
    assert (again.kafka_pid, again.pg_pid) == (info.kafka_pid, info.pg_pid)
    assert (again.kafka_port, again.pg_port) == (info.kafka_port, info.pg_port)

    down = _cli("down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert await devstack.stack_status(state_dir) is None
    assert not process.pid_alive(info.kafka_pid)
    assert not process.pid_alive(info.pg_pid)
    assert _cli("status", "--state-dir", str(state_dir)).returncode == 1

    # a warm start keeps data and ports, so exported variables stay valid
    warm = await devstack.stack_up(state_dir)
    assert (warm.bootstrap, warm.database_url) == (info.bootstrap, info.database_url)
    await _assert_answers(warm)


async def test_crashed_services_are_detected_and_replaced(state_dir: Path) -> None:
    info = await devstack.stack_up(state_dir)
    assert not info.already_running
    assert info.kafka_pid
    assert info.pg_pid

    # Kafka killed -9: the next `up` replaces it on the same port and leaves PostgreSQL alone
    os.kill(info.kafka_pid, signal.SIGKILL)
    assert await process.wait_gone(info.kafka_pid, 10)
    assert await devstack.stack_status(state_dir) is None
    replaced = await devstack.stack_up(state_dir)
    assert not replaced.already_running
    assert replaced.kafka_pid != info.kafka_pid
    assert replaced.kafka_port == info.kafka_port
    assert replaced.pg_pid == info.pg_pid
    await _assert_answers(replaced)

    # the postmaster killed -9 leaves backends and a postmaster.pid behind
    os.kill(info.pg_pid, signal.SIGKILL)
    assert await process.wait_gone(info.pg_pid, 10)
    assert replaced.pg_data_dir
    assert (replaced.pg_data_dir / "postmaster.pid").exists()
    again = await devstack.stack_up(state_dir)
    assert again.pg_pid != info.pg_pid
    assert again.pg_port == info.pg_port
    assert again.kafka_pid == replaced.kafka_pid
    await _assert_answers(again)

    # alive but not answering (stopped): replaced too
    assert again.kafka_pid
    os.kill(again.kafka_pid, signal.SIGSTOP)
    try:
        assert await devstack.stack_status(state_dir) is None
        revived = await devstack.stack_up(state_dir)
    finally:
        if process.pid_alive(again.kafka_pid):
            os.kill(again.kafka_pid, signal.SIGCONT)
    assert revived.kafka_pid != again.kafka_pid
    assert not process.pid_alive(again.kafka_pid)
    await _assert_answers(revived)

    await devstack.stack_down(state_dir)
    assert not process.pid_alive(revived.kafka_pid)
    assert not process.pid_alive(revived.pg_pid)
    state = stack_state.read_state(state_dir)
    assert state["kafka"]["pid"] is None
    assert state["postgres"]["pid"] is None
    assert state["kafka"]["port"] == info.kafka_port  # kept for the next `up`


async def test_stale_postmaster_pid_naming_a_foreign_process(state_dir: Path) -> None:
    info = await devstack.stack_up(state_dir)
    await devstack.stack_down(state_dir)
    assert info.pg_data_dir
    # pid 1 is alive and not ours: postgres alone would refuse to start over this file
    (info.pg_data_dir / "postmaster.pid").write_text(f"1\n{info.pg_data_dir}\n0\n{info.pg_port}\n")
    started = await devstack.stack_up(state_dir)
    assert started.pg_port == info.pg_port
    await _assert_answers(started)


async def test_explicit_ports_are_used(state_dir: Path) -> None:
    kafka_port, pg_port = stack_state.pick_port(), stack_state.pick_port()
    while pg_port == kafka_port:
        pg_port = stack_state.pick_port()
    info = await devstack.stack_up(state_dir, kafka_port=kafka_port, pg_port=pg_port)
    assert (info.kafka_port, info.pg_port) == (kafka_port, pg_port)
    assert info.bootstrap == f"127.0.0.1:{kafka_port}"
    assert info.database_url == f"postgresql://postgres@127.0.0.1:{pg_port}/jobstream"


@pytest.mark.slow
async def test_start_up_times(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prints cold (no jar cache), cold (cached jars) and warm start times; run with -s."""
    monkeypatch.setenv("JOBSTREAM_KAFKA_JARS_DIR", str(tmp_path / "jars"))
    t0 = time.monotonic()
    await devstack.stack_up(state_dir)
    cold_fetch = time.monotonic() - t0
    await devstack.stack_down(state_dir)
    shutil.rmtree(state_dir)
    _remove_relocated_pg(state_dir)

    t0 = time.monotonic()
    await devstack.stack_up(state_dir)
    cold = time.monotonic() - t0
    await devstack.stack_down(state_dir)

    t0 = time.monotonic()
    info = await devstack.stack_up(state_dir)
    warm = time.monotonic() - t0

    t0 = time.monotonic()
    assert (await devstack.stack_up(state_dir)).already_running
    noop = time.monotonic() - t0
    await _assert_answers(info)
    print(
        f"\nstart-up: cold+fetch {cold_fetch:.1f}s, cold (jars cached) {cold:.1f}s, "
        f"warm {warm:.1f}s, already running {noop:.2f}s"
    )
