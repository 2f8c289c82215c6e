"""Kafka's own command-line tools against the local broker, without a Kafka tarball.

``kafka-topics``, ``kafka-consumer-groups`` and ``kafka-configs`` are Java classes in the
``kafka-tools`` and ``kafka_2.13`` jars. Like the broker's jars they come from Maven Central
(``mvn dependency:copy-dependencies`` on a throw-away pom), into their own cache directory next
to the broker's, so fetching them never touches a running broker's classpath.

``jobstream dev kafka-tool NAME ARGS...`` runs one; without ``--bootstrap-server`` it talks to
``JOBSTREAM_KAFKA_BOOTSTRAP`` or else the local stack of the state dir.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from jobstream.models.errors import StackError
from jobstream.streams.dev.kafka import (
    KAFKA_VERSION,
    LOG4J_VERSION,
    SCALA_VERSION,
    fetch_artifacts,
    jars_dir,
)

TOOLS_MAIN_JAR = f"kafka-tools-{KAFKA_VERSION}.jar"
TOOLS_DEPS: tuple[tuple[str, str, str], ...] = (
    ("org.apache.kafka", "kafka-tools", KAFKA_VERSION),
    # kafka-configs still lives in the server jar (kafka.admin.ConfigCommand)
    ("org.apache.kafka", f"kafka_{SCALA_VERSION}", KAFKA_VERSION),
    ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
    ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
)
# The classes Kafka 4.1's bin/*.sh scripts run.
TOOLS = {
    "kafka-topics": "org.apache.kafka.tools.TopicCommand",
    "kafka-consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "kafka-configs": "kafka.admin.ConfigCommand",
}
_BOOTSTRAP_FLAGS = ("--bootstrap-server", "--bootstrap-controller")


def tools_dir() -> Path:
    return jars_dir().parent / "tools"


async def fetch_tool_jars(directory: Path | None = None) -> Path:
    return await fetch_artifacts(
        directory or tools_dir(), TOOLS_DEPS, marker=TOOLS_MAIN_JAR, what="Kafka tools"
    )


def render_log4j2() -> str:
    """Tools print their answers on stdout; their own logging stays on stderr, warnings only."""
    return """\
status = warn
name = jobstream-kafka-tools
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.err.ref = STDERR
"""


def tool_command(
    java: str, jars: Path, log4j: Path, name: str, args: Sequence[str], bootstrap: str | None
) -> list[str]:
    if name not in TOOLS:
        raise StackError(f"unknown Kafka tool {name!r}; one of: {', '.join(sorted(TOOLS))}")
    argv = list(args)
    has_bootstrap = any(a.split("=", 1)[0] in _BOOTSTRAP_FLAGS for a in argv)
    wants_help = any(a in ("--help", "-h", "--version") for a in argv)
    if not has_bootstrap and not wants_help:
        if bootstrap is None:
            raise StackError(
                "no --bootstrap-server given, JOBSTREAM_KAFKA_BOOTSTRAP is unset and no local "
                "stack runs (start it: jobstream dev up)"
            )
        argv = ["--bootstrap-server", bootstrap, *argv]
    return [
        java,
        "-Xmx256m",
        "-XX:TieredStopAtLevel=1",  # short-lived: start fast rather than run fast
        "-cp",
        str(jars / "*"),
        f"-Dlog4j2.configurationFile={log4j}",
        TOOLS[name],
        *argv,
    ]


async def prepare(
    name: str, args: Sequence[str], find_bootstrap: Callable[[], Awaitable[str | None]]
) -> list[str]:
    """The tool's command line; ``find_bootstrap`` is asked for the broker only when the
    arguments name none."""
    from jobstream.streams.dev.state import find_java

    java = find_java()
    if java is None:
        raise StackError("java not found: Kafka's tools need Java 17 or newer")
    jars = await fetch_tool_jars()
    log4j = jars.parent / "tools-log4j2.properties"
    if not log4j.is_file():
        log4j.write_text(render_log4j2())
    return tool_command(java, jars, log4j, name, args, await find_bootstrap())


def main(argv: Sequence[str], *, find_bootstrap: Callable[[], Awaitable[str | None]]) -> int:
    """``NAME ARGS...``; returns the tool's exit code."""
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: jobstream dev kafka-tool {{{','.join(sorted(TOOLS))}}} ARGS...")
        return 0 if argv else 2
    try:
        cmd = asyncio.run(prepare(argv[0], argv[1:], find_bootstrap))
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return subprocess.run(cmd, check=False).returncode
