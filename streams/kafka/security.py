"""Kafka TLS and SASL: the settings turned into what each kind of client takes.

Every Kafka client the project builds (the faust app, the publisher, admin clients, the DLQ tool,
``JobClient``, the benchmark) gets its security from here, so a managed cluster needs one set of
``JOBSTREAM_KAFKA_*`` variables and no client can be forgotten. aiokafka clients take keyword
arguments (:func:`client_options`); faust takes one credentials object (:func:`broker_credentials`)
and hands the same keywords to its own aiokafka consumer and producers.

A refused handshake reaches callers as aiokafka's ``KafkaConnectionError("Unable to bootstrap
...")``, which names neither the cause nor the setting. :func:`check_access` makes one connection
with the full handshake and turns what the broker or the TLS layer said into a
:class:`KafkaAccessError` whose message is one line naming the setting to fix (never its value).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import TYPE_CHECKING, Any

from aiokafka import errors as kafka_errors
from aiokafka.conn import create_conn
from aiokafka.helpers import create_ssl_context

from jobstream.models.errors import ConfigurationError

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

    from jobstream.streams.settings import Settings

ENV = "JOBSTREAM_"


class KafkaAccessError(ConfigurationError):
    """Raised when the broker or the TLS layer refuses the client: a security setting is wrong."""


class _RedactSaslBytes(logging.Filter):
    """aiokafka logs every request it sends at DEBUG, and a SASL PLAIN authenticate request
    carries the user name and password in clear: those records keep their line, not the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(map(_is_sasl_auth, record.args)):
            record.args = tuple(
                f"{type(a).__name__}(<redacted>)" if _is_sasl_auth(a) else a for a in record.args
            )
        return True


def _is_sasl_auth(value: object) -> bool:
    return type(value).__name__.startswith("SaslAuthenticate")


_REDACT = _RedactSaslBytes()


def _redact_sasl_in_logs() -> None:
    """Installed by the functions every SASL client's settings pass through, so no process can
    build one without it; adding the same filter twice is a no-op."""
    logging.getLogger("aiokafka.conn").addFilter(_REDACT)


def _uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def _uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def validate(settings: Settings) -> None:
    """Settings that cannot work together fail here, before any connection is tried."""
    s = settings
    if _uses_sasl(s) and not (s.kafka_sasl_username and s.kafka_sasl_password):
        raise ConfigurationError(
            f"{ENV}KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol} needs "
            f"{ENV}KAFKA_SASL_USERNAME and {ENV}KAFKA_SASL_PASSWORD"
        )
    tls_files = (s.kafka_ssl_cafile, s.kafka_ssl_certfile, s.kafka_ssl_keyfile)
    if not _uses_tls(s) and any(tls_files):
        raise ConfigurationError(
            f"{ENV}KAFKA_SSL_* files are set but {ENV}KAFKA_SECURITY_PROTOCOL="
            f"{s.kafka_security_protocol} does not use TLS (use SSL or SASL_SSL)"
        )
    if s.kafka_ssl_keyfile and not s.kafka_ssl_certfile:
        raise ConfigurationError(f"{ENV}KAFKA_SSL_KEYFILE is set without {ENV}KAFKA_SSL_CERTFILE")
    for name, path in (
        ("KAFKA_SSL_CAFILE", s.kafka_ssl_cafile),
        ("KAFKA_SSL_CERTFILE", s.kafka_ssl_certfile),
        ("KAFKA_SSL_KEYFILE", s.kafka_ssl_keyfile),
    ):
        if path is not None and not path.is_file():
            raise ConfigurationError(f"{ENV}{name}: no such file {path}")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The client's TLS context, or None when the protocol has no TLS."""
    validate(settings)
    if not _uses_tls(settings):
        return None
    s = settings
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=s.kafka_ssl_cafile,
            certfile=s.kafka_ssl_certfile,
            keyfile=s.kafka_ssl_keyfile,
            password=s.kafka_ssl_key_password.get_secret_value()
            if s.kafka_ssl_key_password
            else None,
        )
    except ssl.SSLError as exc:
        # a wrong key password and a key that does not match the certificate look alike here
        raise ConfigurationError(
            f"cannot load the Kafka client certificate or key ({exc.reason or exc}): check "
            f"{ENV}KAFKA_SSL_CERTFILE, {ENV}KAFKA_SSL_KEYFILE and {ENV}KAFKA_SSL_KEY_PASSWORD"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read a Kafka TLS file: {exc}") from None
    context.check_hostname = s.kafka_ssl_check_hostname
    return context


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer`` / ``AIOKafkaConsumer`` / ``AIOKafkaAdminClient``.

    Empty for PLAINTEXT, so a client built with ``**client_options(s)`` is exactly what it was
    before security existed.
    """
    validate(settings)
    s = settings
    if s.kafka_security_protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": s.kafka_security_protocol}
    context = ssl_context(s)
    if context is not None:
        options["ssl_context"] = context
    if _uses_sasl(s):
        assert s.kafka_sasl_password is not None  # validate() checked it
        _redact_sasl_in_logs()
        options |= {
            "sasl_mechanism": s.kafka_sasl_mechanism,
            "sasl_plain_username": s.kafka_sasl_username,
            "sasl_plain_password": s.kafka_sasl_password.get_secret_value(),
        }
    return options


def broker_credentials(settings: Settings) -> CredentialsT | None:
    """faust's ``broker_credentials``: faust's aiokafka transport turns these back into the same
    keywords as :func:`client_options` (``credentials_to_aiokafka_auth``) for its consumer and
    producers."""
    import faust

    validate(settings)
    s = settings
    if s.kafka_security_protocol == "PLAINTEXT":
        return None
    context = ssl_context(s)
    if not _uses_sasl(s):
        assert context is not None
        return faust.SSLCredentials(context)
    assert s.kafka_sasl_password is not None
    _redact_sasl_in_logs()
    # with an ssl_context faust selects SASL_SSL, without one SASL_PLAINTEXT
    return faust.SASLCredentials(
        username=s.kafka_sasl_username,
        password=s.kafka_sasl_password.get_secret_value(),
        ssl_context=context,
        mechanism=s.kafka_sasl_mechanism,
    )


def describe(settings: Settings) -> str:
    """How the client authenticates, for log lines and errors: never a secret."""
    s = settings
    if not _uses_sasl(s):
        return s.kafka_security_protocol
    sasl = f"SASL {s.kafka_sasl_mechanism} as user {s.kafka_sasl_username}"
    return f"{s.kafka_security_protocol}, {sasl}"


def bootstrap_servers(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port,[::1]:port,host`` -> (host, port) pairs; Kafka's default port when absent."""
    servers = []
    for item in filter(None, (part.strip() for part in bootstrap.split(","))):
        host, sep, port = item.rpartition(":")
        if not sep or (host.count(":") and not host.startswith("[")):  # no port / bare IPv6
            host, port = item, "9092"
        servers.append((host.strip("[]"), int(port)))
    return servers


def explain(exc: BaseException, settings: Settings, server: str) -> str | None:
    """One line for a handshake failure, naming the setting to fix; None if it is not one."""
    s = settings
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or "not trusted"
        if "hostname" in str(reason).lower() or "ip address mismatch" in str(reason).lower():
            return (
                f"Kafka TLS: the certificate of {server} does not name that host ({reason}): "
                f"connect by a name it lists, or set {ENV}KAFKA_SSL_CHECK_HOSTNAME=false"
            )
        ca = f"{ENV}KAFKA_SSL_CAFILE" + ("" if s.kafka_ssl_cafile else " (unset: system CAs)")
        return f"Kafka TLS: the certificate of {server} is not trusted ({reason}): check {ca}"
    if isinstance(exc, ssl.SSLError):
        hint = (
            f"{ENV}KAFKA_SSL_CERTFILE / {ENV}KAFKA_SSL_KEYFILE (the broker may require a client "
            "certificate)"
            if _uses_tls(s)
            else f"{ENV}KAFKA_SECURITY_PROTOCOL"
        )
        return f"Kafka TLS handshake with {server} failed ({exc.reason or exc}): check {hint}"
    if isinstance(
        exc, kafka_errors.SaslAuthenticationFailed | kafka_errors.AuthenticationFailedError
    ):
        return (
            f"Kafka authentication failed (SASL {s.kafka_sasl_mechanism} as user "
            f"{s.kafka_sasl_username}): check {ENV}KAFKA_SASL_PASSWORD and "
            f"{ENV}KAFKA_SASL_USERNAME"
        )
    if isinstance(exc, kafka_errors.UnsupportedSaslMechanismError):
        return (
            f"Kafka at {server} does not offer SASL {s.kafka_sasl_mechanism}: check "
            f"{ENV}KAFKA_SASL_MECHANISM"
        )
    if isinstance(exc, kafka_errors.IllegalSaslStateError | kafka_errors.KafkaConnectionError):
        # a TLS 1.3 server that wants a client certificate says so only after the handshake,
        # by closing the connection
        cert = (
            f", and set {ENV}KAFKA_SSL_CERTFILE / {ENV}KAFKA_SSL_KEYFILE if it requires a client "
            "certificate"
            if _uses_tls(s) and not s.kafka_ssl_certfile
            else ""
        )
        return (
            f"Kafka at {server} closed the connection during the handshake ({describe(s)}): "
            f"check {ENV}KAFKA_SECURITY_PROTOCOL matches the broker's listener{cert}"
        )
    if isinstance(exc, TimeoutError):
        return (
            f"Kafka at {server} did not answer the handshake ({describe(s)}): check "
            f"{ENV}KAFKA_SECURITY_PROTOCOL matches the broker's listener"
        )
    return None


async def check_access(bootstrap: str, settings: Settings, *, timeout_s: float = 10.0) -> None:
    """One connection with the whole handshake (TCP, TLS, SASL) to the bootstrap servers.

    Returns when one server accepts us. Raises :class:`KafkaAccessError` when a server refused the
    handshake itself (wrong password, untrusted certificate, wrong protocol); servers that cannot
    be reached at all are left to the caller's own error.
    """
    options = client_options(settings)
    refused: str | None = None
    for host, port in bootstrap_servers(bootstrap):
        conn = None
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host,
                    port,
                    client_id="jobstream-check",
                    request_timeout_ms=int(timeout_s * 1000),
                    **options,
                ),
                timeout_s,
            )
            return
        except OSError as exc:
            if isinstance(exc, ssl.SSLError):
                refused = refused or explain(exc, settings, f"{host}:{port}")
            continue  # unreachable: not a security problem
        except (kafka_errors.KafkaError, TimeoutError) as exc:
            refused = refused or explain(exc, settings, f"{host}:{port}")
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
    if refused is not None:
        raise KafkaAccessError(refused)
