"""The fake OpenRouter alone: how many requests per second it answers on this machine.

An llm scenario's ceiling by Little's law (replicas x concurrency / 500 ms) assumes the upstream
keeps up; on two shared cores the fake server itself may not. This drives the same server
process, started the same way as for llm-500, from one aiohttp session at the same concurrency
with requests shaped like the ``llm.chat`` handler's (the same JSON body, headers and read of
the answer), so the lower of the two is the ceiling a jobstream replica is judged against.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from jobstream.streams.dev.bench.report import payload_for


@dataclass
class Driven:
    started: float
    finished: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)


def chat_request(i: int, model: str) -> dict[str, Any]:
    """The body ``OpenRouterClient.chat`` sends for the benchmark's i-th llm.chat job."""
    payload = payload_for("llm.chat", i)
    return {"model": model, "messages": payload["messages"], "max_tokens": payload["max_tokens"]}


class UpstreamClient:
    """One aiohttp session with a connection per lane, like a worker's session sized to its
    concurrency, kept across the warm-up and the timed part so that, as in llm-500, the timed
    requests do not pay for opening the connections."""

    def __init__(self, base_url: str, concurrency: int, *, model: str, api_key: str) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.concurrency = concurrency
        self.model = model
        self.headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "X-Title": "jobstream",
        }
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> UpstreamClient:
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=self.concurrency)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=110)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def drive(self, n: int) -> Driven:
        """Send ``n`` requests with at most ``concurrency`` in flight; epoch-second timestamps
        of the first request and the last answer."""
        session = self._session
        assert session is not None, "use UpstreamClient as an async context manager"
        out = Driven(started=time.time())
        todo = iter(range(n))

        async def one_lane() -> None:
            for i in todo:  # lanes share the iterator: each request is sent once
                t0 = time.perf_counter()
                body = chat_request(i, self.model)
                try:
                    async with session.post(self.url, json=body, headers=self.headers) as r:
                        await r.read()
                        out.statuses[str(r.status)] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    out.statuses[type(exc).__name__] += 1
                    continue
                out.latencies_ms.append((time.perf_counter() - t0) * 1000)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(self.concurrency, n)):
                group.create_task(one_lane())
        out.finished = time.time()
        return out
