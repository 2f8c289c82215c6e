"""Job type ``http.webhook``: deliver a JSON body to a caller-chosen URL, without becoming an SSRF.

A producer picks the URL, so a worker inside the cluster must not be turned into a proxy to
its neighbours (metadata services, databases, admin ports). Every address the host resolves
to is checked, and the request then goes to the *checked* address: the URL's host is replaced
by the IP, the original name is sent in the ``Host`` header and, for https, used as the TLS
server name (SNI and certificate check). That closes the DNS-rebinding window between check
and connect while still using the shared ``ctx.http`` session (a custom resolver would need a
connector, hence a session, per job). aiohttp keys pooled connections by that server name, so
a TLS connection verified for one name is never reused for another on the same IP.

Decisions a caller may want to know:

* A host that does not exist (``EAI_NONAME``/``EAI_NODATA``) is fatal: a typo does not fix
  itself. Other resolver failures (``EAI_AGAIN``, server failure) are retried.
* Redirects are not followed: the new location would bypass the address check, and a webhook
  receiver that redirects is misconfigured; 3xx is fatal.
* An error names the receiver's host and says what its answer was (status, content type, size,
  a short hash of the body, see :mod:`jobstream.agents.handlers.answers`), never what it said
  nor where it redirected to, and never the URL's path, query or user: a receiver that echoes
  the request would otherwise put the payload into every report of the failure.
* 408 and 429 are retried (they say "later", not "never"); other 4xx are fatal.
* ``Idempotency-Key`` is the job id unless the payload sets it, so a receiver can drop the
  duplicates that at-least-once retries produce.
"""

from __future__ import annotations

import asyncio
import codecs
import ipaddress
import socket
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator
from yarl import URL

from jobstream.agents.handlers.addresses import is_forbidden_address
from jobstream.agents.handlers.answers import describe_body, describe_error, short_hash
from jobstream.agents.registry import JobContext
from jobstream.models.errors import FatalError, JobError, RetryableError

if TYPE_CHECKING:
    from collections.abc import Iterable

JOB_TIMEOUT_S = 75.0
"""Above the largest ``timeout_s`` (60) so the payload's own timeout is the one that fires."""
MAX_BODY_BYTES = 2048
MAX_ADDRESSES = 4
"""Addresses tried in turn when one refuses the connection (a dual-stack host, a dead node)."""
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_NO_SUCH_HOST = frozenset(
    code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None
)


class WebhookPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048)
    body: JsonValue = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    method: Literal["POST", "PUT"] = "POST"
    timeout_s: float = Field(default=10.0, ge=0.1, le=60)

    @field_validator("url")
    @classmethod
    def _http_only(cls, v: str) -> str:
        try:
            url = URL(v)
        except (TypeError, ValueError):
            raise ValueError("not a URL") from None
        if url.scheme not in ("http", "https"):
            raise ValueError("only http and https URLs are allowed")
        if not url.raw_host:
            raise ValueError("the URL has no host")
        return v

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, v: dict[str, str]) -> dict[str, str]:
        # the messages name no header of the payload's: only the fixed names of the worker's
        for name, value in v.items():
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {name.lower()} is set by the worker")
            if not name or any(c in name for c in " :\r\n\t") or any(c in value for c in "\r\n"):
                raise ValueError(
                    "a header name holds a space, colon or line break, or a value a line break"
                )
        return v


def is_allowed_host(host: str, port: int, allow: Iterable[str]) -> bool:
    """Whether ``host`` or ``host:port`` (``[v6]:port`` for IPv6) is in the allow list."""
    host = host.lower().rstrip(".")
    names = {host, f"{host}:{port}"}
    if ":" in host:
        names |= {f"[{host}]", f"[{host}]:{port}"}
    return any(entry.strip().lower() in names for entry in allow)


def dns_error(host: str, exc: socket.gaierror) -> JobError:
    """Fatal when the name does not exist, retryable when the resolver itself had trouble."""
    if exc.errno in _NO_SUCH_HOST:
        return FatalError(f"webhook host {host!r} does not exist ({exc.strerror})")
    return RetryableError(f"could not resolve webhook host {host!r}: {exc.strerror or exc}")


async def resolve_checked(host: str, port: int, allow: Iterable[str]) -> list[str]:
    """Resolve ``host`` on the loop's executor and refuse it if any address is not public.

    Refusing when *any* address is internal (not only the first) matters: the connection may
    fall through to the next address, and a name mixing public and internal records is the
    classic way around a check of the first one only.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except socket.gaierror as exc:
        raise dns_error(host, exc) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise FatalError(f"webhook host {host!r} has no address")
    if is_allowed_host(host, port, allow):
        return addresses
    for address in addresses:
        if is_forbidden_address(ipaddress.ip_address(address)):
            raise FatalError(
                f"webhook host {host!r} resolves to {address}, which is not a public address;"
                " add it to webhook_allow_hosts to allow it"
            )
    return addresses


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _read_prefix(resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """The first 2 KiB of the body, and whether there was more; the rest is never read."""
    data = bytearray()
    while len(data) < MAX_BODY_BYTES:
        chunk = await resp.content.read(MAX_BODY_BYTES - len(data))
        if not chunk:
            return bytes(data), False
        data += chunk
    return bytes(data), not resp.content.at_eof()


def _text(resp: aiohttp.ClientResponse, data: bytes) -> str:
    charset = resp.charset or "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    return data.decode(charset, errors="replace")


def _error_for_status(
    status: int, where: str, resp: aiohttp.ClientResponse, body: bytes, cut: bool
) -> JobError:
    answer = describe_body(
        body, content_type=resp.headers.get("Content-Type"), declared=resp.content_length, cut=cut
    )
    if 300 <= status < 400:
        location = resp.headers.get("Location")
        target = f"Location {short_hash(location.encode())}" if location else "no Location"
        return FatalError(
            f"webhook {where} answered {status}, a redirect ({target}); redirects are not"
            " followed because the new target would skip the address check"
        )
    message = f"webhook {where} answered {status} ({answer})"
    if status >= 500 or status in (408, 429):
        return RetryableError(message)
    return FatalError(message)


async def deliver(
    http: aiohttp.ClientSession,
    payload: WebhookPayload,
    *,
    allow_hosts: Iterable[str] = (),
    job_id: str | None = None,
) -> dict[str, Any]:
    """Send the webhook to a checked address and map the answer onto the error tree."""
    url = URL(payload.url)
    host = url.raw_host or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    headers = {"User-Agent": "jobstream-webhook/1", **payload.headers}
    if job_id is not None and not any(k.lower() == "idempotency-key" for k in headers):
        headers["Idempotency-Key"] = job_id
    headers["Host"] = url.host_port_subcomponent or host
    where = repr(headers["Host"])
    server_hostname = host.rstrip(".") if url.scheme == "https" and not _is_ip(host) else None
    try:
        async with asyncio.timeout(payload.timeout_s):
            addresses = await resolve_checked(host, port, allow_hosts)
            last_error: Exception | None = None
            for address in addresses[:MAX_ADDRESSES]:
                try:
                    async with http.request(
                        payload.method,
                        url.with_host(address),
                        json=payload.body,
                        headers=headers,
                        server_hostname=server_hostname,
                        allow_redirects=False,
                        raise_for_status=False,
                        timeout=aiohttp.ClientTimeout(total=payload.timeout_s),
                    ) as resp:
                        body, cut = await _read_prefix(resp)
                        if 200 <= resp.status < 300:
                            return {"status": resp.status, "body": _text(resp, body)}
                        raise _error_for_status(resp.status, where, resp, body, cut)
                except aiohttp.ClientConnectorError as exc:
                    last_error = exc  # refused or unreachable: try the next address
            reason = describe_error(last_error) if last_error is not None else "no address"
            raise RetryableError(f"could not connect to webhook host {host!r}: {reason}")
    except TimeoutError:
        raise RetryableError(
            f"webhook {host!r} did not answer within {payload.timeout_s}s"
        ) from None
    except aiohttp.ClientError as exc:
        # from None: the chained exception's text names the whole URL
        raise RetryableError(f"webhook request to {where} failed: {describe_error(exc)}") from None


async def handle_webhook(payload: WebhookPayload, ctx: JobContext[None]) -> dict[str, Any]:
    return await deliver(
        ctx.http, payload, allow_hosts=ctx.settings.webhook_allow_hosts, job_id=ctx.job.id
    )
