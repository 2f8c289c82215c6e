"""Where Kafka and PostgreSQL are, from explicit settings only, and why they refused us, in one
line that names the service, the address tried and the variable to set.

Production commands never look for or start a local stack: a missing
``JOBSTREAM_KAFKA_BOOTSTRAP`` or ``JOBSTREAM_DATABASE_URL`` is one line and an exit code (see
:mod:`jobstream.streams.exits`). Only ``jobstream dev``, the demo, the tests and the benchmark
start local services (:func:`jobstream.streams.dev.stack.resolve_services`).

A wrong password or an untrusted certificate otherwise surfaces as a traceback several frames
deep in aiokafka or asyncpg, or (for Kafka) as a bare "Unable to bootstrap", and a worker would
keep retrying what can never work. The commands call :func:`explain` on the way out and
:func:`preflight` before a long-running process starts; the lines never contain a secret (the
DSN is named, never printed).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from urllib.parse import urlsplit

import asyncpg
from aiokafka import errors as kafka_errors

from jobstream.models.errors import ConfigurationError, JobstreamError
from jobstream.streams.kafka.security import KafkaAccessError, bootstrap_servers, check_access
from jobstream.streams.settings import Settings

DSN_SETTING = "JOBSTREAM_DATABASE_URL"
BOOTSTRAP_SETTING = "JOBSTREAM_KAFKA_BOOTSTRAP"


class ServiceUnavailable(JobstreamError):
    """Raised when Kafka or PostgreSQL is not configured or cannot be reached; its text is the
    one line to print."""


def kafka_bootstrap(settings: Settings) -> str:
    """The bootstrap servers from the settings, or :class:`ServiceUnavailable`."""
    if not settings.kafka_bootstrap:
        raise ServiceUnavailable(
            f"Kafka: no address is set: set {BOOTSTRAP_SETTING} to the bootstrap servers "
            "(host:port[,host:port])"
        )
    return settings.kafka_bootstrap


def database_url(settings: Settings) -> str:
    """The PostgreSQL DSN from the settings, or :class:`ServiceUnavailable`."""
    if settings.database_url is None or not settings.database_url.get_secret_value():
        raise ServiceUnavailable(
            f"PostgreSQL: no address is set: set {DSN_SETTING} to a postgresql:// DSN"
        )
    return settings.database_url.get_secret_value()


def resolve(settings: Settings) -> tuple[str, str]:
    """(bootstrap, dsn) for a command that needs both services."""
    return kafka_bootstrap(settings), database_url(settings)


def dsn_address(dsn: str) -> str:
    """host:port/database of a DSN, never its password."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "<unparseable DSN>"
    return f"{host}:{port}{parts.path}"


class DatabaseAccessError(ConfigurationError):
    """Raised when PostgreSQL refuses the client's TLS or login: the DSN needs fixing."""


def postgres_line(exc: BaseException) -> str | None:
    """One line for a refused PostgreSQL connection; None when ``exc`` is something else."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = str(exc.verify_message or exc.reason or "not trusted")
        if "mismatch" in reason.lower() or "hostname" in reason.lower():
            return (
                f"PostgreSQL TLS: the server certificate does not name the host ({reason}): "
                f"check the host in {DSN_SETTING}, or use sslmode=verify-ca"
            )
        return (
            f"PostgreSQL TLS: the server certificate is not trusted ({reason}): check "
            f"sslrootcert= in {DSN_SETTING}"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"PostgreSQL TLS handshake failed ({exc.reason or exc}): check sslmode=, "
            f"sslcert= and sslkey= in {DSN_SETTING}"
        )
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return f"PostgreSQL authentication failed ({first_line(exc)}): check {DSN_SETTING}"
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        # pg_hba.conf: e.g. "no pg_hba.conf entry for host ..., no encryption"
        return (
            f"PostgreSQL refused the connection ({first_line(exc)}): check the user and "
            f"sslmode= in {DSN_SETTING}"
        )
    if isinstance(exc, ConnectionError) and "ssl" in str(exc).lower():
        return f"PostgreSQL: {first_line(exc)}: check sslmode= in {DSN_SETTING}"
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"PostgreSQL TLS: cannot read {exc.filename}: check {DSN_SETTING}"
    return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_kafka_failure(exc: BaseException) -> bool:
    return isinstance(exc, kafka_errors.KafkaError)


async def explain(exc: BaseException, settings: Settings, bootstrap: str | None) -> str | None:
    """The one line for ``exc`` if it is a refused connection, else None (a real bug: let the
    traceback through). For Kafka the cause is asked of the broker again, because aiokafka only
    logs it."""
    if isinstance(exc, ConfigurationError | ServiceUnavailable):
        return str(exc)
    line = postgres_line(exc)
    if line is not None:
        return line
    if bootstrap and is_kafka_failure(exc):
        try:
            await check_access(bootstrap, settings)
        except KafkaAccessError as refused:
            return str(refused)
        if not await kafka_answers(bootstrap):
            return (
                f"Kafka at {bootstrap} is unreachable ({first_line(exc)}): check "
                f"{BOOTSTRAP_SETTING}"
            )
        return None
    unreachable = (ConnectionError, socket.gaierror, TimeoutError, asyncpg.CannotConnectNowError)
    if isinstance(exc, unreachable) and settings.database_url:
        dsn = settings.database_url.get_secret_value()
        return (
            f"PostgreSQL at {dsn_address(dsn)} is unreachable ({first_line(exc)}): check "
            f"{DSN_SETTING}"
        )
    return None


async def kafka_answers(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """Whether any bootstrap server accepts a TCP connection."""
    for host, port in bootstrap_servers(bootstrap):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        except (OSError, TimeoutError):
            continue
        writer.close()
        return True
    return False


async def preflight(settings: Settings, *, bootstrap: str | None, dsn: str | None) -> None:
    """One handshake with each service before a worker starts: a refusal raises a
    :class:`ConfigurationError` at once instead of a crash loop inside faust."""
    if bootstrap:
        await check_access(bootstrap, settings)
    if dsn:
        try:
            conn = await asyncpg.connect(dsn, timeout=15)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            line = postgres_line(exc)
            if line is not None:
                raise DatabaseAccessError(line) from None
            return  # unreachable for now: the worker's own waits and retries handle that
        await conn.close(timeout=5)
