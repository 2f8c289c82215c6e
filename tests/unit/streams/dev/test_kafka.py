"""The local Kafka: its config, command line, jars and container wiring."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from jobstream.models.errors import StackError
from jobstream.streams.dev import kafka
from jobstream.streams.settings import Settings


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")


def test_server_properties_bind_loopback_only_and_fit_one_broker(tmp_path: Path) -> None:
    props = _props(kafka.render_server_properties(21001, 21002, tmp_path / "data"))

    assert props["listeners"] == "PLAINTEXT://127.0.0.1:21001,CONTROLLER://127.0.0.1:21002"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:21001"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:21002"
    assert props["process.roles"] == "broker,controller"
    assert props["log.dirs"] == str(tmp_path / "data")
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
    ):
        assert props[key] == "1", key
    assert props["num.partitions"] == str(Settings().partitions)
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "true"
    assert "0.0.0.0" not in kafka.render_server_properties(21001, 21002, tmp_path)


def test_log4j_config_writes_a_capped_file_under_the_logs_dir() -> None:
    text = kafka.render_log4j2()
    assert "${sys:kafka.logs.dir}/server.log" in text
    assert "SizeBasedTriggeringPolicy" in text


def test_pom_pins_kafka_and_a_log4j_binding() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.fromstring(kafka.render_pom())
    deps = {
        (d.findtext("m:artifactId", namespaces=ns), d.findtext("m:version", namespaces=ns))
        for d in root.iterfind("m:dependencies/m:dependency", ns)
    }
    assert ("kafka_2.13", "4.1.1") in deps
    assert ("log4j-slf4j-impl", kafka.LOG4J_VERSION) in deps
    assert ("log4j-core", kafka.LOG4J_VERSION) in deps


def test_cluster_ids_look_like_storage_tool_ones() -> None:
    for _ in range(2000):
        cid = kafka.new_cluster_id()
        assert len(cid) == 22
        assert not cid.startswith("-")
        raw = base64.urlsafe_b64decode(cid + "==")
        assert len(raw) == 16
        assert raw not in (bytes(16), bytes(15) + b"\x01")


def test_server_command_names_the_props_file_and_takes_jvm_opts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOBSTREAM_KAFKA_JVM_OPTS", raising=False)
    props = tmp_path / "server.properties"
    cmd = kafka.server_command(
        "java", tmp_path / "libs", tmp_path / "l.properties", tmp_path, props
    )
    assert cmd[0] == "java"
    assert cmd[-2:] == ["kafka.Kafka", str(props)]
    assert "-Xmx512m" in cmd
    assert "-XX:TieredStopAtLevel=1" not in cmd
    assert cmd[cmd.index("-cp") + 1] == str(tmp_path / "libs" / "*")

    monkeypatch.setenv("JOBSTREAM_KAFKA_JVM_OPTS", " ".join(kafka.FAST_START_JVM_OPTS))
    cmd = kafka.server_command("java", tmp_path, tmp_path, tmp_path, props)
    assert "-XX:TieredStopAtLevel=1" in cmd
    assert "-Xmx512m" in cmd


def test_jars_dir_lives_outside_the_repo_unless_overridden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOBSTREAM_KAFKA_JARS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert kafka.jars_dir() == tmp_path / "cache" / "jobstream" / "kafka-4.1.1" / "libs"
    monkeypatch.setenv("JOBSTREAM_KAFKA_JARS_DIR", str(tmp_path / "mine"))
    assert kafka.jars_dir() == tmp_path / "mine"


async def test_fetch_refuses_a_foreign_non_empty_jars_dir(tmp_path: Path) -> None:
    target = tmp_path / "libs"
    target.mkdir()
    (target / "something-else.jar").write_text("")
    with pytest.raises(StackError, match="JOBSTREAM_KAFKA_JARS_DIR"):
        await kafka.fetch_jars(target)


async def test_fetch_is_a_no_op_when_the_jars_are_there(tmp_path: Path) -> None:
    (tmp_path / kafka.KAFKA_MAIN_JAR).write_text("")
    assert await kafka.fetch_jars(tmp_path) == tmp_path


def test_apache_kafka_container_wiring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked without a daemon: the entrypoint and start script suit the apache/kafka image."""
    import testcontainers.core.container as tc

    class NoDocker:
        def __init__(self, **kw: Any) -> None:
            pass

    started: dict[str, Any] = {}
    monkeypatch.setattr(tc, "DockerClient", NoDocker)

    def fake_start(self: Any) -> Any:
        started.update(kwargs=self._kwargs, command=self._command, env=dict(self.env))
        return self

    monkeypatch.setattr(tc.DockerContainer, "start", fake_start)
    monkeypatch.setattr(tc.DockerContainer, "get_container_host_ip", lambda self: "localhost")
    monkeypatch.setattr(tc.DockerContainer, "get_exposed_port", lambda self, port: 32768)
    import testcontainers.core.wait_strategies as ws

    monkeypatch.setattr(ws.LogMessageWaitStrategy, "wait_until_ready", lambda self, c: None)

    container = kafka.container()
    assert container.image == "apache/kafka:4.1.1"
    files: dict[str, bytes] = {}
    monkeypatch.setattr(
        type(container), "create_file", lambda self, data, path: files.update({path: data})
    )
    container.start()

    assert started["kwargs"] == {"entrypoint": ["/bin/sh", "-c"]}
    assert "tc-start.sh" in started["command"][0]
    env = started["env"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    script = files[container.TC_START_SCRIPT].decode()
    assert "PLAINTEXT://localhost:32768" in script
    assert "exec /etc/kafka/docker/run" in script
    assert "confluent" not in script
