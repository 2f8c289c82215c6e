"""The one place jobstream builds and starts an HTTP server, with the read limits aiohttp lacks.

aiohttp's server has no deadline for *receiving* a request: a client that sends its headers a
byte at a time, or its headers and one byte of a declared 1,000-byte body, holds a connection
(and a handler waiting on the body) for as long as it likes; a few hundred such clients starve
a replica (slowloris). aiohttp's only timer is the keep-alive one, which closes connections
idle *between* requests. Neither aiohttp nor any well-kept add-on supplies read deadlines for
it (the timeouts of gunicorn or uvicorn belong to their own servers, not to aiohttp's
protocol), so they are written here, in a subclass of aiohttp's request handler where the
bytes arrive:

* **Header deadline.** From a connection's opening, or from the first byte of a later request
  on a kept-alive connection, the request line and headers must arrive within
  ``header_timeout_s``; otherwise the connection is closed.
* **Body deadline.** From the end of the headers, the whole body must arrive within
  ``body_timeout_s``. Then the body stream fails with :class:`RequestBodyTimeout`, which a
  middleware answers with 408 (handlers may answer it themselves), and the connection is
  closed once the answer is out (at most :data:`ANSWER_GRACE_S` later).
* **Connection cap.** Past ``max_connections`` open connections a new one is answered 503
  and closed at once, so the connections already admitted keep being served.
* **Keep-alive.** Idle connections close after ``keepalive_timeout_s`` (aiohttp's own timer).

A client that goes away mid-body is not an error of the server: the middleware answers it with
:data:`CLIENT_CLOSED` (nginx's 499, which the client never sees) and logs at DEBUG, instead of
aiohttp's 500 with an ERROR traceback.

A request aiohttp cannot parse (a control byte in a header, a broken chunk, a request line that
is not HTTP) is the client's fault, and its bytes may hold a token or a payload. aiohttp logs
each at ERROR with a traceback that quotes the offending line, and answers a page that quotes it
again; here it is answered ``400 {"error": "bad_request", ...}`` that quotes nothing, and counted
into the same rate-limited WARNING line as the connections cut off, which names no byte of it.
A broken chunk that arrives while a handler is reading the body fails that read (a
:class:`MalformedRequestBody`, which is aiohttp's ``RequestPayloadError``), instead of leaving it
waiting until the body deadline.

Start every production server with :func:`start_http_server`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from yarl import URL

if TYPE_CHECKING:
    from aiohttp.streams import StreamReader

    from jobstream.streams.settings import Settings

log = logging.getLogger(__name__)

CLIENT_CLOSED = 499
"""Status recorded for a request whose client closed the connection before it was answered
(the code nginx uses); it only ever appears in metrics and logs, never on the wire."""
ANSWER_GRACE_S = 1.0
"""After a body deadline, how long a handler has to send its 408 before the connection is
closed regardless (a handler that ignores the failed read cannot keep the connection)."""
REPORT_EVERY_S = 60.0
"""Refused, timed-out and malformed requests are summed into one WARNING line at most this
often: an attack of thousands of connections must not become thousands of log lines."""
BAD_REQUEST_BODY = (
    b'{"error": "bad_request", "detail": "the request is not valid HTTP/1.1; it was not read"}'
)
Cut = Literal["refused", "header_timeout", "body_timeout", "malformed"]

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: 25\r\n"
    b"\r\n"
    b"too many open connections"
)


class MalformedRequestBody(web.RequestPayloadError):
    """Raised from a request body read when the rest of the body could not be parsed (a broken
    chunk); the handler answers it like any unreadable body, with a 400."""


class RequestBodyTimeout(TimeoutError):
    """Raised from a request body read when the body did not arrive within the body timeout.

    A ``TimeoutError`` so that aiohttp's own read of a body its handler left unread (its
    "lingering close") ends quietly instead of logging an unhandled exception.
    """


@dataclass(frozen=True)
class HttpLimits:
    """The limits one server enforces; :meth:`from_settings` gives the configured ones."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 15.0
    keepalive_timeout_s: float = 75.0
    max_connections: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            header_timeout_s=settings.http_header_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
            keepalive_timeout_s=settings.http_keepalive_timeout_s,
            max_connections=settings.http_max_connections,
        )


async def start_http_server(
    app: web.Application,
    *,
    host: str,
    port: int,
    limits: HttpLimits,
    shutdown_timeout_s: float = 60.0,
) -> web.AppRunner:
    """Serves ``app`` on ``host:port`` (port 0 picks a free one) under ``limits``.

    Returns the started runner: ``runner.addresses`` lists the bound sockets and
    ``await runner.cleanup()`` stops accepting, lets in-flight requests finish for up to
    ``shutdown_timeout_s`` and closes the rest. ``app`` must not be started yet: the
    middleware that answers body timeouts and client disconnects is put in front of its own.
    """
    app.middlewares.insert(0, _request_read_failures)
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=limits.keepalive_timeout_s,
        shutdown_timeout=shutdown_timeout_s,
    )
    await runner.setup()
    try:
        await _GuardedSite(runner, host, port, _Guard(limits)).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def client_gone(request: web.BaseRequest) -> bool:
    """True when the request's connection is closed or closing (the client left)."""
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def _request_read_failures(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestBodyTimeout:
        return web.Response(status=408, text="the request body did not arrive in time\n")
    except ConnectionResetError:
        if not client_gone(request):
            raise  # a connection of the handler's own failed: a real server error
        log.debug("%s %s: the client closed the connection", request.method, request.path)
        return web.Response(status=CLIENT_CLOSED)


class _Guard:
    """State shared by one server's connections: the open count and what was cut off."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.open = 0
        self._counts: dict[Cut, int] = dict.fromkeys(
            ("refused", "header_timeout", "body_timeout", "malformed"), 0
        )
        self._reported_at = time.monotonic() - REPORT_EVERY_S

    def admit(self) -> bool:
        if self.open >= self.limits.max_connections:
            self.note("refused")
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1

    def note(self, what: Cut) -> None:
        self._counts[what] += 1
        now = time.monotonic()
        if now - self._reported_at < REPORT_EVERY_S:
            return
        self._reported_at = now
        summary = ", ".join(f"{n} {what}" for what, n in self._counts.items() if n)
        self._counts = dict.fromkeys(self._counts, 0)
        log.warning(
            "HTTP requests refused or cut off (since the last report): %s; limits: headers %ss,"
            " body %ss, %d connections",
            summary,
            self.limits.header_timeout_s,
            self.limits.body_timeout_s,
            self.limits.max_connections,
        )


class _GuardedRequestHandler(RequestHandler):
    """aiohttp's protocol plus the deadlines of the module docstring.

    One timer per connection, in one of three phases: ``header`` (armed on opening and on the
    first byte of a later request), ``body`` (armed when the headers are parsed and the body
    is not complete; disarmed by the body's EOF) and ``close`` (the grace after a body
    deadline). It reads aiohttp's queue of parsed requests (``_messages``) to see headers
    complete; the unit tests exercise every phase, so an aiohttp change that breaks this fails
    them. Not covered: partial headers that arrive in the same read as the end of the request
    before them (pipelining) are not seen as a new request, so only aiohttp's keep-alive
    timeout bounds them.
    """

    __slots__ = ("_admitted", "_body", "_due", "_guard", "_phase", "_timer", "_watching")

    def __init__(self, manager: web.Server, *, guard: _Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._admitted = False
        self._timer: asyncio.TimerHandle | None = None
        self._due: float | None = None  # when the armed phase expires; None: nothing armed
        self._phase: Literal["header", "body", "close"] = "header"
        self._body: StreamReader | None = None
        self._watching = True  # False once a connection asks to upgrade (WebSocket)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit():
            assert isinstance(transport, asyncio.Transport)
            transport.write(_BUSY)
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._arm("header", self._guard.limits.header_timeout_s)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._body = None
        self._guard.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if data and self._watching and self._due is None:
            self._arm("header", self._guard.limits.header_timeout_s)  # a new request begins
        parsed = len(self._messages)
        super().data_received(data)
        if len(self._messages) <= parsed or not self._watching:
            return
        # headers complete: only the newest request's body can still be arriving
        message, payload = self._messages[-1]
        body = self._body
        if isinstance(message, _ErrInfo) and body is not None and not body.is_eof():
            # the parser failed inside the body being read: fail the read, not just the next
            # request, or the handler would wait for the rest until the body deadline
            self._body = None
            body.set_exception(MalformedRequestBody("the request body is malformed"))
        self._disarm()
        if getattr(message, "upgrade", False):
            self._watching = False  # a WebSocket's frames are not a request body
        elif not payload.is_eof():
            self._body = payload
            self._arm("body", self._guard.limits.body_timeout_s)
            payload.on_eof(self._body_complete)

    def _body_complete(self) -> None:
        if self._phase == "body":
            self._disarm()
        self._body = None

    def _arm(self, phase: Literal["header", "body", "close"], delay: float) -> None:
        # one lazy timer per connection: arming moves the due time, and a timer that fires
        # early re-arms itself, so a busy keep-alive connection does not schedule and cancel
        # a timer for every request (what aiohttp's keep-alive timer does too)
        self._phase = phase
        due = self._loop.time() + delay
        self._due = due
        if self._timer is not None and self._timer.when() <= due:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(due, self._expired)

    def _disarm(self) -> None:
        self._due = None

    def _expired(self) -> None:
        self._timer = None
        if self._due is None:
            return
        if self._loop.time() < self._due:
            self._timer = self._loop.call_at(self._due, self._expired)
            return
        self._due = None
        body = self._body
        if self._phase == "body" and body is not None and not body.is_eof():
            self._guard.note("body_timeout")
            log.debug("closing a connection whose request body did not arrive in time")
            self._body = None
            body.set_exception(RequestBodyTimeout("the request body did not arrive in time"))
            self.close()  # no further requests on this connection: its stream is unusable
            self._arm("close", ANSWER_GRACE_S)
            return
        if self._phase == "header":
            self._guard.note("header_timeout")
            log.debug("closing a connection whose request headers did not arrive in time")
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (400) or whose handler failed (500)
        or timed out (504). Only the first is the client's: it costs a count in the rate-limited
        report, a DEBUG line naming the error's class, and a JSON 400 that quotes nothing."""
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        self._guard.note("malformed")
        log.debug("refused a malformed HTTP request: %s", type(exc).__name__ if exc else status)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already started; the connection is closed")
        response = web.Response(
            status=status, body=BAD_REQUEST_BODY, content_type="application/json"
        )
        response.force_close()
        return response


class _GuardedSite(web.BaseSite):
    """A TCP site whose connections use :class:`_GuardedRequestHandler` (aiohttp's TCPSite
    always builds its stock handler)."""

    __slots__ = ("_guard", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: _Guard) -> None:
        # a backlog as deep as the cap, so a burst of connects is accepted (and judged) at
        # once instead of waiting in SYN retries; 4096 is Linux's default somaxconn
        backlog = max(128, min(guard.limits.max_connections, 4096))
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._guard = guard

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host, port=self._port))

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        # the same keyword arguments aiohttp's Server.__call__ gives its handler
        kwargs = dict(server._kwargs)

        def protocol() -> _GuardedRequestHandler:
            return _GuardedRequestHandler(server, guard=self._guard, loop=loop, **kwargs)

        self._server = await loop.create_server(
            protocol, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
