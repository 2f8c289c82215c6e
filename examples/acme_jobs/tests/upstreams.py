"""What Acme's handlers talk to, as real HTTP servers on 127.0.0.1, scripted per test.

- :class:`FakeOpenRouter` answers ``POST /chat/completions`` in OpenRouter's shape: the
  summary is the first words of the user's message (one word, one token), cut at
  ``max_tokens``; queued failures come first.
- :class:`Receivers` is any number of webhook receivers, one per path: each answers 200 after
  the statuses queued for it.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web

DROP = 0
"""A queued "status" that closes the connection without an answer."""


class LocalServer:
    """An aiohttp app on a free port of 127.0.0.1, for ``async with``."""

    def __init__(self) -> None:
        self.app = web.Application()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.host_port}{path}"

    async def __aenter__(self) -> Self:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass(frozen=True)
class ChatRequest:
    authorization: str
    body: dict[str, Any]


class FakeOpenRouter(LocalServer):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[ChatRequest] = []
        self._script: deque[tuple[int, dict[str, str]] | dict[str, Any]] = deque()
        self.app.router.add_post("/api/v1/chat/completions", self._chat)

    @property
    def base_url(self) -> str:
        return self.url("/api/v1")

    def fail(self, *statuses: int, retry_after: float | None = None) -> None:
        """The next requests get these statuses (:data:`DROP`: no answer at all)."""
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        self._script.extend((s, headers) for s in statuses)

    def answer_with(self, body: dict[str, Any]) -> None:
        """The next request gets this body with status 200."""
        self._script.append(body)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(ChatRequest(request.headers.get("Authorization", ""), body))
        scripted = self._script.popleft() if self._script else None
        if isinstance(scripted, dict):
            return web.json_response(scripted)
        if scripted is not None:
            status, headers = scripted
            if status == DROP:
                assert request.transport is not None
                request.transport.close()
                return web.Response()  # never sent: the connection is gone
            error = {"error": {"code": status, "message": f"scripted {status}"}}
            return web.json_response(error, status=status, headers=headers)
        prompt = body["messages"][-1]["content"].split()
        words = prompt[: body["max_tokens"]]
        return web.json_response(
            {
                "id": f"gen-{len(self.requests)}",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": " ".join(words)},
                        "finish_reason": "length" if len(prompt) > len(words) else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": len(prompt),
                    "completion_tokens": len(words),
                    "total_tokens": len(prompt) + len(words),
                },
            }
        )


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: Any


class Receivers(LocalServer):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[Received] = []
        self._script: defaultdict[str, deque[int]] = defaultdict(deque)
        self.app.router.add_route("*", "/{path:.*}", self._receive)

    def answer(self, path: str, *statuses: int) -> None:
        """The receiver at ``path`` answers these statuses first, then 200."""
        self._script[path].extend(statuses)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def _receive(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read() or b"null")
        self.received.append(Received(request.path, dict(request.headers), body))
        queued = self._script[request.path]
        status = queued.popleft() if queued else 200
        return web.json_response({"received": status == 200}, status=status)
