"""The Kafka half of the local dev stack: jars, config files, start, stop, probe.

Rendering and command building are pure functions, so they are unit-tested without a JVM; the
process plumbing they rely on is shared with PostgreSQL in :mod:`jobstream.streams.dev.stack`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from jobstream.models.errors import StackError
from jobstream.streams.dev.process import (
    REPLACE_GRACE_S,
    locked,
    owns,
    pids_matching,
    run_tool,
    spawn_detached,
    terminate,
    wait_ready,
)
from jobstream.streams.dev.state import StackPaths, Tools, prerequisite_message

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.24.3"
KAFKA_MAIN_JAR = f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar"
KAFKA_IMAGE = f"apache/kafka:{KAFKA_VERSION}"
READY_WITHIN_S = 120.0

# Kafka refuses these two ids (zero and the metadata topic id), and a leading "-" would be
# parsed as an option by StorageTool; Kafka's own Uuid.randomUuid() skips the same values.
_RESERVED_UUIDS = (bytes(16), bytes(15) + b"\x01")


def jars_dir() -> Path:
    """Where the jars are cached: outside the repo, so every checkout and CI job shares one copy."""
    override = os.environ.get("JOBSTREAM_KAFKA_JARS_DIR")
    if override:
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "jobstream" / f"kafka-{KAFKA_VERSION}" / "libs"


def jars_ready(directory: Path) -> bool:
    """The main jar is copied with the others into a staging dir renamed in one step, so its
    presence means the whole set is there."""
    return (directory / KAFKA_MAIN_JAR).is_file()


RUNTIME_DEPS: tuple[tuple[str, str, str], ...] = (
    ("org.apache.kafka", f"kafka_{SCALA_VERSION}", KAFKA_VERSION),
    # Kafka 4 logs through slf4j 1.x; without a binding it would log nothing at all.
    ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
    ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
)


def render_pom(
    deps: tuple[tuple[str, str, str], ...] = RUNTIME_DEPS, artifact: str = "kafka-runtime"
) -> str:
    """A throw-away project whose runtime dependency closure is exactly what we run (by
    default a Kafka server)."""
    body = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        f"  <groupId>jobstream</groupId><artifactId>{artifact}</artifactId>"
        "<version>1</version>\n"
        f"  <dependencies>\n{body}\n  </dependencies>\n"
        "</project>\n"
    )


def fetch_command(mvn: str, pom: Path, output_dir: Path) -> list[str]:
    return [
        mvn,
        "-B",
        "-q",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={output_dir}",
    ]


def render_server_properties(port: int, controller_port: int, data_dir: Path) -> str:
    """A single combined KRaft node bound to loopback only, sized for a laptop or a CI runner."""
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        # one broker: every internal topic must accept a replication factor of 1
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # fewer internal partitions: the first consumer group joins in well under a second
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.num.partitions": "8",
        # tests start many short-lived groups; the default 3 s delay would slow every one
        "group.initial.rebalance.delay.ms": "0",
        # matches Settings.partitions, so auto-created topics look like provisioned ones
        "num.partitions": "8",
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
        # a dev stack keeps a day of data in 64 MiB segments rather than a week in 1 GiB
        "log.retention.hours": "24",
        "log.segment.bytes": str(64 * 1024 * 1024),
        "log.retention.check.interval.ms": "300000",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def render_log4j2() -> str:
    """Logs go to a size-capped file, so a dev broker left running for weeks cannot fill a disk."""
    return """\
status = warn
name = jobstream-kafka
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = info
rootLogger.appenderRef.file.ref = FILE
logger.kafkaRequest.name = kafka.request.logger
logger.kafkaRequest.level = warn
logger.stateChange.name = state.change.logger
logger.stateChange.level = warn
"""


def new_cluster_id() -> str:
    """Same format as ``StorageTool random-uuid`` without paying for a second JVM start."""
    while True:
        raw = os.urandom(16)
        text = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        if raw not in _RESERVED_UUIDS and not text.startswith("-"):
            return text


DEFAULT_JVM_OPTS = ("-Xms256m", "-Xmx512m", "-XX:+ExitOnOutOfMemoryError")
# Opt-in via JOBSTREAM_KAFKA_JVM_OPTS (it replaces the list above): a C1-only JIT answers in
# ~5 s instead of ~10-17 s on a 2-CPU box, because C2 compiles stop competing with start-up.
# Not the default because it costs steady-state CPU per message, which would skew the numbers
# of streams.dev.bench, which measures against this broker.
FAST_START_JVM_OPTS = (*DEFAULT_JVM_OPTS, "-XX:TieredStopAtLevel=1")


def jvm_opts() -> list[str]:
    override = os.environ.get("JOBSTREAM_KAFKA_JVM_OPTS")
    return shlex.split(override) if override is not None else list(DEFAULT_JVM_OPTS)


def _java(java: str, jars: Path, log4j: Path, logs_dir: Path, main: str) -> list[str]:
    return [
        java,
        *jvm_opts(),
        "-cp",
        str(jars / "*"),
        f"-Dlog4j2.configurationFile={log4j}",
        f"-Dkafka.logs.dir={logs_dir}",
        # otherwise Java binds 127.0.0.1 as an IPv4-mapped IPv6 socket, confusing `ss` readers
        "-Djava.net.preferIPv4Stack=true",
        main,
    ]


def format_command(
    java: str, jars: Path, log4j: Path, logs_dir: Path, props: Path, cluster_id: str
) -> list[str]:
    base = _java(java, jars, log4j, logs_dir, "kafka.tools.StorageTool")
    return [*base, "format", "-t", cluster_id, "-c", str(props)]


def server_command(java: str, jars: Path, log4j: Path, logs_dir: Path, props: Path) -> list[str]:
    """``props`` is an absolute path: it is also how a leftover process is recognised."""
    return [*_java(java, jars, log4j, logs_dir, "kafka.Kafka"), str(props)]


async def kafka_answers(bootstrap: str, within_s: float = 5.0) -> bool:
    """A real metadata round trip: a listening port alone is also what a hung broker shows."""
    host, _, port = bootstrap.rpartition(":")
    try:
        # cheap pre-check, so a broker that is still booting does not make aiokafka log errors
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), within_s)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    except (OSError, TimeoutError, ValueError):
        return False
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(within_s * 1000)
    )
    try:
        await asyncio.wait_for(admin.start(), within_s)
        await asyncio.wait_for(admin.list_topics(), within_s)
        return True
    except Exception:  # noqa: BLE001 - any failure at all means "not answering"
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


# --- lifecycle ----------------------------------------------------------------------------


def _data(paths: StackPaths) -> Path:
    return paths.kafka / "data"


def _logs(paths: StackPaths) -> Path:
    return paths.kafka / "logs"


def _props(paths: StackPaths) -> Path:
    # its absolute path is on the server's command line: that is how a leftover is recognised
    return paths.kafka / "server.properties"


async def fetch_jars(directory: Path | None = None) -> Path:
    """Resolved by Maven rather than a tarball download, so it goes through whatever mirror or
    proxy ``~/.m2/settings.xml`` already sets up on this machine."""
    return await fetch_artifacts(
        directory or jars_dir(), RUNTIME_DEPS, marker=KAFKA_MAIN_JAR, what="Kafka server"
    )


async def fetch_artifacts(
    target: Path, deps: tuple[tuple[str, str, str], ...], *, marker: str, what: str
) -> Path:
    """The runtime closure of ``deps`` into ``target``, once; ``marker`` is the jar whose
    presence means the set is complete (all jars are renamed into place in one step)."""
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    async with locked(target.parent / f".{target.name}.lock"):
        if (target / marker).is_file():  # another process fetched them while we waited
            return target
        _refuse_partial(target, marker)
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError(prerequisite_message(["mvn (Apache Maven, fetches the Kafka jars)"]))
        staging = target.parent / f".{target.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        started = time.monotonic()
        log.info("fetching %s %s jars from Maven Central into %s", what, KAFKA_VERSION, target)
        try:
            with tempfile.TemporaryDirectory(prefix="jobstream-kafka-pom-") as tmp:
                pom = Path(tmp) / "pom.xml"
                pom.write_text(render_pom(deps, artifact=target.name))
                await run_tool(fetch_command(mvn, pom, staging), cwd=Path(tmp), limit_s=900)
            _install(staging, target, marker)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("fetched %s jars in %.1fs", what, time.monotonic() - started)
    return target


def _refuse_partial(target: Path, marker: str) -> None:
    if target.exists() and any(target.iterdir()):
        raise StackError(
            f"{target} is not empty but has no {marker}; remove it, or point "
            "JOBSTREAM_KAFKA_JARS_DIR at an empty or complete directory"
        )


def _install(staging: Path, target: Path, marker: str) -> None:
    if not (staging / marker).is_file():
        raise StackError(f"mvn finished but {marker} is not in {staging}")
    if target.exists():
        target.rmdir()
    os.replace(staging, target)  # all jars appear at once, or none do


async def running(paths: StackPaths, prev: dict[str, Any], requested: int | None) -> int | None:
    """The recorded pid, if it is our broker, on the wanted port, and answering."""
    pid, port = prev.get("pid"), prev.get("port")
    if not port or not owns(pid, str(_props(paths))):
        return None
    if requested is not None and requested != port:
        return None
    return pid if await kafka_answers(f"127.0.0.1:{port}") else None


async def stop(paths: StackPaths, prev: dict[str, Any], grace_s: float) -> None:
    marker = str(_props(paths))
    pids = {p for p in [prev.get("pid"), *pids_matching(marker)] if p and owns(p, marker)}
    for pid in pids:
        log.info("stopping Kafka (pid %s)", pid)
    await asyncio.gather(*(terminate(pid, grace_s) for pid in pids))


async def start(paths: StackPaths, tools: Tools, port: int, controller_port: int) -> dict[str, Any]:
    jars = await fetch_jars()
    data, logs, props, log4j = (
        _data(paths),
        _logs(paths),
        _props(paths),
        paths.kafka / "log4j2.properties",
    )
    for d in (data, logs):
        d.mkdir(parents=True, exist_ok=True)
    props.write_text(render_server_properties(port, controller_port, data))
    log4j.write_text(render_log4j2())
    if not (data / "meta.properties").is_file():
        cmd = format_command(tools.java, jars, log4j, logs, props, new_cluster_id())
        await run_tool(cmd, cwd=paths.kafka, limit_s=120)
    stdout_log, server_log = logs / "kafka.out", logs / "server.log"
    cmd = server_command(tools.java, jars, log4j, logs, props)
    pid = spawn_detached(cmd, log_path=stdout_log, cwd=paths.kafka)
    bootstrap = f"127.0.0.1:{port}"
    log.info("starting Kafka %s on %s (pid %s)", KAFKA_VERSION, bootstrap, pid)
    try:
        await wait_ready("Kafka", lambda: kafka_answers(bootstrap), pid, READY_WITHIN_S, server_log)
    except BaseException:
        await terminate(pid, REPLACE_GRACE_S)
        raise
    return {
        "version": KAFKA_VERSION,
        "port": port,
        "controller_port": controller_port,
        "pid": pid,
        "bootstrap": bootstrap,
        "data_dir": str(data),
        "log": str(server_log),
        "stdout_log": str(stdout_log),
        "jars_dir": str(jars),
        "jvm_opts": jvm_opts(),
    }


# --- Docker -------------------------------------------------------------------------------


def container() -> Any:
    """An apache/kafka 4.x container through testcontainers, imported only when Docker answers.

    testcontainers' KafkaContainer boots Confluent images (its start script sources
    /etc/confluent/docker/*); the apache image has its own launcher and entrypoint, so only
    the KRaft environment and the advertised-listener trick are reused.
    """
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers < 4.10
        from testcontainers.kafka import KafkaContainer
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    class ApacheKafkaContainer(KafkaContainer):
        def _verify_min_kraft_version(self) -> None:
            """The stock check compares the tag with Confluent versions (>= 7.0.0)."""

        def tc_start(self) -> None:
            host = self.get_container_host_ip()
            port = self.get_exposed_port(self.port)
            script = (
                "#!/bin/sh\n"
                f"export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://{host}:{port},"
                "BROKER://$(hostname -i):9092\n"
                "exec /etc/kafka/docker/run\n"
            )
            self.create_file(script.encode(), self.TC_START_SCRIPT)

        def start(self, timeout: int = 120) -> Any:
            script = self.TC_START_SCRIPT
            self.configure()  # type: ignore[no-untyped-call]  # unannotated in testcontainers
            self.with_kwargs(entrypoint=["/bin/sh", "-c"])
            self.with_command([f"while [ ! -f {script} ]; do sleep 0.1; done; exec sh {script}"])
            DockerContainer.start(self)
            self.tc_start()
            wait = LogMessageWaitStrategy(self.wait_for)
            wait.with_startup_timeout(timeout)
            wait.wait_until_ready(self)
            return self

    kafka = ApacheKafkaContainer(KAFKA_IMAGE).with_kraft()
    for key in (
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
    ):
        kafka.with_env(key, "1")
    kafka.with_env("KAFKA_NUM_PARTITIONS", "8")
    return kafka
