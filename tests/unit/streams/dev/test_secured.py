"""The secured dev services' configuration and certificates, without a JVM or a server."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from jobstream.streams.dev.secured import SCRAM, sasl_ssl_properties, scram_args
from jobstream.streams.dev.tls import issue, make_ca


def test_broker_listens_for_clients_on_tls_only(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    server = issue(ca, tmp_path, "broker")
    text = sasl_ssl_properties(
        29001, 29002, tmp_path / "data", server, ca.cert_file, "pw", 29003, {"app": "apppw"}
    )
    props = dict(line.split("=", 1) for line in text.splitlines())
    assert props["listeners"] == (
        "SASL_SSL://127.0.0.1:29001,SSL://127.0.0.1:29003,CONTROLLER://127.0.0.1:29002"
    )
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:29001,SSL://127.0.0.1:29003"
    assert props["listener.security.protocol.map"] == (
        "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL"
    )
    assert props["listener.name.ssl.ssl.client.auth"] == "required"
    assert props["sasl.enabled.mechanisms"] == f"{SCRAM},PLAIN"
    assert props["listener.name.sasl_ssl.plain.sasl.jaas.config"].endswith(
        'password="pw" user_app="apppw";'
    )
    assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PEM"
    assert props["ssl.keystore.location"] == str(server.keystore_file)
    assert (
        'username="admin" password="pw";'
        in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    )
    assert "PLAINTEXT://" not in text


def test_scram_users_for_the_storage_tool() -> None:
    assert scram_args({"app": "Secret1"}) == [
        "--add-scram",
        "SCRAM-SHA-512=[name=app,password=Secret1]",
    ]
    with pytest.raises(ValueError, match="must be alphanumeric"):
        scram_args({"app": "a,b]"})  # would break the tool's own parsing


def test_certificates_chain_to_their_ca_and_name_loopback(tmp_path: Path) -> None:
    ca, other = make_ca(tmp_path / "a"), make_ca(tmp_path / "b")
    server = issue(ca, tmp_path, "srv")
    cert = x509.load_pem_x509_certificate(server.cert_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert server.key_file.stat().st_mode & 0o077 == 0
    # the key belongs to the certificate, and the chain verifies against its CA only
    ssl.create_default_context().load_cert_chain(server.cert_file, server.key_file)
    cert.verify_directly_issued_by(ca.cert)
    with pytest.raises(InvalidSignature):
        cert.verify_directly_issued_by(other.cert)
