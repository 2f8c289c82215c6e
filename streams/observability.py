"""Sentry and logging set-up, the scrubbing of both, and the only ways jobstream reports to Sentry.

Nothing reaches Sentry on its own. Log records (jobstream's and every library's: aiokafka,
faust, asyncpg) become breadcrumbs, never events, so a reconnect loop or a retried step cannot
flood it; the integrations Sentry would switch on because a package is installed (aiohttp,
asyncpg, ...) stay off, because they capture request data and exceptions we route ourselves.
What is left: unhandled exceptions that end a thread or the process, and the reports the
pipeline makes explicitly: one per dead-lettered job (:func:`report_dead_letter`) and one when an
infrastructure outage starts and one when it ends (:func:`report_outage_started` /
:func:`report_outage_ended`).

Every event, breadcrumb and log line passes the scrubber on its way out: frame locals are never
collected, passwords in DSNs and URLs, bearer tokens, API keys and pydantic's ``input_value``
echoes are removed by shape, every secret value of the settings is removed wherever it appears,
and whatever is reported while a job runs (:func:`job_scope`) loses every fragment of that
job's payload: any run of 8 or more characters of one of its strings (its string values, and
its keys and numbers of 8 characters or more), plain, cut, JSON- or Python-escaped or URL-encoded
(:mod:`jobstream.streams.fragments`), and its string values of 4 to 7 characters where they
appear whole. Log lines get the same scrubber through a log record factory
(:func:`install_log_scrubber`, installed by :func:`configure_logging`): it applies whoever
configures the handlers afterwards (faust does, for the worker).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.metadata
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, SecretStr

from jobstream.streams.fragments import WINDOW, Fragments
from jobstream.streams.settings import Settings

REDACTED = "[redacted]"
PAYLOAD = "[payload]"
MIN_SECRET_LENGTH = 4  # shorter values would blank out ordinary words everywhere
JOB_TAGS = ("job.id", "job.type", "job.attempt", "job.tier")

# -- the scrubber ------------------------------------------------------------------------------

# scheme://user:PASSWORD@host: the password runs to the last "@" of the authority
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@'\"]*:)"
    r"(?P<secret>[^\s/'\"]+)(?=@[^\s@/'\"?#]*(?:[\s/'\"?#]|$))"
)
_SENSITIVE_KEY_WORDS = (
    r"password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key"
    r"|credentials?|dsn|cookie"
)
# key=value (libpq DSNs, query strings, log lines) and 'key': 'value' (reprs, JSON)
_KEY_VALUE = re.compile(
    rf"(?i)(?P<head>\b[\w.-]*(?:{_SENSITIVE_KEY_WORDS})(?:[\"']\s*:|\s*=|:\s)\s*)"
    r"(?!\[(?:redacted|payload)\])"
    r"(?:(?P<q>[\"'])(?P<quoted>.*?)(?P=q)|(?P<bare>[^\s,;&'\")\]}]+))"
)
_AUTHORIZATION = re.compile(
    r"(?i)(?P<head>\b(?:proxy-)?authorization[\"']?\s*[=:]\s*)(?P<q>[\"']?)[^\r\n'\"]*"
)
_BEARER = re.compile(r"(?i)\b(?P<head>bearer\s+)[A-Za-z0-9\-._~+/]+=*")
_BASIC = re.compile(r"\b(?P<head>Basic\s+)[A-Za-z0-9+/]{8,}={0,2}")
_API_KEY = re.compile(r"\b(?:sk|rk|pk)[-_](?:[A-Za-z0-9]+[-_])*[A-Za-z0-9]{16,}")
_INPUT_VALUE = re.compile(r"(?s)(?P<head>input_value=)(?!\[redacted\]).*?(?=, input_type=)")
_INPUT_VALUE_TAIL = re.compile(r"(?P<head>input_value=)(?!\[redacted\])[^\]\n]*")


def _key_value(m: re.Match[str]) -> str:
    if m.group("q"):
        return f"{m.group('head')}{m.group('q')}{REDACTED}{m.group('q')}"
    return m.group("head") + REDACTED


def _authorization(m: re.Match[str]) -> str:
    return f"{m.group('head')}{m.group('q')}{REDACTED}"


def _head(m: re.Match[str]) -> str:
    return m.group("head") + REDACTED


# each shape with the lower-case fragments one of which it needs: most strings skip most regexes
_SHAPES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str], tuple[str, ...]], ...] = (
    (_INPUT_VALUE, _head, ("input_value=",)),
    (_INPUT_VALUE_TAIL, _head, ("input_value=",)),
    (_URL_PASSWORD, _head, ("://",)),
    (_AUTHORIZATION, _authorization, ("authorization",)),
    (_BEARER, _head, ("bearer",)),
    (_BASIC, _head, ("basic",)),
    (_KEY_VALUE, _key_value, ("=", ":")),
    (_API_KEY, lambda _: REDACTED, ("sk-", "sk_", "rk-", "rk_", "pk-", "pk_")),
)
# parts of an event that hold nothing but the SDK's own facts (installed packages, ids)
_SAFE_EVENT_KEYS = frozenset({"modules", "event_id", "timestamp", "platform", "sdk"})
# field names of Sentry's event format (and of the tags and contexts jobstream sets), kept as
# they are when a payload fragment happens to match one; any other key is scrubbed like text
_PROTOCOL_KEYS = frozenset((
    "abs_path", "breadcrumbs", "category", "colno", "context_line", "contexts", "data",
    "dead_letter.reason", "dynamic_sampling_context", "environment", "event_id", "exception",
    "exception_id", "extra", "filename", "fingerprint", "formatted", "frames", "function",
    "handled", "in_app", "is_exception_group", "job.attempt", "job.id", "job.tier", "job.type",
    "kafka", "level", "lineno", "logentry", "logger", "mechanism", "message", "module", "offset",
    "outage", "outage.phase", "outage.step", "params", "parent_id", "partition", "platform",
    "post_context", "pre_context", "public_key", "release", "runtime", "sample_rate", "sampled",
    "sdk", "seconds", "server_name", "source", "stacktrace", "step", "tags", "threads",
    "timestamp", "topic", "trace", "trace_id", "transaction", "type", "value", "values", "vars",
    "worker",
))  # fmt: skip


def sensitive_key(key: str) -> bool:
    """Whether a mapping key names a secret (its value is dropped whatever it looks like)."""
    k = key.lower().replace("-", "_")
    return any(
        w in k
        for w in (
            "password", "passwd", "pwd", "secret", "token", "api_key", "apikey", "authorization",
            "dsn", "cookie", "credential", "private_key", "access_key",
        )
    )  # fmt: skip


def _alternation(values: Iterable[str]) -> re.Pattern[str] | None:
    ordered = sorted({v for v in values if len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
    if not ordered:
        return None
    return re.compile("|".join(re.escape(v) for v in ordered))


class Scrubber:
    """Removes secrets from text and from nested event data; pure apart from its value lists.

    ``secrets`` are replaced with ``[redacted]``, ``payload`` strings with ``[payload]``: every
    fragment of :data:`~jobstream.streams.fragments.WINDOW` characters or more, and the shorter
    ones (from ``MIN_SECRET_LENGTH``) where they appear whole. Payload first: a job may well
    carry a value that also looks like a secret.
    """

    def __init__(self, secrets: Iterable[str] = (), payload: Iterable[str] = ()) -> None:
        strings = list(payload)
        self._secrets = _alternation(secrets)
        self._payload = _alternation(s for s in strings if len(s) < WINDOW)
        self._fragments = Fragments(strings) if strings else None

    def text(self, s: str) -> str:
        if self._fragments is not None:
            s = self._fragments.redact(s, PAYLOAD)
        if self._payload is not None:
            s = self._payload.sub(PAYLOAD, s)
        if self._secrets is not None:
            s = self._secrets.sub(REDACTED, s)
        lower = s.lower()
        for pattern, repl, needs in _SHAPES:
            if any(n in lower for n in needs):
                s = pattern.sub(repl, s)
                lower = s.lower()
        return s

    def data(self, value: Any, _depth: int = 0) -> Any:
        """A copy of ``value`` with every string scrubbed and every secret-named key blanked."""
        if isinstance(value, str):
            return self.text(value)
        if _depth > 50:
            return REDACTED  # deeper than any event Sentry builds: refuse rather than recurse
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for k, v in value.items():
                # the event format's own field names are not data: a payload that happens to
                # hold "exception" must not take the event apart
                key = self.text(k) if isinstance(k, str) and k not in _PROTOCOL_KEYS else k
                if isinstance(k, str) and sensitive_key(k) and v is not None:
                    out[key] = REDACTED
                else:
                    out[key] = self.data(v, _depth + 1)
            return out
        if isinstance(value, list | tuple):
            if len(value) == 2 and isinstance(value[0], str) and sensitive_key(value[0]):
                return [self.text(value[0]), REDACTED]  # a (name, value) header pair
            return [self.data(v, _depth + 1) for v in value]
        return value


def scrub_text(s: str, secrets: Iterable[str] = (), payload: Iterable[str] = ()) -> str:
    return Scrubber(secrets, payload).text(s)


def payload_values(payload: Any) -> list[str]:
    """The strings by which a job payload could show up in a report: its string values (at
    least ``MIN_SECRET_LENGTH`` long), its keys and numbers of 8 characters or more (a card
    number sent as one). The whole payload's JSON text needs no entry: its every string is one.

    ``payload`` may also be the raw bytes of a record that is not a readable job.
    """
    values: list[str] = []
    if isinstance(payload, bytes | bytearray | memoryview):
        # a record that could not be decoded as a job: its text, and its JSON leaves if any
        text = bytes(payload).decode("utf-8", "replace")
        values.append(text)
        try:
            payload = json.loads(text)
        except (ValueError, RecursionError):
            return values
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(mode="json")
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if len(item) >= MIN_SECRET_LENGTH:
                values.append(item)
        elif isinstance(item, dict):
            # keys as fragments only: short ones ("url", "note") are the schema's words
            values.extend(k for k in item if isinstance(k, str) and len(k) >= WINDOW)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            number = str(item)
            if len(number) >= WINDOW:
                values.append(number)
    return values


# -- secrets known to this process --------------------------------------------------------------

_secret_values: set[str] = set()
_secret_lock = threading.Lock()
_scrubber = Scrubber()


def _parts_of(value: str) -> set[str]:
    """The value and the password parts of it that could appear on their own."""
    parts = {value}
    if "://" in value:
        with contextlib.suppress(ValueError):
            url = urlsplit(value)
            if url.password:
                parts |= {url.password, unquote(url.password)}
            for key, v in parse_qsl(url.query):
                if sensitive_key(key):
                    parts.add(v)
    for m in re.finditer(r"(?i)\bpassword\s*=\s*(?:'([^']*)'|(\S+))", value):
        parts.add(m.group(1) or m.group(2) or "")
    return parts


def register_secret(value: str) -> None:
    """Adds a value (and the password inside it, for a URL) to what every report omits."""
    global _scrubber
    with _secret_lock:
        _secret_values.update(_parts_of(value))
        _scrubber = Scrubber(_secret_values)


def register_secrets(settings: Settings) -> None:
    """Every ``SecretStr`` of the settings; for the Sentry DSN also its key (the user part)."""
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr) and value.get_secret_value():
            register_secret(value.get_secret_value())
    if settings.sentry_dsn is not None:
        with contextlib.suppress(ValueError):
            key = urlsplit(settings.sentry_dsn.get_secret_value()).username
            if key:
                register_secret(key)


def registered_secrets() -> frozenset[str]:
    return frozenset(_secret_values)


# -- the hooks Sentry calls ----------------------------------------------------------------------

_enabled = False
_worker_name: str | None = None


class _JobPayload:
    """A job's payload, turned into a scrubber only when something is reported."""

    __slots__ = ("payload", "scrubber")

    def __init__(self, payload: Any) -> None:
        self.payload = payload
        self.scrubber: Scrubber | None = None


_job_payload: contextvars.ContextVar[_JobPayload | None] = contextvars.ContextVar(
    "job_payload", default=None
)


def _current_scrubber() -> Scrubber:
    job = _job_payload.get()
    if job is None or job.payload is None:
        return _scrubber
    if job.scrubber is None:
        job.scrubber = Scrubber(_secret_values, payload_values(job.payload))
    return job.scrubber


def _drop_frame_locals(event: dict[str, Any]) -> None:
    """Frame locals are never collected (include_local_variables=False); this keeps it so
    whatever else fills them (another integration, a future default)."""
    containers = [event.get("exception"), event.get("threads")]
    for container in containers:
        values = container.get("values", []) if isinstance(container, dict) else []
        for item in values:
            frames = (item.get("stacktrace") or {}).get("frames", [])
            for frame in frames:
                frame.pop("vars", None)


def _keep_sampling_key(original: dict[str, Any], scrubbed: dict[str, Any]) -> None:
    """The SDK's own copy of the DSN key, which becomes the envelope's trace header: the
    ingestion service reads it there, and it is the key the request authenticates with anyway."""
    try:
        key = original["contexts"]["trace"]["dynamic_sampling_context"]["public_key"]
        scrubbed["contexts"]["trace"]["dynamic_sampling_context"]["public_key"] = key
    except (KeyError, TypeError):
        pass


def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    """Scrubs the whole event. An error in here drops the event (Sentry's rule): fail closed."""
    _drop_frame_locals(event)
    scrubber = _current_scrubber()
    scrubbed: dict[str, Any] = {
        k: v if k in _SAFE_EVENT_KEYS else scrubber.data(v) for k, v in event.items()
    }
    _keep_sampling_key(event, scrubbed)
    if _worker_name is not None:
        tags = scrubbed.setdefault("tags", {})
        if isinstance(tags, dict):
            tags.setdefault("worker", _worker_name)
    return scrubbed


def before_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    result: dict[str, Any] = _current_scrubber().data(crumb)
    return result


# -- set-up ---------------------------------------------------------------------------------------


def init_sentry(settings: Settings, *, transport: Any = None) -> bool:
    """Report to Sentry when a DSN is configured; never frame locals, payloads or secrets.

    ``transport`` replaces the HTTP transport (tests record envelopes with it).
    """
    global _enabled, _worker_name
    register_secrets(settings)
    if settings.sentry_dsn is None:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.utils import BadDsn

    _worker_name = settings.worker_name
    try:
        sentry_sdk.init(
            dsn=settings.sentry_dsn.get_secret_value(),
            environment=settings.sentry_environment,
            release=_release(),
            server_name=settings.worker_name,
            transport=transport,
            send_default_pii=False,
            include_local_variables=False,
            max_request_body_size="never",
            traces_sample_rate=None,  # no tracing (0.0 would still create unsampled traces)
            profiles_sample_rate=None,
            # no sentry-trace/baggage headers (baggage names the DSN key) on outgoing requests
            trace_propagation_targets=[],
            auto_enabling_integrations=False,
            integrations=[LoggingIntegration(level=logging.INFO, event_level=None)],
            before_send=before_send,  # type: ignore[arg-type]
            before_breadcrumb=before_breadcrumb,
        )
    except BadDsn:
        raise ValueError("JOBSTREAM_SENTRY_DSN is not a valid Sentry DSN") from None
    sentry_sdk.get_global_scope().set_tag("worker", settings.worker_name)
    _enabled = True
    return True


def _release() -> str | None:
    """The package version; without it sentry-sdk would run ``git`` in the working directory."""
    try:
        return f"jobstream@{importlib.metadata.version('jobstream')}"
    except importlib.metadata.PackageNotFoundError:
        return None


def shutdown_sentry(timeout: float = 2.0) -> None:
    """Sends what is queued and stops reporting (also how tests undo :func:`init_sentry`)."""
    global _enabled, _worker_name
    if not _enabled:
        return
    import sentry_sdk

    client = sentry_sdk.get_client()
    client.close(timeout=timeout)
    sentry_sdk.get_global_scope().set_client(None)
    sentry_sdk.get_global_scope().remove_tag("worker")
    _enabled = False
    _worker_name = None
    with _outage_lock:
        _outages.clear()


PROTOCOL_LOGGERS = ("aiokafka", "kafka", "asyncpg")
"""Client libraries whose DEBUG lines print raw protocol traffic: produced records (job
payloads), SASL frames, query parameters. They never log below INFO, whatever the level."""


def quiet_protocol_loggers() -> None:
    for name in PROTOCOL_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO or logger.level < logging.INFO:
            logger.setLevel(logging.INFO)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_protocol_loggers()
    install_log_scrubber()
    # a handler that fails would print its record's arguments and the exception being handled
    # (as the "During handling" context) raw to stderr; the logging docs advise this in production
    logging.raiseExceptions = False


def install_log_scrubber() -> Callable[[], None]:
    """From now on every log record is scrubbed as it is made; returns what undoes that.

    A record factory, not a handler or filter: faust replaces the root handlers when the worker
    starts, and a filter on a handler misses the handlers added after it. The record leaves with
    its message formatted and scrubbed (``args`` spent), and its traceback formatted and
    scrubbed into ``exc_text`` (``exc_info`` dropped, so no formatter can render the raw one).
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "jobstream_scrubs", False):
        return lambda: None

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        scrub_record(record)
        return record

    factory.jobstream_scrubs = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)

    def undo() -> None:
        if logging.getLogRecordFactory() is factory:
            logging.setLogRecordFactory(previous)

    return undo


def scrub_record(record: logging.LogRecord) -> None:
    """The record's message, traceback and stack, scrubbed in place; fails closed: if the
    scrubber itself fails, the line says so and carries nothing of the original."""
    try:
        _scrub_record(record)
    except Exception as exc:  # noqa: BLE001 - a log call must never raise, nor leak instead
        record.msg = f"(log line withheld: scrubbing it failed with {type(exc).__name__})"
        record.args = ()
        record.exc_info = record.exc_text = record.stack_info = None


def _scrub_record(record: logging.LogRecord) -> None:
    scrubber = _current_scrubber()
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format string: logging would print the template
        message = str(record.msg)
    record.msg = scrubber.text(message)
    record.args = ()  # an empty tuple, not None: mode's formatter turns None into (None,)
    if record.exc_info is not None and record.exc_info[0] is not None:
        text = logging.Formatter().formatException(record.exc_info)
        record.exc_text = scrubber.text(text)
        record.exc_info = None
    if record.stack_info:
        record.stack_info = scrubber.text(record.stack_info)


# -- what the pipeline reports ---------------------------------------------------------------------


@contextlib.contextmanager
def job_scope(
    *,
    job_id: str,
    job_type: str | None,
    attempt: int,
    tier: str | None,
    worker: str,
    topic: str,
    partition: int,
    offset: int,
    payload: Any = None,
) -> Iterator[None]:
    """Everything reported while one job runs carries its tags and never its payload.

    ``payload`` is what the job's fragments are taken from: the decoded payload (a dict or a
    model), or the raw bytes of a record that is no readable job. It is only looked at when an
    event, breadcrumb or log line is actually produced. Without Sentry the payload still
    scrubs the log; with it, one scope fork per job adds the tags.
    """
    token = _job_payload.set(_JobPayload(payload))
    if not _enabled:
        try:
            yield
        finally:
            _job_payload.reset(token)
        return
    import sentry_sdk

    try:
        with sentry_sdk.isolation_scope() as scope:
            scope.set_tag("job.id", job_id)
            scope.set_tag("job.type", job_type or "unknown")
            scope.set_tag("job.attempt", str(attempt))
            scope.set_tag("job.tier", tier or "main")
            scope.set_tag("worker", worker)
            scope.set_context("kafka", {"topic": topic, "partition": partition, "offset": offset})
            yield
    finally:
        _job_payload.reset(token)


def report_dead_letter(exc: BaseException, *, reason: str, job_type: str | None) -> str | None:
    """One event per dead-lettered job, grouped so that a flood of one kind is one issue.

    Returns the event id (None without Sentry or when the event was dropped).
    """
    if not _enabled:
        return None
    import sentry_sdk

    return sentry_sdk.capture_exception(
        exc,
        level="error",
        fingerprint=["dead-letter", job_type or "unknown", reason, type(exc).__name__],
        tags={"dead_letter.reason": reason},
    )


_outages: set[str] = set()
_outage_lock = threading.Lock()


def report_outage_started(step: str, exc: BaseException | None, seconds: float) -> bool:
    """A durable step has been retried in place past its deadline.

    True for the first call of an outage of ``step`` (that call reports it, with or without
    Sentry, so callers can log once too); False while that outage is already known.
    """
    with _outage_lock:
        if step in _outages:
            return False
        _outages.add(step)
    if _enabled:
        _capture_outage(step, exc, seconds, started=True)
    return True


def report_outage_ended(step: str, seconds: float) -> bool:
    """The step succeeded again; True when it ends an outage that was reported started."""
    with _outage_lock:
        if step not in _outages:
            return False
        _outages.discard(step)
    if _enabled:
        _capture_outage(step, None, seconds, started=False)
    return True


def outages() -> frozenset[str]:
    """Steps currently reported as failing."""
    with _outage_lock:
        return frozenset(_outages)


def _capture_outage(step: str, exc: BaseException | None, seconds: float, *, started: bool) -> None:
    """An outage is the infrastructure's, not the job's that happened to hit it: no job tags."""
    import sentry_sdk

    phase = "started" if started else "ended"
    with sentry_sdk.isolation_scope() as scope:
        for tag in JOB_TAGS:
            scope.remove_tag(tag)
        scope.remove_context("kafka")
        scope.set_level("warning" if started else "info")
        scope.fingerprint = ["outage", step, phase]
        scope.set_tag("outage.step", step)
        scope.set_tag("outage.phase", phase)
        scope.set_context("outage", {"step": step, "seconds": round(seconds, 3)})
        if started and exc is not None:
            sentry_sdk.capture_exception(exc)
        elif started:
            sentry_sdk.capture_message(f"{step} step failing for {seconds:.0f}s", level="warning")
        else:
            sentry_sdk.capture_message(f"{step} step recovered after {seconds:.0f}s", level="info")
