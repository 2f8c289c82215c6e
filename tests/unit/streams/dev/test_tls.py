"""The dev stack's certificates pass a strict X.509 verifier on every supported Python.

Python 3.13's default context sets ``VERIFY_X509_STRICT`` and refuses a CA without a key usage
extension; the tests set the flag themselves, so 3.11 and 3.12 check the same.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from jobstream.streams.dev.tls import ServerCert, issue, make_ca


async def _handshake(server: ServerCert, ca_file: Path, host: str) -> str:
    """A real TLS handshake on loopback; the version agreed, or the verifier's refusal."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(server.cert_file, server.key_file)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    listener = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ctx)
    port = listener.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(ca_file))
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname=host
        )
        version = writer.get_extra_info("ssl_object").version()
        writer.close()
        return str(version)
    finally:
        listener.close()
        await listener.wait_closed()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_strict_client_accepts_the_server_for_each_name(tmp_path: Path, host: str) -> None:
    ca = make_ca(tmp_path / "ca")
    server = issue(ca, tmp_path, "srv")
    assert await _handshake(server, ca.cert_file, host) in {"TLSv1.2", "TLSv1.3"}


async def test_a_strict_client_still_refuses_another_ca_and_another_name(tmp_path: Path) -> None:
    ca, other = make_ca(tmp_path / "a"), make_ca(tmp_path / "b", "a CA nobody trusts")
    server = issue(ca, tmp_path, "srv")
    with pytest.raises(
        ssl.SSLCertVerificationError, match="self-signed certificate in certificate chain"
    ):
        await _handshake(server, other.cert_file, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        await _handshake(server, ca.cert_file, "example.org")
