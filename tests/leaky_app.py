"""A team's app for the scrubbing tests: a handler that quotes its payload everywhere it can.

``leaky`` puts pieces of its payload (slices, truncations, URL parts; plain, JSON, ``repr``,
bytes, percent-encoded, as its recipe of numbers says) into log lines, a logged traceback, a
chained cause and the exception it fails with. ``note`` runs anything quickly (the fuzz tests'
worker runs this app, so no job can call out). Used in process by ``jobstream.testing`` and by
real workers started with ``JOBSTREAM_APP=tests.leaky_app:app``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

from pydantic import BaseModel, ConfigDict
from yarl import URL

from jobstream import FatalError, JobApp, JobContext, RetryableError

log = logging.getLogger("tests.leaky_app")
app: JobApp[None] = JobApp("leaky")


class Leaky(BaseModel):
    """Secrets, and (as numbers only) what to do with them."""

    texts: list[str]
    url: str
    quotes: list[tuple[int, int, int, int]]  # (which part, which spelling, start, stop)
    failure: int


class HandlerBug(Exception):
    """An exception class of the handler's own (not the job error tree)."""


def part(payload: Leaky, what: int, start: int, stop: int) -> str:
    """A piece of the payload: a slice or truncation of a text, or a part of the URL."""
    url = URL(payload.url)
    parts = [
        *payload.texts,
        payload.url,
        url.path,
        url.raw_path,
        url.query_string,
        url.raw_query_string,
        url.user or "",
        url.password or "",
        str(url.with_user(None)),
        str(url.with_query(None)),
    ]
    text = parts[what % len(parts)]
    if stop % 3 == 0:
        return text[: max(start % (len(text) + 1), 8)]  # a truncation, as text[:200] does
    begin = start % (len(text) + 1)
    return text[begin : begin + max(stop, 8)]


SPELLINGS: list[Callable[[str], str]] = [
    lambda s: s,
    json.dumps,
    lambda s: json.dumps(s, ensure_ascii=False),
    repr,
    ascii,
    lambda s: repr(s.encode()),
    lambda s: quote(s, safe=""),
    quote_plus,
    lambda s: json.dumps({"echo": s}),
    lambda s: repr(json.dumps(s)),
]


@app.job("leaky", max_attempts=2, timeout_s=5, fatal=(HandlerBug,))
async def leaky(payload: Leaky, ctx: JobContext[None]) -> None:
    pieces = [
        SPELLINGS[how % len(SPELLINGS)](part(payload, what, a, b))
        for what, how, a, b in payload.quotes
    ]
    message = "upstream said: " + " | ".join(pieces)
    log.info("calling with %s", pieces[0])  # a breadcrumb and a log line
    log.warning("attempt %d failed: %s", ctx.attempt, message)
    try:
        raise ValueError(pieces[-1])
    except ValueError:
        log.exception("the client raised")  # a traceback in the log
        cause = ValueError(message[::-1][:50] + pieces[-1])
    failure = payload.failure % 3
    if failure == 0:
        raise FatalError(message) from cause
    if failure == 1:
        raise RetryableError(message) from cause
    raise HandlerBug(message) from cause


class Note(BaseModel):
    model_config = ConfigDict(extra="allow")


@app.job("note", timeout_s=1)
async def note(payload: Note, ctx: JobContext[None]) -> dict[str, Any]:
    return {"fields": len(payload.model_dump())}
