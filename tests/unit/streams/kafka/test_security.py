"""Settings -> aiokafka keywords and faust credentials, for each protocol (no broker needed)."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from jobstream.models.errors import ConfigurationError
from jobstream.streams.dev.tls import issue, make_ca
from jobstream.streams.kafka.security import broker_credentials, client_options, describe
from jobstream.streams.settings import Settings

SECRET = "s3cret-value-for-tests"


def settings(**fields: Any) -> Settings:
    return Settings(_env_file=None, **fields)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    client = issue(ca, d, "client", hosts=("client.example",))
    return {"ca": ca.cert_file, "cert": client.cert_file, "key": client.key_file}


def test_plaintext_changes_nothing() -> None:
    s = settings()
    assert client_options(s) == {}
    assert broker_credentials(s) is None


def test_sasl_ssl_scram(tls_files: dict[str, Path]) -> None:
    s = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password=SECRET,
        kafka_ssl_cafile=tls_files["ca"],
    )
    opts = client_options(s)
    assert opts["security_protocol"] == "SASL_SSL"
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == ("svc", SECRET)
    ctx = opts["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.check_hostname

    creds = broker_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    # what faust's transport hands its own consumer and producers
    auth = credentials_to_aiokafka_auth(creds)
    assert {k: v for k, v in auth.items() if k != "ssl_context"} == {
        k: v for k, v in opts.items() if k != "ssl_context"
    }
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    assert SECRET not in repr(creds)
    assert SECRET not in describe(s)
    assert SECRET not in repr(s)


def test_sasl_plaintext_has_no_tls() -> None:
    s = settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="svc",
        kafka_sasl_password=SECRET,
    )
    assert "ssl_context" not in client_options(s)
    auth = credentials_to_aiokafka_auth(broker_credentials(s))
    assert auth["security_protocol"] == "SASL_PLAINTEXT"
    assert auth["ssl_context"] is None
    assert auth["sasl_mechanism"] == "PLAIN"


def test_mutual_tls(tls_files: dict[str, Path]) -> None:
    s = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=tls_files["ca"],
        kafka_ssl_certfile=tls_files["cert"],
        kafka_ssl_keyfile=tls_files["key"],
        kafka_ssl_check_hostname=False,
    )
    opts = client_options(s)
    assert opts["security_protocol"] == "SSL"
    assert "sasl_mechanism" not in opts
    assert opts["ssl_context"].check_hostname is False
    creds = broker_credentials(s)
    assert isinstance(creds, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(creds)["security_protocol"] == "SSL"


def test_a_key_that_does_not_load_names_the_settings(
    tls_files: dict[str, Path], tmp_path: Path
) -> None:
    other = issue(make_ca(tmp_path), tmp_path, "other")
    s = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_certfile=tls_files["cert"],
        kafka_ssl_keyfile=other.key_file,  # not the certificate's key
    )
    with pytest.raises(ConfigurationError, match="JOBSTREAM_KAFKA_SSL_KEYFILE"):
        client_options(s)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "JOBSTREAM_KAFKA_SASL_PASSWORD"),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u"},
            "JOBSTREAM_KAFKA_SASL_PASSWORD",
        ),
        ({"kafka_ssl_cafile": "/etc/hostname"}, "JOBSTREAM_KAFKA_SECURITY_PROTOCOL"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/no/such/ca.pem"},
            "JOBSTREAM_KAFKA_SSL_CAFILE",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "/etc/hostname"},
            "JOBSTREAM_KAFKA_SSL_CERTFILE",
        ),
    ],
    ids=["sasl-no-credentials", "sasl-no-password", "tls-file-no-tls", "missing-ca", "key-only"],
)
def test_settings_that_cannot_work_are_refused(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        client_options(settings(**fields))


def test_settings_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("JOBSTREAM_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("JOBSTREAM_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("JOBSTREAM_KAFKA_SASL_PASSWORD", SECRET)
    s = Settings()
    assert client_options(s)["sasl_mechanism"] == "SCRAM-SHA-256"
    assert SECRET not in repr(s)
    monkeypatch.setenv("JOBSTREAM_KAFKA_SASL_MECHANISM", "GSSAPI")
    with pytest.raises(ValueError, match="kafka_sasl_mechanism"):
        Settings()


def test_aiokafka_debug_lines_never_carry_the_sasl_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiokafka logs each request at DEBUG; SASL PLAIN sends the password in clear."""
    from aiokafka.protocol.admin import SaslAuthenticateRequest

    client_options(
        settings(
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_username="svc",
            kafka_sasl_password=SECRET,
        )
    )
    request = SaslAuthenticateRequest(f"\x00svc\x00{SECRET}".encode()).prepare({36: (0, 2)})
    assert SECRET in str(request)  # what aiokafka would print
    wire = logging.getLogger("aiokafka.conn")
    with caplog.at_level(logging.DEBUG, logger="aiokafka.conn"):
        wire.debug("Request to %s:%d %d: %s", "broker", 9092, 7, request)
    (record,) = caplog.records
    assert SECRET not in record.getMessage()
    assert record.getMessage() == "Request to broker:9092 7: SaslAuthenticateRequest_v1(<redacted>)"


def test_bootstrap_lists_are_split_like_kafka_does() -> None:
    from jobstream.streams.kafka.security import bootstrap_servers

    assert bootstrap_servers("a:1, b:2,") == [("a", 1), ("b", 2)]
    assert bootstrap_servers("broker") == [("broker", 9092)]
    assert bootstrap_servers("[::1]:9093") == [("::1", 9093)]
