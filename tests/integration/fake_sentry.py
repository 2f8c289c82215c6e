"""A Sentry ingestion endpoint on 127.0.0.1 that keeps what it receives, for assertions.

It accepts what sentry-sdk sends: envelopes on ``POST /api/<project>/envelope/`` and legacy
events on ``POST /api/<project>/store/``, gzip- or deflate-compressed or plain. Every
body is kept decompressed (``bodies``) so a test can assert that a marker is in no byte at all.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Item:
    type: str
    headers: dict[str, Any]
    payload: bytes

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Envelope:
    project: str
    headers: dict[str, Any]
    items: list[Item] = field(default_factory=list)


def parse_envelope(project: str, body: bytes) -> Envelope:
    """Sentry's envelope format: a JSON header line, then per item a JSON header line and a
    payload of ``length`` bytes (or up to the next newline when the header has no length)."""
    header, _, rest = body.partition(b"\n")
    envelope = Envelope(project=project, headers=json.loads(header) if header.strip() else {})
    while rest:
        line, _, rest = rest.partition(b"\n")
        if not line.strip():
            continue
        item_headers = json.loads(line)
        length = item_headers.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length:]
            if rest.startswith(b"\n"):
                rest = rest[1:]
        envelope.items.append(Item(str(item_headers.get("type")), item_headers, payload))
    return envelope


def decompress(body: bytes, encoding: str) -> bytes:
    """aiohttp already undoes ``Content-Encoding`` while reading; this covers a body that is
    still compressed (a client that compressed without saying so)."""
    if body[:2] == b"\x1f\x8b":
        return gzip.decompress(body)
    if encoding.lower().strip() == "deflate" and body[:1] == b"\x78":
        return zlib.decompress(body)
    return body


class FakeSentry:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.bodies: list[bytes] = []  # every request body, decompressed
        self.auth_headers: list[str] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- what was received ------------------------------------------------------------------

    def items(self, type: str) -> list[Item]:
        return [i for e in self.envelopes for i in e.items if i.type == type]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Error events (store requests are recorded as envelopes with one event item)."""
        return [i.json() for i in self.items("event")]

    @property
    def transactions(self) -> list[dict[str, Any]]:
        return [i.json() for i in self.items("transaction")]

    @property
    def logs(self) -> list[dict[str, Any]]:
        return [log for i in self.items("log") for log in i.json().get("items", [])]

    def events_tagged(self, tag: str, value: str) -> list[dict[str, Any]]:
        return [e for e in self.events if tags_of(e).get(tag) == value]

    def contains(self, needle: str) -> bool:
        """Whether ``needle`` is in any byte received (as UTF-8, or JSON-escaped)."""
        forms = {needle.encode(), json.dumps(needle)[1:-1].encode()}
        return any(f in body for body in self.bodies for f in forms)

    def clear(self) -> None:
        self.envelopes.clear()
        self.bodies.clear()

    # -- the server -------------------------------------------------------------------------

    def dsn(self, key: str = "fakepublickey", project: str = "1") -> str:
        return f"http://{key}@127.0.0.1:{self.port}/{project}"

    async def _receive(self, request: web.Request) -> bytes:
        body = decompress(await request.read(), request.headers.get("Content-Encoding", ""))
        self.bodies.append(body)
        self.auth_headers.append(request.headers.get("X-Sentry-Auth", ""))
        return body

    async def _envelope(self, request: web.Request) -> web.Response:
        body = await self._receive(request)
        self.envelopes.append(parse_envelope(request.match_info["project"], body))
        return web.json_response({})

    async def _store(self, request: web.Request) -> web.Response:
        body = await self._receive(request)
        event = Item("event", {"type": "event"}, body)
        self.envelopes.append(Envelope(request.match_info["project"], {}, [event]))
        return web.json_response({"id": json.loads(body).get("event_id")})

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeSentry:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_post("/api/{project}/envelope/", self._envelope)
        app.router.add_post("/api/{project}/store/", self._store)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def tags_of(event: dict[str, Any]) -> dict[str, Any]:
    """Sentry sends tags as a mapping or as a list of pairs."""
    tags = event.get("tags") or {}
    if isinstance(tags, list):
        return {k: v for k, v in tags}
    return dict(tags)
