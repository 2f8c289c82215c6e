"""Throw-away certificates for the secured dev services: a CA and server certificates it signs.

Tests of TLS need a CA the client trusts and one it does not, and a server certificate that
names 127.0.0.1 (clients verify the host as well as the signature). Made with ``cryptography``
(a test dependency), written as PEM: PostgreSQL reads PEM, and so does Kafka 4 with
``ssl.keystore.type=PEM`` (an unencrypted PKCS#8 key and its chain in one file). Each carries
the extensions RFC 5280 asks for (key usage, key identifiers), which a strict verifier (Python
3.13's default context, ``VERIFY_X509_STRICT``) refuses to do without.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
VALID_FOR = dt.timedelta(days=2)


@dataclass(frozen=True)
class CertificateAuthority:
    cert_file: Path
    key: rsa.RSAPrivateKey
    cert: x509.Certificate


@dataclass(frozen=True)
class ServerCert:
    cert_file: Path  # the certificate followed by the CA's
    key_file: Path  # unencrypted PKCS#8
    keystore_file: Path  # key + chain in one file (Kafka's PEM keystore)


_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
# an RSA key signs the handshake (TLS 1.3, ECDHE) or, in TLS 1.2's RSA key exchange, encrypts it
_SERVER_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
# servers that also connect to themselves (Kafka's inter-broker link) are clients too
_SERVER_USAGE = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jobstream dev"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def make_ca(directory: Path, name: str = "jobstream dev CA") -> CertificateAuthority:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    cert_file = _write(directory / "ca.pem", _pem(cert))
    return CertificateAuthority(cert_file=cert_file, key=key, cert=cert)


def issue(
    ca: CertificateAuthority,
    directory: Path,
    name: str,
    hosts: Sequence[str] = DEFAULT_HOSTS,
) -> ServerCert:
    """A server certificate for ``hosts`` (IP addresses and DNS names), signed by ``ca``."""
    key = _key()
    now = dt.datetime.now(dt.UTC)
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(_SERVER_KEY_USAGE, critical=True)
        .add_extension(_SERVER_USAGE, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
        .sign(ca.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    chain = _pem(cert) + _pem(ca.cert)
    return ServerCert(
        cert_file=_write(directory / f"{name}.crt", chain),
        key_file=_write(directory / f"{name}.key", key_pem, 0o600),
        keystore_file=_write(directory / f"{name}.keystore.pem", key_pem + chain, 0o600),
    )
