"""A secured Kafka (SASL_SSL, SCRAM) and a TLS-only PostgreSQL, started beside the dev stack.

The shared dev stack is plaintext and other work runs on it, so TLS and SASL are tried on
instances of their own: own state dir, own free ports, stopped by whoever started them (the
test fixtures). They are built from the same jars, binaries and command builders as the dev
stack (:mod:`jobstream.streams.dev.kafka`, :mod:`jobstream.streams.dev.postgres`); only the
configuration differs:

- Kafka: one KRaft node with two client listeners, ``SASL_SSL`` (``SCRAM-SHA-512`` and
  ``PLAIN``) and ``SSL`` that requires a client certificate signed by the CA (mutual TLS). The
  SCRAM users are written into the metadata log at format time (``StorageTool format
  --add-scram``), so the broker accepts them from its first second; the same users and
  passwords are PLAIN users in the listener's JAAS entry. The broker itself talks to its own
  SASL_SSL listener as user ``admin``. Keystore and truststore are PEM files.
- PostgreSQL: ``ssl=on`` and a ``pg_hba.conf`` with ``hostssl`` lines only, so a client that
  does not use TLS is refused; the application role logs in with a SCRAM password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from jobstream.models.errors import StackError
from jobstream.streams.dev import kafka
from jobstream.streams.dev import postgres as pg
from jobstream.streams.dev.process import (
    STOP_GRACE_S,
    run_tool,
    spawn_detached,
    terminate,
    wait_ready,
)
from jobstream.streams.dev.stack import check_prereqs
from jobstream.streams.dev.state import StackPaths, pick_port
from jobstream.streams.dev.tls import CertificateAuthority, ServerCert, issue, make_ca

log = logging.getLogger(__name__)

SCRAM = "SCRAM-SHA-512"
BROKER_USER = "admin"


@dataclass
class SecuredKafka:
    bootstrap: str  # SASL_SSL
    mtls_bootstrap: str  # SSL with a client certificate
    pid: int
    ca_file: Path
    users: dict[str, str]
    log_file: Path
    paths: StackPaths
    client_cert: ServerCert  # for the mutual-TLS listener

    def client_env(self, user: str, mechanism: str = SCRAM) -> dict[str, str]:
        """The ``JOBSTREAM_*`` variables of a client that logs in as ``user`` (SCRAM or PLAIN)."""
        return {
            "JOBSTREAM_KAFKA_BOOTSTRAP": self.bootstrap,
            "JOBSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "JOBSTREAM_KAFKA_SASL_MECHANISM": mechanism,
            "JOBSTREAM_KAFKA_SASL_USERNAME": user,
            "JOBSTREAM_KAFKA_SASL_PASSWORD": self.users[user],
            "JOBSTREAM_KAFKA_SSL_CAFILE": str(self.ca_file),
        }

    def mtls_env(self) -> dict[str, str]:
        """The ``JOBSTREAM_*`` variables of a client of the mutual-TLS listener."""
        return {
            "JOBSTREAM_KAFKA_BOOTSTRAP": self.mtls_bootstrap,
            "JOBSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
            "JOBSTREAM_KAFKA_SSL_CAFILE": str(self.ca_file),
            "JOBSTREAM_KAFKA_SSL_CERTFILE": str(self.client_cert.cert_file),
            "JOBSTREAM_KAFKA_SSL_KEYFILE": str(self.client_cert.key_file),
        }


@dataclass
class SecuredPostgres:
    port: int
    user: str
    password: str
    ca_file: Path
    base: Path
    bin_dir: Path
    log_file: Path
    database: str = pg.PG_DATABASE
    extra: dict[str, str] = field(default_factory=dict)

    def dsn(self, *, sslmode: str = "verify-full", rootcert: Path | None = None) -> str:
        """``host=127.0.0.1``: the certificate names that address, so verify-full passes."""
        cert = rootcert or self.ca_file
        return (
            f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"
            f"?sslmode={sslmode}&sslrootcert={cert}"
        )


# --- Kafka --------------------------------------------------------------------------------


def _parse_properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def sasl_ssl_properties(
    port: int,
    controller_port: int,
    data_dir: Path,
    server: ServerCert,
    ca_file: Path,
    broker_password: str,
    mtls_port: int,
    plain_users: Mapping[str, str] = MappingProxyType({}),
) -> str:
    """The dev stack's broker configuration with SASL_SSL and mutual-TLS client listeners and
    no plaintext one. SASL PLAIN is offered as well (Confluent Cloud's mechanism), for
    ``plain_users``."""
    props = _parse_properties(kafka.render_server_properties(port, controller_port, data_dir))
    mech = SCRAM.lower()
    props |= {
        "listeners": (
            f"SASL_SSL://127.0.0.1:{port},SSL://127.0.0.1:{mtls_port},"
            f"CONTROLLER://127.0.0.1:{controller_port}"
        ),
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{port},SSL://127.0.0.1:{mtls_port}",
        "inter.broker.listener.name": "SASL_SSL",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL",
        "sasl.enabled.mechanisms": f"{SCRAM},PLAIN",
        "sasl.mechanism.inter.broker.protocol": SCRAM,
        f"listener.name.sasl_ssl.{mech}.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{BROKER_USER}" password="{broker_password}";'
        ),
        "listener.name.sasl_ssl.plain.sasl.jaas.config": (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{BROKER_USER}" password="{broker_password}" '
            + "".join(f'user_{n}="{pw}" ' for n, pw in plain_users.items())
        ).rstrip()
        + ";",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(server.keystore_file),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(ca_file),
        "ssl.client.auth": "none",
        "listener.name.ssl.ssl.client.auth": "required",
        # the tests create topics with the partition count they want
        "auto.create.topics.enable": "false",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def scram_args(users: Mapping[str, str]) -> list[str]:
    """``--add-scram`` arguments for ``StorageTool format`` (names and passwords: [A-Za-z0-9])."""
    args = []
    for name, password in users.items():
        if not (name.isalnum() and password.isalnum()):
            raise ValueError("SCRAM names and passwords here must be alphanumeric")
        args += ["--add-scram", f"{SCRAM}=[name={name},password={password}]"]
    return args


async def _answers(bootstrap: str, options: Mapping[str, Any]) -> bool:
    """Like the dev stack's probe, but through the secured listener as a real client."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000, **options)
    try:
        await asyncio.wait_for(admin.start(), 5)
        await asyncio.wait_for(admin.list_topics(), 5)
        return True
    except Exception:  # noqa: BLE001 - not up yet, whatever the reason
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def start_kafka(
    state_dir: Path, ca: CertificateAuthority, users: Mapping[str, str]
) -> SecuredKafka:
    """A SASL_SSL broker under ``state_dir`` (fresh), with SCRAM ``users`` (name -> password)."""
    from aiokafka.helpers import create_ssl_context

    paths = StackPaths.of(state_dir)
    tools = await check_prereqs(need_kafka=True, need_pg=False, pg_data=None)
    jars = await kafka.fetch_jars()
    port = pick_port()
    cport = pick_port({port})
    mport = pick_port({port, cport})
    data, logs = paths.kafka / "data", paths.kafka / "logs"
    for d in (data, logs):
        d.mkdir(parents=True, exist_ok=True)
    server = issue(ca, paths.kafka / "tls", "broker")
    client = issue(ca, paths.kafka / "tls", "client", hosts=("jobstream-client",))
    all_users = {BROKER_USER: secrets.token_hex(16), **users}
    props, log4j = paths.kafka / "server.properties", paths.kafka / "log4j2.properties"
    props.write_text(
        sasl_ssl_properties(
            port, cport, data, server, ca.cert_file, all_users[BROKER_USER], mport, all_users
        )
    )
    props.chmod(0o600)  # it holds the broker's own password
    log4j.write_text(kafka.render_log4j2())
    fmt = kafka.format_command(tools.java, jars, log4j, logs, props, kafka.new_cluster_id())
    try:
        await run_tool([*fmt, *scram_args(all_users)], cwd=paths.kafka, limit_s=120)
    except StackError:
        # its message would repeat the command line, passwords included
        raise StackError(f"formatting the SASL_SSL broker in {paths.kafka} failed") from None
    cmd = kafka.server_command(tools.java, jars, log4j, logs, props)
    out_log, server_log = logs / "kafka.out", logs / "server.log"
    pid = spawn_detached(cmd, log_path=out_log, cwd=paths.kafka)
    bootstrap = f"127.0.0.1:{port}"
    log.info("starting a SASL_SSL Kafka on %s (pid %s)", bootstrap, pid)
    options = {
        "security_protocol": "SASL_SSL",
        "ssl_context": create_ssl_context(cafile=ca.cert_file),
        "sasl_mechanism": SCRAM,
        "sasl_plain_username": BROKER_USER,
        "sasl_plain_password": all_users[BROKER_USER],
    }
    try:
        await wait_ready(
            "Kafka (SASL_SSL)",
            lambda: _answers(bootstrap, options),
            pid,
            kafka.READY_WITHIN_S,
            server_log,
        )
    except BaseException:
        await terminate(pid, 10)
        raise
    return SecuredKafka(
        bootstrap=bootstrap,
        mtls_bootstrap=f"127.0.0.1:{mport}",
        pid=pid,
        ca_file=ca.cert_file,
        users=dict(users),
        log_file=server_log,
        paths=paths,
        client_cert=client,
    )


async def stop_kafka(broker: SecuredKafka) -> None:
    await terminate(broker.pid, STOP_GRACE_S)


# --- PostgreSQL ---------------------------------------------------------------------------

HBA = """\
# TLS only: a connection without it matches no line and is refused
local   all  all                  trust
hostssl all  postgres  127.0.0.1/32  trust
hostssl all  all       127.0.0.1/32  scram-sha-256
"""


async def start_postgres(
    state_dir: Path, ca: CertificateAuthority, *, user: str = "jobstream"
) -> SecuredPostgres:
    """A TLS-only PostgreSQL under ``state_dir`` (or the dev stack's /tmp fallback for it),
    with a database owned by ``user``, who logs in with a generated password."""
    paths = StackPaths.of(state_dir)
    paths.state.mkdir(parents=True, exist_ok=True)
    sys_user = pg.system_user()
    base = pg.choose_base(paths.state, sys_user)
    tools = await check_prereqs(need_kafka=False, need_pg=True, pg_data=None)
    assert tools.pg_bin is not None
    if (base / "data").exists():
        raise StackError(f"{base} already holds a cluster; this launcher wants a fresh one")
    pg._prepare_dirs(base, paths.state, sys_user)
    data = base / "data"
    env = pg._env(sys_user)
    await run_tool(pg.initdb_command(tools.pg_bin, data), env=env, user=sys_user, cwd=base)
    server = issue(ca, base / "tls", "postgres")
    for f in (server.cert_file, server.key_file, base / "tls"):
        if sys_user is not None:
            shutil.chown(f, sys_user.pw_uid, sys_user.pw_gid)
    (data / "pg_hba.conf").write_text(HBA)
    conf = data / "postgresql.conf"
    conf.write_text(
        conf.read_text() + "\n# TLS (devstack_secured)\nssl = on\n"
        f"ssl_cert_file = '{server.cert_file}'\nssl_key_file = '{server.key_file}'\n"
    )
    port = pick_port()
    info = await pg.start(paths, base, tools, sys_user, port)
    password = secrets.token_hex(16)
    # the superuser still needs TLS over TCP (hostssl); asyncpg's default sslmode=prefer does it
    conn = await asyncpg.connect(pg.dsn(port, "postgres"), timeout=10)
    try:
        await conn.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        await conn.execute(f'ALTER DATABASE "{pg.PG_DATABASE}" OWNER TO {user}')
    finally:
        await conn.close()
    log.info("started a TLS-only PostgreSQL on 127.0.0.1:%s (pid %s)", port, info["pid"])
    return SecuredPostgres(
        port=port,
        user=user,
        password=password,
        ca_file=ca.cert_file,
        base=base,
        bin_dir=tools.pg_bin,
        log_file=paths.pg_log,
    )


async def stop_postgres(db: SecuredPostgres) -> None:
    await pg.stop(db.base, db.bin_dir, pg.system_user(), STOP_GRACE_S)
    if not db.base.is_relative_to(db.log_file.parents[1]):
        shutil.rmtree(db.base, ignore_errors=True)  # the /tmp fallback outlives the state dir


# --- command line -------------------------------------------------------------------------


async def _serve(state_dir: Path) -> None:
    import shlex
    import signal

    ca = make_ca(state_dir / "ca")
    user, password = "jobstream", secrets.token_hex(12)
    broker, db = await asyncio.gather(
        start_kafka(state_dir, ca, {user: password}), start_postgres(state_dir, ca)
    )
    try:
        env = broker.client_env(user) | {"JOBSTREAM_DATABASE_URL": db.dsn()}
        print("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()), end="")
        print(f"# mutual TLS instead: {broker.mtls_bootstrap} (see SecuredKafka.mtls_env)")
        print("# running; Ctrl-C stops both", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await asyncio.gather(stop_kafka(broker), stop_postgres(db))


def main(argv: list[str] | None = None) -> int:
    """``python -m jobstream.streams.dev.secured --state-dir D``: both services in the foreground,
    with the ``JOBSTREAM_*`` exports of a client printed, until Ctrl-C."""
    import argparse
    import sys
    import tempfile

    parser = argparse.ArgumentParser(
        prog="python -m jobstream.streams.dev.secured",
        description="A SASL_SSL Kafka and a TLS-only PostgreSQL beside the dev stack.",
    )
    parser.add_argument("--state-dir", type=Path, help="default: a new temporary directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the broker is still booting
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="jobstream-secured-"))
    try:
        asyncio.run(_serve(state_dir))
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "SecuredKafka",
    "SecuredPostgres",
    "make_ca",
    "start_kafka",
    "start_postgres",
    "stop_kafka",
    "stop_postgres",
]
