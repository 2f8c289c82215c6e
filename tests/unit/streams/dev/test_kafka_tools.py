"""Command lines for Kafka's own tools and the pom that fetches them, without a JVM."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from jobstream.models.errors import StackError
from jobstream.streams.dev.kafka import KAFKA_VERSION, render_pom
from jobstream.streams.dev.kafka_tools import TOOLS, TOOLS_DEPS, tool_command, tools_dir

JARS, LOG4J = Path("/cache/tools"), Path("/cache/tools-log4j2.properties")


def test_the_tools_pom_asks_for_the_tools_and_the_server_jar_at_the_brokers_version() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.fromstring(render_pom(TOOLS_DEPS, artifact="tools"))
    deps = {
        (d.findtext("m:artifactId", namespaces=ns), d.findtext("m:version", namespaces=ns))
        for d in root.iterfind(".//m:dependency", ns)
    }
    assert ("kafka-tools", KAFKA_VERSION) in deps
    assert ("kafka_2.13", KAFKA_VERSION) in deps
    assert root.findtext("m:artifactId", namespaces=ns) == "tools"


def test_tools_are_cached_next_to_the_brokers_jars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBSTREAM_KAFKA_JARS_DIR", "/somewhere/libs")
    assert tools_dir() == Path("/somewhere/tools")


def test_the_bootstrap_is_added_unless_given() -> None:
    cmd = tool_command("java", JARS, LOG4J, "kafka-topics", ["--list"], "127.0.0.1:9")
    assert cmd[-4:] == [TOOLS["kafka-topics"], "--bootstrap-server", "127.0.0.1:9", "--list"]
    assert f"{JARS}/*" in cmd
    assert f"-Dlog4j2.configurationFile={LOG4J}" in cmd
    given = ["--bootstrap-server=k:1", "--describe", "--all-groups"]
    cmd = tool_command("java", JARS, LOG4J, "kafka-consumer-groups", given, "127.0.0.1:9")
    assert cmd[-3:] == given
    cmd = tool_command("java", JARS, LOG4J, "kafka-configs", ["--help"], None)
    assert cmd[-2:] == [TOOLS["kafka-configs"], "--help"]


def test_unknown_tools_and_no_broker_are_refused() -> None:
    with pytest.raises(StackError, match="unknown Kafka tool"):
        tool_command("java", JARS, LOG4J, "kafka-server-start", [], "k:1")
    with pytest.raises(StackError, match="JOBSTREAM_KAFKA_BOOTSTRAP"):
        tool_command("java", JARS, LOG4J, "kafka-topics", ["--list"], None)
