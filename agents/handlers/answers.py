"""How a handler speaks of an upstream's answer in an error: what happened, never what it said.

An error message travels far: into the job's row and dead letter, the worker's log, Sentry. An
upstream that echoes its request (a webhook receiver that answers ``400: echo: {...}``, a model
API that quotes the prompt back) would carry the job's payload along with it, and a redirect's
``Location`` can hold tokens. So errors about an answer carry only its status, its size, its
content type when that is a plain media type, and a short hash of the body, which lets an
operator match two failures (or a body captured at the receiver) without reading the body.
"""

from __future__ import annotations

import hashlib
import re

HASH_CHARS = 12
"""Hex digits of sha256 kept: enough to tell bodies apart, far too few to guess one from."""
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")


def short_hash(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()[:HASH_CHARS]


def media_type(value: str | None) -> str:
    """The media type of a ``Content-Type`` value without its parameters, or a placeholder:
    the header is the upstream's text too, and only the plain ``type/subtype`` form is safe to
    repeat."""
    if not value:
        return "no content type"
    mime = value.split(";", 1)[0].strip().lower()
    return mime if _MEDIA_TYPE.fullmatch(mime) else "an unusual content type"


def describe_body(
    body: bytes, *, content_type: str | None, declared: int | None = None, cut: bool = False
) -> str:
    """``application/json, 523 bytes, sha256:1a2b3c4d5e6f`` for a body of which ``body`` was
    read; ``cut`` says the read stopped early (then the hash is of the part read)."""
    if declared is not None:
        size = f"{declared} bytes"
    elif cut:
        size = f"more than {len(body)} bytes"
    else:
        size = f"{len(body)} bytes"
    if not body:
        return f"{media_type(content_type)}, {size}"
    part = f"the first {len(body)} bytes' " if cut else ""
    return f"{media_type(content_type)}, {size}, {part}{short_hash(body)}"


def describe_error(exc: BaseException) -> str:
    """A client error's kind and, for a socket error, the system's words; never its text, which
    for aiohttp's errors holds the request URL."""
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return f"{type(exc).__name__} ({os_error.strerror})"
    return type(exc).__name__
