"""The producer HTTP API: ``POST /jobs`` publishes job events, ``GET /jobs/{id}`` reads results.

It exists for producers that cannot (or should not) speak Kafka: they get the same wire event
as :class:`jobstream.streams.producer.client.JobClient` would publish, validated *before* it
reaches the topic, so a typo in a job type or payload is a 400 now instead of a dead letter later.

The routes are mounted twice over: in every worker replica's web server (next to /health,
/ready, /metrics) and in ``jobstream api``, a standalone server with its own producer and pool
for deployments that scale the API apart from the workers. Both hand :func:`api_routes` an
object satisfying :class:`ApiRuntime`, so the routes never depend on the worker's internals.

Decisions a caller may want to know:

* ``202 Accepted`` means "durable in Kafka" (acks=all), not "done": a worker will run it.
* A batch (a JSON array) is all or nothing at validation time: one bad item rejects the whole
  request and nothing is published. Ids come back in the order the items were sent.
* On a Kafka failure (503) some events of a batch may still have been published. Retry with
  the same ids: a job id that already finished is not run again, its outcome is re-emitted.
* ``GET`` answers 404 ``{"status": "unknown"}`` until a worker writes the job's first row;
  a job waiting in Kafka or for a handler slot has no row yet (a run writes one as it
  starts), so 404 right after 202 is normal.
* Every refusal is a 4xx with the body ``{"error": <code>, "detail": <text>, ...}``, also for
  an unknown path or method (:func:`json_errors`); 503 means Kafka or PostgreSQL did not answer.
* A job is refused exactly when a worker would dead-letter its bytes as undecodable: the check
  runs the workers' own :func:`jobstream.agents.decode.decode_event` on them.
* Job control (needs the host's PostgreSQL): a job with a ``dedupe`` object is submitted under
  that key (``200`` with ``deduplicated: true`` when a job stands for it already, ``202`` for a
  new one, both with the id); ``POST /jobs/{id}/cancel`` cancels a job; ``GET /jobs/{id}?wait=S``
  answers once the job finished or after ``S`` seconds (at most :data:`MAX_WAIT_S`), whichever
  comes first.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any, Protocol
from urllib.parse import quote

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from jobstream.agents.decode import decode_event, json_problem, unstorable_char
from jobstream.models.control import CancelAnswer, Dedupe, Submission
from jobstream.models.deadletter import DeadLetterReason
from jobstream.models.errors import InvalidJobError, ResultTimeoutError
from jobstream.models.job import JobEvent
from jobstream.streams.httpserver import CLIENT_CLOSED, RequestBodyTimeout, client_gone
from jobstream.streams.metrics import Metrics
from jobstream.streams.producer.control import cancel_jobs, row_waiter, submit_unique
from jobstream.streams.producer.timing import Timing, parse_instant
from jobstream.streams.producer.waiter import ResultWaiter
from jobstream.streams.settings import Settings
from jobstream.streams.topics import TopicNames

log = logging.getLogger(__name__)

MAX_BATCH = 1000
"""Jobs per request: large enough to amortise the Kafka round trip, small enough that one
request cannot hold the producer's buffer for long."""
PUBLISH_TIMEOUT_S = 15.0
"""How long a request waits for Kafka before answering 503; well below common proxy timeouts."""
LOOKUP_TIMEOUT_S = 10.0
RETRY_AFTER_S = 5
MAX_ID_LENGTH = 200  # JobEvent.id's own limit: a longer id can never have a row
SUBMIT_FIELDS = frozenset({"type", "payload", "id", "metadata", "partition_key"})
"""What a producer may set; ``attempt``, ``history``, ``not_before``, ``v`` and ``created_at``
belong to the workers and the server."""
TIMING_FIELDS = frozenset({"delay_s", "run_at", "ttl_s", "expires_at"})
"""When the job may run and until when (:func:`read_timing`): ``delay_s`` or ``run_at``
(ISO-8601 with its offset), ``ttl_s`` or ``expires_at``."""
TIMED_ROW_FIELDS = ("run_at", "expires_at", "started_at")
"""What a status answer shows of a timed job: a ``scheduled`` job's time, its expiry."""
ROW_FIELDS = (
    "type", "status", "attempt", "result", "error", "error_class", "executions", "worker",
    "source", "replay_of", "created_at", "finished_at", "updated_at",
)  # fmt: skip


# --- what the routes need from their host ----------------------------------------------------


class EventSender(Protocol):
    """The slice of :class:`jobstream.streams.kafka.publisher.Publisher` the API uses: queue
    now, await durability."""

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> Awaitable[Any]: ...


class JobLookup(Protocol):
    async def get(self, job_id: str) -> dict[str, Any] | None: ...


class TypedJob(Protocol):
    """A job type as the validation reads it."""

    @property
    def name(self) -> str: ...
    @property
    def payload_model(self) -> type[BaseModel]: ...


class JobTypes(Protocol):
    def get(self, name: str) -> TypedJob | None: ...

    def names(self) -> list[str]: ...


class ApiRuntime(Protocol):
    """Satisfied by :class:`jobstream.streams.worker.runtime.Runtime` and by :class:`ApiServer`.

    Read-only properties, so a host whose attributes are narrower (``ResultStore | None``)
    still matches; ``store`` and ``pool`` are read per request because a host may set them
    after mounting.
    """

    @property
    def settings(self) -> Settings: ...
    @property
    def publisher(self) -> EventSender: ...
    @property
    def store(self) -> JobLookup | None: ...
    @property
    def pool(self) -> asyncpg.Pool | None:
        """The jobs table's database, for job control (cancel, dedupe, long polls)."""

    @property
    def topics(self) -> TopicNames: ...
    @property
    def registry(self) -> JobTypes: ...
    @property
    def metrics(self) -> Metrics: ...


# --- errors ----------------------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than success; handlers raise it and one place turns it into JSON."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.body: dict[str, Any] = {"error": error, "detail": detail, **extra}
        self.headers = headers or {}

    def response(self) -> web.Response:
        return web.json_response(self.body, status=self.status, headers=self.headers)


def _invalid(errors: list[dict[str, Any]], **extra: Any) -> ApiError:
    count = len(errors)
    return ApiError(
        400,
        "invalid_request",
        f"{count} validation error{'s' if count != 1 else ''}",
        errors=errors,
        **extra,
    )


def _error(loc: Sequence[str | int], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": list(loc), "msg": msg, "type": kind}


def _pydantic_errors(
    exc: ValidationError, prefix: Sequence[str | int] = ()
) -> list[dict[str, Any]]:
    # "input" is left out on purpose: it can be large, and it can hold a caller's secrets
    return [_error([*prefix, *e["loc"]], e["msg"], e["type"]) for e in exc.errors()]


# --- validation: POST /jobs and `jobstream submit` -------------------------------------------


def validate_job(
    item: Any, registry: JobTypes, max_event_bytes: int, at: tuple[int, ...] = ()
) -> JobEvent:
    """The item against JobEvent, then its payload against the job type's model, then the
    workers' decode rule on the bytes that would be published; raises the 400
    :class:`ApiError` listing every error.

    ``POST /jobs``, ``jobstream submit`` and ``JobClient`` all call it, so a job one refuses
    the others refuse too, and a job they accept no worker dead-letters as undecodable."""
    if not isinstance(item, dict):
        raise _invalid([_error(at, f"expected a job object, got {_json_type(item)}", "dict_type")])
    accepted = ", ".join(sorted(SUBMIT_FIELDS | TIMING_FIELDS))
    errors = [
        _error([*at, key], f"unknown field; a job may set {accepted}", "extra_forbidden")
        for key in item
        if key not in SUBMIT_FIELDS and key not in TIMING_FIELDS
    ]
    timing, timing_errors = read_timing(item, at)
    errors.extend(timing_errors)
    fields = {k: v for k, v in item.items() if k in SUBMIT_FIELDS}
    if fields.get("id") is None:
        fields.pop("id", None)  # null id: the server picks one, like a missing id
    # what JSON or PostgreSQL cannot hold (NUL, lone surrogates, depth): refused before any
    # model sees it, as the workers' decode refuses it (a field is one level below the event)
    errors.extend(
        _error([*at, key], why, "json_unstorable")
        for key, value in fields.items()
        if (why := json_problem(value, depth=1)) is not None
    )
    if errors and any(e["type"] == "json_unstorable" for e in errors):
        raise _invalid(errors)
    try:
        event = JobEvent.model_validate(fields)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc, at))
        raise _invalid(errors) from None
    job_type = registry.get(event.type)
    if job_type is None:
        known = ", ".join(registry.names())
        errors.append(
            _error(
                [*at, "type"],
                f"unknown job type {event.type!r}; known types: {known}",
                "job_type_unknown",
            )
        )
    else:
        try:
            job_type.payload_model.model_validate(event.payload)
        except ValidationError as exc:
            errors.extend(_pydantic_errors(exc, [*at, "payload"]))
    if timing:
        event = event.model_copy(
            update={"not_before": timing.not_before, "expires_at": timing.expires_at}
        )
    if not errors:
        errors.extend(_worker_refusal(event, max_event_bytes, at))
    if errors:
        raise _invalid(errors, **_known_types_if_needed(errors, registry))
    return event


def read_timing(
    item: dict[str, Any], at: tuple[int, ...] = ()
) -> tuple[Timing, list[dict[str, Any]]]:
    """``delay_s``/``run_at`` and ``ttl_s``/``expires_at`` of a submitted job, read with the
    rules every producer shares (:class:`jobstream.streams.producer.timing.Timing`); each
    problem is an error at the field it is about. A null is the same as a missing field."""
    parsed, errors = _timing_values(item, at)
    if errors:
        return Timing(), errors
    now = datetime.now(UTC)
    # each field on its own first, so an error names the field it is about
    for key, arg in (
        ("delay_s", "delay"), ("run_at", "run_at"), ("ttl_s", "ttl"), ("expires_at", "expires_at")
    ):  # fmt: skip
        if key in parsed:
            try:
                Timing.of(now=now, **{arg: parsed[key]})
            except ValueError as exc:
                errors.append(_error([*at, key], str(exc), "timing_invalid"))
            except OverflowError:  # a time at the edge of the calendar, moved to UTC
                errors.append(_error([*at, key], f"{key} is out of range", "timing_invalid"))
    for first, second in (("delay_s", "run_at"), ("ttl_s", "expires_at")):
        if first in parsed and second in parsed:
            msg = f"give {first} or {second}, not both"
            errors.append(_error([*at, second], msg, "timing_invalid"))
    if errors:
        return Timing(), errors
    try:
        timing = Timing.of(
            delay=parsed.get("delay_s"),
            run_at=parsed.get("run_at"),
            ttl=parsed.get("ttl_s"),
            expires_at=parsed.get("expires_at"),
            now=now,
        )
    except ValueError as exc:  # the only rule left that needs both: expiry after the start
        key = "ttl_s" if "ttl_s" in parsed else "expires_at"
        return Timing(), [_error([*at, key], str(exc), "timing_invalid")]
    return timing, []


def _timing_values(
    item: dict[str, Any], at: tuple[int, ...]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The timing fields as numbers and instants, or why not."""
    errors: list[dict[str, Any]] = []
    parsed: dict[str, Any] = {}
    for key in sorted(TIMING_FIELDS):
        value = item.get(key)
        if value is None:
            continue
        if key.endswith("_s"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                msg = f"{key} is a number of seconds, not {_json_type(value)}"
                errors.append(_error([*at, key], msg, "timing_invalid"))
            elif abs(value) > 1e12:  # far past any limit; a float() of a huge int would raise
                errors.append(_error([*at, key], f"{key} is out of range", "timing_invalid"))
            else:
                parsed[key] = float(value)
        elif not isinstance(value, str):
            msg = f"{key} is an ISO-8601 time with its UTC offset, not {_json_type(value)}"
            errors.append(_error([*at, key], msg, "timing_invalid"))
        else:
            try:
                parsed[key] = parse_instant(value)
            except ValueError as exc:
                errors.append(_error([*at, key], str(exc), "timing_invalid"))
    return parsed, errors


def _worker_refusal(
    event: JobEvent, max_event_bytes: int, at: tuple[int, ...]
) -> list[dict[str, Any]]:
    """The workers' decode of the exact bytes that would be published: the one decode rule."""
    try:
        raw = event.to_bytes()
    except PydanticSerializationError:
        return [_error(at, "the event cannot be written as JSON", "json_invalid")]
    try:
        decode_event(raw, max_bytes=max_event_bytes)
    except InvalidJobError as exc:
        if exc.reason == DeadLetterReason.OVERSIZE:
            msg = (
                f"the event is {len(raw)} bytes as published; workers refuse more than "
                f"{max_event_bytes}"
            )
            return [_error(at, msg, "event_too_large")]
        return [_error(at, f"a worker would dead-letter it ({exc.reason}): {exc}", "undecodable")]
    return []


def _known_types_if_needed(errors: list[dict[str, Any]], registry: JobTypes) -> dict[str, Any]:
    if any(e["type"] == "job_type_unknown" for e in errors):
        return {"known_types": registry.names()}
    return {}


def error_line(exc: ApiError) -> str:
    """A validation answer as one line for a terminal: ``payload.url: Field required; ...``."""
    errors = exc.body.get("errors") or []
    parts = [
        (".".join(str(p) for p in e["loc"]) + ": " if e["loc"] else "") + e["msg"] for e in errors
    ]
    return "; ".join(parts) or str(exc)


# --- the routes ------------------------------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    411: "length_required",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (unknown path or method, a body over ``client_max_size``) in the
    API's error shape instead of a text page; answers that are JSON already pass unchanged."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        code = _ERROR_CODES.get(exc.status, "http_error")
        return ApiError(exc.status, code, exc.reason, headers=headers).response()


def api_routes(runtime: ApiRuntime) -> list[web.RouteDef]:
    """``POST /jobs`` and ``GET /jobs/{job_id}``, behind the bearer token when one is set."""
    from jobstream.streams.producer.timed_api import timed_routes  # it builds on this module

    api = _JobsApi(runtime)
    return [
        web.post("/jobs", api.guarded("submit", api.submit)),
        web.get("/jobs/{job_id}", api.guarded("status", api.status)),
        *timed_routes(runtime, api),
        web.post("/jobs/{job_id}/cancel", api.guarded("cancel", api.cancel)),
    ]


class _JobsApi:
    def __init__(self, runtime: ApiRuntime) -> None:
        self.rt = runtime
        self.metrics = runtime.metrics
        self._waiter: ResultWaiter | None = None

    def guarded(self, route: str, handler: Handler) -> Handler:
        """Auth first, then the handler; every failure leaves as JSON, never as a traceback."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                self.authorize(request)
                response = await handler(request)
            except ApiError as exc:
                response = exc.response()
            except Exception:
                log.exception("%s %s failed", request.method, request.path)
                response = ApiError(500, "internal_error", "unexpected server error").response()
            self.metrics.api_requests.labels(route=route, status=str(response.status)).inc()
            return response

        return wrapped

    def authorize(self, request: web.Request) -> None:
        token = self.rt.settings.api_token
        if token is None:
            return
        expected = token.get_secret_value().encode()
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        # compare_digest on bytes: a str argument with non-ASCII text would raise, not fail;
        # aiohttp keeps header bytes that are not UTF-8 as lone surrogates, which surrogatepass
        # encodes (strict UTF-8 would raise on them)
        if (
            scheme.lower() != "bearer"
            or not expected
            or not hmac.compare_digest(presented.strip().encode("utf-8", "surrogatepass"), expected)
        ):
            raise ApiError(
                401,
                "unauthorized",
                "send the API token as 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": 'Bearer realm="jobstream"'},
            )

    # -- POST /jobs ----------------------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.Response:
        self.require_json(request)
        body = await self.read_body(request)
        data = self.parse_json(body)
        if isinstance(data, dict):
            specs = self.dedupe_specs([data], batch=False)
            events = [self.validate(_without_dedupe(data), ())]
            batch = False
        elif isinstance(data, list):
            specs = self.dedupe_specs(data, batch=True)
            events = self.validate_batch([_without_dedupe(item) for item in data])
            batch = True
        else:
            raise _invalid(
                [
                    _error(
                        [],
                        f"expected a job object or an array of them, got {_json_type(data)}",
                        "body_type",
                    )
                ]
            )
        if any(specs):
            return await self.submit_unique(events, specs, batch)
        await self.publish(events)
        for event in events:
            self.metrics.api_jobs_submitted.labels(type=event.type).inc()
        if batch:
            return web.json_response(
                {"ids": [e.id for e in events], "status": "queued"}, status=202
            )
        event = events[0]
        return web.json_response(
            {"id": event.id, "status": "queued"},
            status=202,
            headers={"Location": f"/jobs/{quote(event.id, safe='')}"},
        )

    @staticmethod
    def require_json(request: web.Request) -> None:
        mime = request.content_type  # aiohttp's default for a missing header is octet-stream
        charset = request.charset
        if (mime == "application/json" or mime.endswith("+json")) and (
            charset is None or charset.lower().replace("-", "") == "utf8"
        ):
            return
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the jobs as 'Content-Type: application/json' (UTF-8), not {mime!r}"
            + (f" with charset {charset!r}" if charset else ""),
        )

    async def read_body(self, request: web.Request) -> bytes:
        """Reads at most ``api_max_body_bytes``; the limit applies after Content-Encoding is
        undone, so a small compressed body cannot expand into a large one."""
        limit = self.rt.settings.api_max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            raise _too_large(declared, limit)
        # read the stream ourselves, not request.read(): the limit is ours even when the host
        # app's client_max_size differs, and the 413 stays JSON instead of aiohttp's text
        buf = bytearray()
        try:
            async for chunk in request.content.iter_chunked(64 * 1024):
                buf += chunk
                if len(buf) > limit:
                    raise _too_large(None, limit)
        except RequestBodyTimeout:
            raise ApiError(
                408,
                "body_timeout",
                f"the body did not arrive within {self.rt.settings.http_body_timeout_s}s of the"
                " headers (JOBSTREAM_HTTP_BODY_TIMEOUT_S)",
            ) from None
        except ConnectionResetError:
            if not client_gone(request):
                raise
            # the client left: nobody reads the answer, and it is no fault of the server's
            raise ApiError(
                CLIENT_CLOSED, "client_closed", "the client closed the connection mid-body"
            ) from None
        except web.RequestPayloadError:  # broken chunked framing or compression
            # not the exception's text: it quotes the offending bytes of the body
            msg = "the body could not be read: broken chunked framing or compression"
            raise _invalid([_error([], msg, "body_invalid")]) from None
        return bytes(buf)

    @staticmethod
    def parse_json(body: bytes) -> Any:
        def refuse_constant(name: str) -> Any:
            # NaN/Infinity are not JSON; they would reach the topic as null
            raise ValueError(f"{name} is not valid JSON")

        try:
            return json.loads(body.decode("utf-8"), parse_constant=refuse_constant)
        except UnicodeDecodeError as exc:
            msg = f"body is not UTF-8: {exc.reason} at byte {exc.start}"
        except (ValueError, RecursionError) as exc:
            msg = f"body is not valid JSON: {exc}"
        raise _invalid([_error([], msg, "json_invalid")])

    def validate_batch(self, items: list[Any]) -> list[JobEvent]:
        if not items:
            raise _invalid([_error([], "the batch is empty", "batch_empty")])
        if len(items) > MAX_BATCH:
            raise _invalid(
                [
                    _error(
                        [],
                        f"the batch has {len(items)} jobs; at most {MAX_BATCH} per request",
                        "batch_too_long",
                    )
                ],
                max_batch=MAX_BATCH,
            )
        events: list[JobEvent] = []
        errors: list[dict[str, Any]] = []
        first_index: dict[str, int] = {}
        for i, item in enumerate(items):
            try:
                event = self.validate(item, (i,))
            except ApiError as exc:
                errors.extend(exc.body["errors"])
                continue
            if event.id in first_index:
                errors.append(
                    _error(
                        [i, "id"],
                        f"id {event.id!r} is also used by item {first_index[event.id]}",
                        "id_duplicate",
                    )
                )
                continue
            first_index[event.id] = i
            events.append(event)
        if errors:
            raise _invalid(errors, **self.known_types_if_needed(errors))
        return events

    def validate(self, item: Any, at: tuple[int, ...]) -> JobEvent:
        return validate_job(item, self.rt.registry, self.rt.settings.max_event_bytes, at)

    def known_types_if_needed(self, errors: list[dict[str, Any]]) -> dict[str, Any]:
        return _known_types_if_needed(errors, self.rt.registry)

    async def publish(self, events: list[JobEvent]) -> None:
        """Queue every event before awaiting any, so a batch costs about one round trip and
        events sharing a partition key keep the order they were sent in."""
        topic = self.rt.topics.main
        pending: list[Awaitable[Any]] = []
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                for event in events:
                    pending.append(
                        await self.rt.publisher.send(topic, event.to_bytes(), key=event.key())
                    )
                await asyncio.gather(*pending)
        except Exception as exc:  # noqa: BLE001 - whatever failed the publish, the caller gets one 503 and the futures are reaped
            for fut in pending:
                _discard_outcome(fut)
            log.warning(
                "publishing %d job(s) to %s failed: %s: %s",
                len(events),
                topic,
                type(exc).__name__,
                exc,
            )
            raise ApiError(
                503,
                "kafka_unavailable",
                "the jobs could not be made durable in Kafka; some may have been published."
                f" Retry in {RETRY_AFTER_S}s with the same ids (a finished job id is not run"
                " again).",
                headers={"Retry-After": str(RETRY_AFTER_S)},
                retry_after_s=RETRY_AFTER_S,
                ids=[e.id for e in events],
            ) from None

    # -- GET /jobs/{job_id} ----------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        if len(job_id) > MAX_ID_LENGTH:
            raise _invalid(
                [_error(["id"], f"job ids have at most {MAX_ID_LENGTH} characters", "id_length")]
            )
        why = unstorable_char(job_id)
        if why is not None:  # no job can have this id: no row to look for
            raise _invalid([_error(["id"], f"the id {why}", "json_unstorable")])
        wait_s = _wait_param(request)
        if wait_s:
            await self.wait_finished(job_id, wait_s)
        store = self.rt.store
        if store is None:
            raise _db_unavailable("the result store is not started yet")
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                row = await store.get(job_id)
        except asyncpg.DataError as exc:  # the id itself, not the database: a value it refuses
            log.warning("looking up a job id refused by PostgreSQL: %s", type(exc).__name__)
            raise _invalid(
                [_error(["id"], "PostgreSQL cannot look up this id", "id_invalid")]
            ) from None
        except Exception as exc:  # noqa: BLE001 - any other failure of the lookup is a store that did not answer (503)
            log.warning("looking up a job failed: %s: %s", type(exc).__name__, exc)
            raise _db_unavailable("the result store did not answer") from None
        if row is None:
            return web.json_response(
                {
                    "id": job_id,
                    "status": "unknown",
                    "detail": "no row yet: the job may be queued (in Kafka or waiting for a slot),"
                    " or the id was never submitted",
                },
                status=404,
            )
        return web.json_response({**job_view(job_id, row), **control_view(row)})

    # -- job control: dedupe keys, cancel, long polls (needs the host's PostgreSQL) -----------

    def control_pool(self) -> asyncpg.Pool:
        pool = self.rt.pool
        if pool is None:
            raise _db_unavailable("the database is not connected yet")
        return pool

    def dedupe_specs(self, items: list[Any], batch: bool) -> list[Dedupe | None]:
        """The ``dedupe`` object of each item (None where absent), or a 400 naming each
        problem; read before the rest of the item is validated, which does not know it."""
        specs: list[Dedupe | None] = []
        errors: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            at: tuple[int, ...] = (i,) if batch else ()
            raw = item.get(DEDUPE_FIELD) if isinstance(item, dict) else None
            if raw is None:
                specs.append(None)
                continue
            try:
                specs.append(read_dedupe(raw))
            except ValueError as exc:
                errors.append(_error([*at, DEDUPE_FIELD], str(exc), "dedupe_invalid"))
                specs.append(None)
        if errors:
            raise _invalid(errors)
        return specs

    async def submit_unique(
        self, events: list[JobEvent], specs: list[Dedupe | None], batch: bool
    ) -> web.Response:
        """Items with a key one by one (each its own transaction, see
        :func:`jobstream.streams.pg.dedupe.submit`), the others published together."""
        plain = [e for e, spec in zip(events, specs, strict=True) if spec is None]
        for i, (event, spec) in enumerate(zip(events, specs, strict=True)):
            if spec is not None and spec.mode == "debounce" and event.not_before is None:
                at: list[str | int] = [DEDUPE_FIELD, "mode"]
                if batch:
                    at.insert(0, i)
                msg = "debounce needs a delay: the time each submit moves the job to"
                raise _invalid([_error(at, msg, "dedupe_invalid")])
        pool = self.control_pool()
        if plain:
            await self.publish(plain)
        answers: list[Submission] = []
        for event, spec in zip(events, specs, strict=True):
            if spec is None:
                answers.append(Submission(event.id, False))
                continue
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                    answers.append(
                        await submit_unique(
                            pool, self.rt.publisher, self.rt.topics.main, event, spec
                        )
                    )
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                log.warning("a deduplicated submit failed: %s", type(exc).__name__)
                raise _db_unavailable("the database did not answer") from None
        for event, answer in zip(events, answers, strict=True):
            if not answer.deduplicated:
                self.metrics.api_jobs_submitted.labels(type=event.type).inc()
        every = all(a.deduplicated for a in answers)
        status = 200 if every else 202
        if batch:
            return web.json_response(
                {
                    "ids": [a.job_id for a in answers],
                    "status": "deduplicated" if every else "queued",
                    "deduplicated": [a.deduplicated for a in answers],
                },
                status=status,
            )
        [answer] = answers
        return web.json_response(
            {
                "id": answer.job_id,
                "status": "deduplicated" if answer.deduplicated else "queued",
                "deduplicated": answer.deduplicated,
            },
            status=status,
            headers={"Location": f"/jobs/{quote(answer.job_id, safe='')}"},
        )

    async def cancel(self, request: web.Request) -> web.Response:
        """``POST /jobs/{id}/cancel``: 200 cancelled (it never runs), 202 requested (its worker
        stops it within about a second), 409 when it had finished already."""
        job_id = _checked_id(request.match_info["job_id"])
        pool = self.control_pool()
        by = f"api from {request.remote or 'unknown'}"
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                [done] = await cancel_jobs(pool, self.rt.publisher, self.rt.topics, [job_id], by=by)
        except asyncpg.DataError:
            raise _invalid(
                [_error(["id"], "PostgreSQL cannot look up this id", "id_invalid")]
            ) from None
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.warning("cancelling a job failed: %s", type(exc).__name__)
            raise _db_unavailable("the database did not answer") from None
        body = {
            "id": job_id,
            "cancel": done.answer.value,
            "status": done.status.value,
            "was": done.was.value if done.was is not None else None,
        }
        if done.answer is CancelAnswer.FINISHED:
            finished = ApiError(
                409,
                "already_finished",
                f"the job finished already ({done.status.value}): nothing to cancel",
                id=job_id,
            )
            finished.body["status"] = done.status.value  # ApiError's own argument is the HTTP one
            raise finished
        return web.json_response(body, status=202 if done.answer is CancelAnswer.REQUESTED else 200)

    async def wait_finished(self, job_id: str, wait_s: float) -> None:
        """Returns when the job's row is terminal or after ``wait_s``, whichever is first: the
        caller then reads the row as it is."""
        if self._waiter is None or self._waiter.pool is not self.rt.pool:
            self._waiter = row_waiter(self.control_pool())
        try:
            await self._waiter.result(job_id, timeout=wait_s)
        except ResultTimeoutError:
            return  # (a TimeoutError, so an OSError: caught first)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("waiting for a job failed: %s", type(exc).__name__)
            raise _db_unavailable("the database did not answer") from None


def job_view(job_id: str, row: dict[str, Any]) -> dict[str, Any]:
    """A ``jobs`` row as the API shows it: fixed keys, timestamps as ISO-8601."""
    view: dict[str, Any] = {"id": row.get("job_id", job_id)}
    for name in (*ROW_FIELDS, *TIMED_ROW_FIELDS):
        value = row.get(name)
        view[name] = value.isoformat() if isinstance(value, date) else value
    return view


# --- job control: the request fields and the view ----------------------------------------------

DEDUPE_FIELD = "dedupe"
"""``{"key": ..., "mode": "simple" | "throttle" | "debounce", "ttl_s": seconds}`` on a job."""
MAX_WAIT_S = 60.0
"""The longest ``?wait=`` of ``GET /jobs/{id}``: below common proxy and load-balancer timeouts."""
CONTROL_ROW_FIELDS = (
    "progress", "progress_detail", "progress_at", "cancel_requested_at", "dedupe_key",
)  # fmt: skip


def read_dedupe(raw: Any) -> Dedupe:
    """A job's ``dedupe`` object; ``ValueError`` saying what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f"dedupe is an object with key, mode and ttl_s, not {_json_type(raw)}")
    unknown = sorted(set(raw) - {"key", "mode", "ttl_s"})
    if unknown:
        raise ValueError(f"dedupe has key, mode and ttl_s only, not {', '.join(unknown)}")
    ttl = raw.get("ttl_s")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
        raise ValueError(f"dedupe.ttl_s is a number of seconds, not {_json_type(ttl)}")
    key = raw.get("key")
    if not isinstance(key, str):
        raise ValueError(f"dedupe.key is a string, not {_json_type(key)}")
    return Dedupe(key, raw.get("mode") or "simple", ttl)


def _without_dedupe(item: Any) -> Any:
    if isinstance(item, dict) and DEDUPE_FIELD in item:
        return {k: v for k, v in item.items() if k != DEDUPE_FIELD}
    return item


def _wait_param(request: web.Request) -> float:
    raw = request.query.get("wait")
    if raw is None or raw == "":
        return 0.0
    try:
        wait_s = float(raw)
    except ValueError:
        wait_s = -1.0
    if not 0 <= wait_s <= MAX_WAIT_S:  # also NaN
        raise _invalid(
            [
                _error(
                    ["wait"],
                    f"wait is a number of seconds from 0 to {MAX_WAIT_S:g}",
                    "wait_invalid",
                )
            ]
        )
    return wait_s


def _checked_id(job_id: str) -> str:
    if len(job_id) > MAX_ID_LENGTH:
        raise _invalid(
            [_error(["id"], f"job ids have at most {MAX_ID_LENGTH} characters", "id_length")]
        )
    why = unstorable_char(job_id)
    if why is not None:
        raise _invalid([_error(["id"], f"the id {why}", "json_unstorable")])
    return job_id


def control_view(row: dict[str, Any]) -> dict[str, Any]:
    """What a status answer shows of job control: progress, a pending cancel, the dedupe key."""
    return {
        name: value.isoformat() if isinstance(value, date) else value
        for name in CONTROL_ROW_FIELDS
        if (value := row.get(name)) is not None or name == "progress"
    }


def _too_large(declared: int | None, limit: int) -> ApiError:
    size = f"{declared} bytes" if declared is not None else "more than that"
    return ApiError(
        413,
        "body_too_large",
        f"the body may have at most {limit} bytes (JOBSTREAM_API_MAX_BODY_BYTES), got {size};"
        " split the batch or shrink the payload",
        max_body_bytes=limit,
    )


def _db_unavailable(why: str) -> ApiError:
    return ApiError(
        503,
        "database_unavailable",
        f"{why}; retry in {RETRY_AFTER_S}s",
        headers={"Retry-After": str(RETRY_AFTER_S)},
        retry_after_s=RETRY_AFTER_S,
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _discard_outcome(fut: Awaitable[Any]) -> None:
    """After a failed batch, retrieve each late exception, so asyncio does not log 'exception
    was never retrieved' for futures nobody awaits any more (the records may still land)."""
    if isinstance(fut, asyncio.Future):
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
