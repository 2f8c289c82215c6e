"""Who may use the console: token login, signed session cookies, roles and CSRF.

The rule (also in the README):

* A viewer or operator token is configured (``JOBSTREAM_CONSOLE_VIEWER_TOKEN`` /
  ``JOBSTREAM_CONSOLE_OPERATOR_TOKEN``): every page and API call needs a session, obtained by
  logging in with one of the tokens; the token decides the role.
* No token, ``JOBSTREAM_CONSOLE_DEV_OPEN=true`` and the console bound to a loopback address
  (127.0.0.1, ::1, localhost): development mode, everyone who can reach it is an operator.
* Otherwise access is off: ``jobstream console`` refuses to start and a mounted console
  answers 403 to everything.

Sessions are stateless, signed with itsdangerous (HMAC-SHA1 over the payload, with a salt)
using ``JOBSTREAM_CONSOLE_SECRET_KEY`` or a random key per process (then a restart logs
everyone out). A session carries a fingerprint of the token it was opened with, so rotating
a token ends the sessions opened with the old one. Every state-changing request must carry
the session's CSRF token (``X-CSRF-Token`` header or a ``csrf`` form field); the cookie is
also ``SameSite=Strict`` and ``HttpOnly``.

The cookie is ``Secure`` when the request came over TLS, when
``JOBSTREAM_CONSOLE_SECURE_COOKIES`` says the console is only reached over HTTPS, or when a
TLS-terminating proxy says so: ``X-Forwarded-Proto: https`` from an address in
``JOBSTREAM_CONSOLE_TRUSTED_PROXIES`` (from anyone else the header is ignored, as a client can
send it too).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from aiohttp import web
from aiohttp.web_request import FileField
from itsdangerous import BadSignature, URLSafeTimedSerializer
from multidict import MultiDictProxy

from jobstream.streams.settings import Settings

COOKIE = "jobstream_console"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"


class Mode(StrEnum):
    TOKENS = "tokens"
    DEV_OPEN = "dev-open"
    OFF = "off"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_mode(settings: Settings, host: str) -> Mode:
    """The rule in the module docstring; ``host`` is the address the console listens on."""
    if settings.console_viewer_token or settings.console_operator_token:
        return Mode.TOKENS
    if settings.console_dev_open and is_loopback(host):
        return Mode.DEV_OPEN
    return Mode.OFF


OFF_MESSAGE = (
    "console access is off: set JOBSTREAM_CONSOLE_VIEWER_TOKEN and/or "
    "JOBSTREAM_CONSOLE_OPERATOR_TOKEN (or JOBSTREAM_CONSOLE_DEV_OPEN=true on 127.0.0.1)"
)
MIN_TOKEN_LENGTH = 16
"""A token is the whole credential: short ones could be guessed, so the console refuses them."""
MAX_FAILED_LOGINS = 10
FAILED_LOGIN_WINDOW_S = 60.0


def _networks(entries: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for entry in entries:
        with contextlib.suppress(ValueError):  # refusal() names it, and the console does not start
            nets.append(ipaddress.ip_network(entry.strip(), strict=False))
    return nets


def refusal(settings: Settings, host: str) -> str | None:
    """Why the console must not serve at all with these settings, or None."""
    if access_mode(settings, host) is Mode.OFF:
        return OFF_MESSAGE
    for entry in settings.console_trusted_proxies:
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            return (
                f"JOBSTREAM_CONSOLE_TRUSTED_PROXIES: {entry!r} is not an address or network"
                " (e.g. 10.0.0.5 or 10.0.0.0/8)"
            )
    for name in ("console_viewer_token", "console_operator_token"):
        token = getattr(settings, name)
        if token is not None and len(token.get_secret_value().strip()) < MIN_TOKEN_LENGTH:
            return (
                f"JOBSTREAM_{name.upper()} is shorter than {MIN_TOKEN_LENGTH} characters;"
                " use a random one, e.g. python -c 'import secrets; print(secrets.token_urlsafe())'"
            )
    return None


class LoginThrottle:
    """At most :data:`MAX_FAILED_LOGINS` wrong tokens per address per window, so tokens
    cannot be guessed at network speed."""

    def __init__(self) -> None:
        self._failures: dict[str, list[float]] = {}

    def _recent(self, who: str, now: float) -> list[float]:
        kept = [t for t in self._failures.get(who, ()) if now - t < FAILED_LOGIN_WINDOW_S]
        if kept:
            self._failures[who] = kept
        else:
            self._failures.pop(who, None)
        return kept

    def wait_s(self, who: str) -> float:
        """Seconds until ``who`` may try again; 0 when it may now."""
        now = time.monotonic()
        recent = self._recent(who, now)
        if len(recent) < MAX_FAILED_LOGINS:
            return 0.0
        return FAILED_LOGIN_WINDOW_S - (now - recent[0])

    def failed(self, who: str) -> None:
        now = time.monotonic()
        self._failures[who] = [*self._recent(who, now), now]


@dataclass(frozen=True)
class Session:
    role: Role | None
    csrf: str
    fingerprint: str = ""
    fresh: bool = False
    """Set when the cookie must be (re)written on the response."""


class AccessPolicy:
    """Decides roles from tokens and reads and writes the session cookie."""

    def __init__(self, settings: Settings, host: str) -> None:
        self.secure_cookies = settings.console_secure_cookies
        self.proxies = _networks(settings.console_trusted_proxies)
        self.mode = access_mode(settings, host)
        self.refusal = refusal(settings, host)
        self.throttle = LoginThrottle()
        self._tokens: dict[Role, bytes] = {}
        if settings.console_viewer_token:
            self._tokens[Role.VIEWER] = settings.console_viewer_token.get_secret_value().encode()
        if settings.console_operator_token:
            token = settings.console_operator_token.get_secret_value().encode()
            self._tokens[Role.OPERATOR] = token
        key = settings.console_secret_key
        self._secret = key.get_secret_value().encode() if key else secrets.token_bytes(32)
        self._ttl = settings.console_session_ttl_s
        self._signer = URLSafeTimedSerializer(self._secret, salt="jobstream.console.session")

    @property
    def ttl_s(self) -> int:
        return self._ttl

    def secure(self, request: web.BaseRequest) -> bool:
        """Whether the client's connection is HTTPS, as far as this console can trust."""
        if self.secure_cookies or request.secure:
            return True
        forwarded = request.headers.get("X-Forwarded-Proto")
        if forwarded is None or not self.proxies or request.remote is None:
            return False
        try:
            peer = ipaddress.ip_address(request.remote)
        except ValueError:
            return False
        if not any(peer in net for net in self.proxies):
            return False
        # the value the trusted proxy set (an appending proxy puts its own last)
        return forwarded.rsplit(",", 1)[-1].strip().lower() == "https"

    def role_for_token(self, token: str) -> Role | None:
        """Constant-time comparison against every configured token; operator wins a tie."""
        given = token.strip().encode("utf-8", "surrogatepass")
        found: Role | None = None
        for role in (Role.VIEWER, Role.OPERATOR):
            expected = self._tokens.get(role)
            if expected is not None and given and hmac.compare_digest(given, expected):
                found = role
        return found

    def fingerprint(self, role: Role) -> str:
        if self.mode is Mode.DEV_OPEN:
            return "dev"
        token = self._tokens.get(role, b"")
        return hmac.new(
            self._secret, role.value.encode() + b":" + token, hashlib.sha256
        ).hexdigest()[:16]

    def new_session(self, role: Role | None) -> Session:
        fp = self.fingerprint(role) if role is not None else ""
        return Session(role=role, csrf=secrets.token_urlsafe(24), fingerprint=fp, fresh=True)

    def encode(self, session: Session) -> str:
        payload = {"r": session.role.value if session.role else None, "c": session.csrf}
        payload["f"] = session.fingerprint
        return str(self._signer.dumps(payload))

    def decode(self, cookie: str | None) -> Session | None:
        """The session in ``cookie``, or None when absent, forged, expired or revoked."""
        if not cookie:
            return None
        try:
            data = self._signer.loads(cookie, max_age=self._ttl)
        except (BadSignature, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        role: Role | None = None
        if data.get("r") is not None:
            try:
                role = Role(data["r"])
            except ValueError:
                return None
            if not hmac.compare_digest(str(data.get("f", "")), self.fingerprint(role)):
                return None  # opened with a token that has since changed
        return Session(role=role, csrf=data["c"], fingerprint=str(data.get("f", "")))


POLICY_KEY = web.AppKey("console_policy", AccessPolicy)
BASE_KEY = web.AppKey("console_base", str)
SESSION_KEY = web.RequestKey("console_session", Session)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str) -> web.HTTPException:
    """An HTTP error whose body is ``{"error": message}``; raise it from a handler."""
    cls = web.HTTPException
    for candidate in (
        web.HTTPBadRequest,
        web.HTTPUnauthorized,
        web.HTTPForbidden,
        web.HTTPNotFound,
        web.HTTPConflict,
        web.HTTPServiceUnavailable,
    ):
        if candidate.status_code == status:
            cls = candidate
    exc = cls(text=json.dumps({"error": message}), content_type="application/json")
    exc.set_status(status)
    return exc


def wants_json(request: web.Request, base: str) -> bool:
    return request.path.startswith(base + "/api/")


def _public(rel: str) -> bool:
    return rel in ("/login", "/health") or rel.startswith("/static/")


def session_of(request: web.Request) -> Session:
    session: Session = request[SESSION_KEY]
    return session


def require_operator(request: web.Request) -> None:
    if session_of(request).role is not Role.OPERATOR:
        raise json_error(403, "only an operator may do this (you are logged in as a viewer)")


class UnreadableBody(ValueError):
    """Raised when a request's body cannot be read as the form or JSON it claims to be (broken
    encoding or framing, a multipart without a boundary); answered with 400."""


async def read_form(request: web.Request) -> MultiDictProxy[str | bytes | bytearray | FileField]:
    """The request's form; a body aiohttp cannot read or parse is the client's fault, a 400."""
    try:
        return await request.post()
    except (web.RequestPayloadError, ValueError, LookupError, AssertionError) as exc:
        # LookupError: an unknown charset; AssertionError: aiohttp's multipart reader asserts
        raise UnreadableBody(f"the form could not be read ({type(exc).__name__})") from None


async def _csrf_ok(request: web.Request, session: Session) -> bool:
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        form = await read_form(request)
        value = form.get("csrf")
        sent = value if isinstance(value, str) else None
    # header bytes that are not UTF-8 arrive as lone surrogates: surrogatepass encodes them
    return sent is not None and hmac.compare_digest(
        sent.encode("utf-8", "surrogatepass"), session.csrf.encode()
    )


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    policy = request.app[POLICY_KEY]
    base = request.app[BASE_KEY]
    rel = request.path[len(base) :] or "/"
    if policy.refusal is not None and not rel.startswith("/static/"):
        raise json_error(403, policy.refusal)
    session = policy.decode(request.cookies.get(COOKIE))
    if session is None:
        session = policy.new_session(Role.OPERATOR if policy.mode is Mode.DEV_OPEN else None)
    elif session.role is None and policy.mode is Mode.DEV_OPEN:
        session = replace(policy.new_session(Role.OPERATOR), csrf=session.csrf)
    request[SESSION_KEY] = session
    if request.method not in SAFE_METHODS and not await _csrf_ok(request, session):
        raise json_error(403, "CSRF token missing or wrong: reload the page and try again")
    if session.role is None and not _public(rel):
        if wants_json(request, base):
            raise json_error(401, "log in first: POST a token to the login page")
        raise web.HTTPSeeOther(f"{base}/login")
    response = await handler(request)
    set_cookie_if_fresh(request, response, request[SESSION_KEY])
    return response


def set_cookie_if_fresh(request: web.Request, response: web.StreamResponse, s: Session) -> None:
    if not s.fresh or response.prepared:
        return
    policy = request.app[POLICY_KEY]
    response.set_cookie(
        COOKIE,
        policy.encode(s),
        max_age=policy.ttl_s,
        path=request.app[BASE_KEY] or "/",
        httponly=True,
        samesite="Strict",
        secure=policy.secure(request),
    )


def clear_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path=request.app[BASE_KEY] or "/")
