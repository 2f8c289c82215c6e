"""Jobs over a SASL_SSL Kafka and a TLS-only PostgreSQL, and what a wrong setting looks like.

The module starts its own broker and database (streams.dev.secured) on free ports with
their own state dir, and stops them at the end; the shared dev stack is never touched. The
broker's only client listener is SASL_SSL (SCRAM-SHA-512) and PostgreSQL's pg_hba.conf has
``hostssl`` lines only, so anything that works here went through TLS, and through SASL for Kafka.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobstream.streams.dev.secured import (
    SecuredKafka,
    SecuredPostgres,
    start_kafka,
    start_postgres,
    stop_kafka,
    stop_postgres,
)
from jobstream.streams.dev.tls import CertificateAuthority, make_ca
from jobstream.streams.kafka.security import client_options
from jobstream.streams.pg.pool import create_pool
from jobstream.streams.settings import Settings
from jobstream.streams.topics import topic_names
from tests.integration.harness import (
    TopicReader,
    WorkerFactory,
    count_rows,
    run_cli,
    wait_terminal,
)

IN_CI = bool(os.environ.get("CI"))
USER = "jobstream"
# alphanumeric: the SCRAM user is created from the storage tool's command line
PASSWORD = "plantedSaslSecret7f3a9c"
WRONG_PASSWORD = "wrongSaslSecret0b1d2e"


@dataclass
class Secured:
    kafka: SecuredKafka
    pg: SecuredPostgres
    ca: CertificateAuthority
    other_ca: CertificateAuthority  # signed nothing the servers present

    def env(self, **overrides: str) -> dict[str, str]:
        """JOBSTREAM_* of a client of both: SASL_SSL as USER, PostgreSQL with verify-full."""
        env = self.kafka.client_env(USER)
        env["JOBSTREAM_DATABASE_URL"] = self.pg.dsn()
        return env | overrides

    def settings(self, **overrides: str) -> Settings:
        fields = {k.removeprefix("JOBSTREAM_").lower(): v for k, v in self.env(**overrides).items()}
        return Settings(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    state = tmp_path_factory.mktemp("secured")
    ca, other = make_ca(state / "ca"), make_ca(state / "other-ca", "a CA nobody trusts")

    async def up() -> tuple[SecuredKafka, SecuredPostgres]:
        results = await asyncio.gather(
            start_kafka(state, ca, {USER: PASSWORD}),
            start_postgres(state, ca),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await down(*[r for r in results if not isinstance(r, BaseException)])
            raise errors[0]
        kafka, pg = results
        assert isinstance(kafka, SecuredKafka)
        assert isinstance(pg, SecuredPostgres)
        return kafka, pg

    async def down(*started: SecuredKafka | SecuredPostgres) -> None:
        for s in started:
            await (stop_kafka(s) if isinstance(s, SecuredKafka) else stop_postgres(s))

    started = time.monotonic()
    try:
        kafka, pg = asyncio.run(up())
    except Exception as exc:  # noqa: BLE001 - whatever stops them starting: skip, or fail under CI
        if IN_CI:
            pytest.fail(f"CI is set and the secured services could not start: {exc!r}")
        pytest.skip(f"secured Kafka/PostgreSQL not available: {exc!r}")
    print(f"secured Kafka + PostgreSQL up in {time.monotonic() - started:.1f}s")
    try:
        yield Secured(kafka=kafka, pg=pg, ca=ca, other_ca=other)
    finally:
        asyncio.run(down(kafka, pg))


def cli_env(env: dict[str, str], prefix: str, tmp: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("JOBSTREAM_")}
    return base | env | {"JOBSTREAM_TOPIC_PREFIX": prefix, "JOBSTREAM_STATE_DIR": str(tmp)}


def error_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.strip()]


async def test_jobs_end_to_end_over_sasl_ssl_and_tls_postgres(
    secured: Secured, prefix: str, tmp_path: Path
) -> None:
    env = secured.env()
    factory = WorkerFactory(
        bootstrap=secured.kafka.bootstrap,
        dsn=secured.pg.dsn(),
        prefix=prefix,
        tmp=tmp_path,
        base_env={k: v for k, v in env.items() if k.startswith("JOBSTREAM_KAFKA_")},
    )
    pool = await create_pool(secured.pg.dsn(), min_size=1, max_size=2)
    reader: TopicReader | None = None
    try:
        worker = factory.start()
        await worker.wait_assigned()

        from jobstream.models.job import JobEvent
        from jobstream.streams.producer.client import JobClient

        options = client_options(secured.settings())
        async with JobClient(secured.kafka.bootstrap, topic_prefix=prefix, options=options) as c:
            ids = await c.submit_many(c.build("echo", {"n": i}) for i in range(50))
            # an unknown type (published unchecked, as a producer without the client's
            # checks could) goes to the dead-letter topic: that publisher is secured too
            unknown = JobEvent(type="no.such.type", payload={"n": -1})
            await (await c.publish(unknown))
            invalid = unknown.id
        code, out = await run_cli(
            "submit", "echo", "--payload", '{"via": "cli"}', "--count", "2",
            env=cli_env(env, prefix, tmp_path),
        )  # fmt: skip
        assert code == 0, out
        cli_ids = [line for line in out.split() if len(line) == 32]
        assert len(cli_ids) == 2, out

        await wait_terminal(pool, [*ids, *cli_ids, invalid], timeout=90)
        assert await count_rows(pool, [*ids, *cli_ids], "succeeded") == 52
        assert await count_rows(pool, [invalid], "dead_lettered") == 1

        topics = topic_names(prefix)
        reader = await TopicReader(secured.kafka.bootstrap, topics.outcomes, options).start()
        await reader.wait_count(53, timeout=60)
        outcomes = {doc["job_id"]: doc["status"] for doc in reader.json()}
        assert {outcomes[i] for i in [*ids, *cli_ids]} == {"succeeded"}
        assert outcomes[invalid] == "dead_lettered"

        code, out = await run_cli("status", cli_ids[0], env=cli_env(env, prefix, tmp_path))
        assert code == 0, out
        assert '"succeeded"' in out, out
        # the DLQ tool reads the dead-letter topic over SASL_SSL too
        code, dlq_out = await run_cli("dlq", "list", env=cli_env(env, prefix, tmp_path))
        assert code == 0, dlq_out
        assert invalid in dlq_out, dlq_out
        # the worker's own connections are TLS ones (pg_hba allows nothing else; checked anyway)
        plain = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
            " WHERE a.usename = $1 AND NOT s.ssl",
            USER,
        )
        assert plain == 0

        worker.signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 60) == 0
        log = worker.log_text()
        assert "Worker ready" in log or "ready" in log.lower()
        for secret in (PASSWORD, secured.pg.password):
            assert secret not in log, "a secret reached the worker's log"
            assert secret not in out
            assert secret not in dlq_out
    finally:
        if reader is not None:
            await reader.stop()
        await pool.close()
        factory.close()


async def test_wrong_password_fails_fast_with_one_line(
    secured: Secured, prefix: str, tmp_path: Path
) -> None:
    env = secured.env(JOBSTREAM_KAFKA_SASL_PASSWORD=WRONG_PASSWORD)
    started = time.monotonic()
    code, out = await run_cli("submit", "echo", env=cli_env(env, prefix, tmp_path))
    elapsed = time.monotonic() - started
    assert code == 3, out
    assert error_lines(out) == [
        f"Kafka authentication failed (SASL SCRAM-SHA-512 as user {USER}): check "
        "JOBSTREAM_KAFKA_SASL_PASSWORD and JOBSTREAM_KAFKA_SASL_USERNAME"
    ]
    assert WRONG_PASSWORD not in out
    assert PASSWORD not in out
    print(f"jobstream submit with a wrong password ended in {elapsed:.1f}s")
    assert elapsed < 30, "it must not wait out the client's retries"

    # the standalone API names it as well (its log lines may come first)
    code, out = await run_cli("api", "--port", "0", env=cli_env(env, prefix, tmp_path))
    assert code == 3, out
    assert (
        out.rstrip()
        .splitlines()[-1]
        .endswith("check JOBSTREAM_KAFKA_SASL_PASSWORD and JOBSTREAM_KAFKA_SASL_USERNAME")
    ), out
    assert WRONG_PASSWORD not in out
    assert PASSWORD not in out

    # a worker stops at once too, instead of crash-looping inside faust
    factory = WorkerFactory(
        bootstrap=secured.kafka.bootstrap,
        dsn=secured.pg.dsn(),
        prefix=prefix,
        tmp=tmp_path,
        base_env={k: v for k, v in env.items() if k.startswith("JOBSTREAM_KAFKA_")},
    )
    try:
        worker = factory.start()
        code = await asyncio.to_thread(worker.wait, 60)
        log = worker.log_text()
        assert code == 3, log
        assert "check JOBSTREAM_KAFKA_SASL_PASSWORD" in log
        assert "Traceback" not in log
        assert WRONG_PASSWORD not in log
        assert PASSWORD not in log
    finally:
        factory.close()


async def test_untrusted_certificates_fail_fast_with_one_line(
    secured: Secured, prefix: str, tmp_path: Path
) -> None:
    env = secured.env(JOBSTREAM_KAFKA_SSL_CAFILE=str(secured.other_ca.cert_file))
    code, out = await run_cli("submit", "echo", env=cli_env(env, prefix, tmp_path))
    assert code == 3, out
    (line,) = error_lines(out)
    assert line.startswith("Kafka TLS: the certificate of 127.0.0.1:")
    assert "not trusted" in line
    assert line.endswith("check JOBSTREAM_KAFKA_SSL_CAFILE"), line

    # PostgreSQL: a root certificate that did not sign the server's
    dsn = secured.pg.dsn(rootcert=secured.other_ca.cert_file)
    code, out = await run_cli(
        "migrate", env=cli_env(secured.env(JOBSTREAM_DATABASE_URL=dsn), prefix, tmp_path)
    )
    assert code == 3, out
    (line,) = error_lines(out)
    assert line.startswith("PostgreSQL TLS: the server certificate is not trusted"), line
    assert line.endswith("check sslrootcert= in JOBSTREAM_DATABASE_URL"), line

    # and without TLS the server refuses the login outright
    dsn = secured.pg.dsn(sslmode="disable")
    code, out = await run_cli(
        "migrate", env=cli_env(secured.env(JOBSTREAM_DATABASE_URL=dsn), prefix, tmp_path)
    )
    assert code == 3, out
    (line,) = error_lines(out)
    assert "no encryption" in line, line
    assert "sslmode=" in line, line
    assert secured.pg.password not in out

    # a wrong database password: named by its setting, never echoed
    dsn = secured.pg.dsn().replace(secured.pg.password, WRONG_PASSWORD)
    code, out = await run_cli(
        "migrate", env=cli_env(secured.env(JOBSTREAM_DATABASE_URL=dsn), prefix, tmp_path)
    )
    assert code == 3, out
    (line,) = error_lines(out)
    assert line.startswith("PostgreSQL authentication failed"), line
    assert line.endswith("check JOBSTREAM_DATABASE_URL"), line
    assert WRONG_PASSWORD not in line, line

    # with the right CA, `migrate` applies the schema over verify-full
    code, out = await run_cli("migrate", env=cli_env(secured.env(), prefix, tmp_path))
    assert code == 0, out
    assert out.startswith("applied"), out


async def test_the_broker_refuses_plaintext(secured: Secured, prefix: str, tmp_path: Path) -> None:
    """A PLAINTEXT client (the default) against the SASL_SSL listener: one line naming the
    protocol setting, not a hang."""
    env = {
        "JOBSTREAM_KAFKA_BOOTSTRAP": secured.kafka.bootstrap,
        "JOBSTREAM_DATABASE_URL": secured.pg.dsn(),
    }
    code, out = await run_cli("submit", "echo", env=cli_env(env, prefix, tmp_path))
    assert code == 3, out
    (line,) = error_lines(out)
    assert "check JOBSTREAM_KAFKA_SECURITY_PROTOCOL" in line, line


async def test_mutual_tls(secured: Secured, prefix: str, tmp_path: Path) -> None:
    """SSL with a client certificate: topic creation, a publisher and a reader; without the
    certificate the broker refuses, and the line names the certificate settings."""
    from jobstream.streams.kafka.admin import ensure_topics
    from jobstream.streams.kafka.publisher import Publisher

    env = secured.kafka.mtls_env()
    settings = Settings(
        **{k.removeprefix("JOBSTREAM_").lower(): v for k, v in env.items()}  # type: ignore[arg-type]
    )
    options = client_options(settings)
    bootstrap, topic = secured.kafka.mtls_bootstrap, f"{prefix}.mtls"
    await ensure_topics(bootstrap, [topic], partitions=1, options=options)
    publisher = Publisher(bootstrap, options=options)
    await publisher.start()
    try:
        await publisher.send_and_wait(topic, b"over mutual TLS")
    finally:
        await publisher.stop()
    reader = await TopicReader(bootstrap, topic, options).start()
    try:
        (record,) = await reader.wait_count(1, timeout=30)
        assert record.value == b"over mutual TLS"
    finally:
        await reader.stop()

    no_cert = {k: v for k, v in env.items() if not k.endswith(("_CERTFILE", "_KEYFILE"))}
    no_cert["JOBSTREAM_DATABASE_URL"] = secured.pg.dsn()
    code, out = await run_cli("submit", "echo", env=cli_env(no_cert, prefix, tmp_path))
    assert code == 3, out
    (line,) = error_lines(out)
    assert "JOBSTREAM_KAFKA_SSL_CERTFILE" in line, line


async def test_debug_logs_of_a_plain_sasl_worker_hold_no_secret(
    secured: Secured, prefix: str, tmp_path: Path
) -> None:
    """SASL PLAIN sends the password itself (SCRAM only a proof), and at DEBUG aiokafka logs
    every request it sends: a worker logging everything still writes no secret. The protocol
    libraries are held at INFO (their DEBUG lines also carry produced records); the SASL
    redaction filter stays as a second guard, unit-tested on its own."""
    env = secured.env() | secured.kafka.client_env(USER, "PLAIN")
    factory = WorkerFactory(
        bootstrap=secured.kafka.bootstrap,
        dsn=secured.pg.dsn(),
        prefix=prefix,
        tmp=tmp_path,
        base_env={k: v for k, v in env.items() if k.startswith("JOBSTREAM_KAFKA_")}
        | {"JOBSTREAM_LOG_LEVEL": "DEBUG"},
    )
    pool = await create_pool(secured.pg.dsn(), min_size=1, max_size=2)
    try:
        worker = factory.start()
        await worker.wait_assigned()
        code, out = await run_cli("submit", "echo", env=cli_env(env, prefix, tmp_path))
        assert code == 0, out
        await wait_terminal(pool, [out.split()[-1]], timeout=60)
        worker.signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 60) == 0
        log = worker.log_text()
        assert "DEBUG" in log, "the worker logged at DEBUG"
        assert "SaslAuthenticateRequest" not in log, "aiokafka's wire-level lines are held back"
        for secret in (PASSWORD, secured.pg.password):
            assert secret not in log
    finally:
        await pool.close()
        factory.close()


async def test_settings_that_cannot_work_are_a_usage_error(tmp_path: Path) -> None:
    env = {
        "JOBSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:9",
        "JOBSTREAM_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
        "JOBSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    }
    code, out = await run_cli("submit", "echo", env=cli_env(env, "unused", tmp_path))
    assert code == 2, out
    assert error_lines(out) == [
        "JOBSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs JOBSTREAM_KAFKA_SASL_USERNAME and "
        "JOBSTREAM_KAFKA_SASL_PASSWORD"
    ]
