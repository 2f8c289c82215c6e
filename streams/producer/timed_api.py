"""The producer API's routes for timed work: scheduled jobs (list, re-time, run now) and
recurring schedules (list, add, pause, resume, remove, run now).

They sit behind the same bearer token and error shape as ``POST /jobs``
(:mod:`jobstream.streams.producer.api`) and need the host's PostgreSQL pool; every change is
audited (``timed_audit``) with the client's address as who did it. The CLI (``jobstream
scheduled``/``schedules``) and the console make the same changes through the same functions
of :mod:`jobstream.streams.pg.scheduled` and :mod:`jobstream.streams.pg.schedules`.

A schedule's or a job's "run now" writes a scheduled row due now (the dispatcher's outbox),
never a Kafka record of its own: one path publishes timed work, so a run-now is as durable and
as deduplicated as any delayed job.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import ValidationError

from jobstream.models.schedules import ScheduleSpec
from jobstream.streams.pg import scheduled, schedules
from jobstream.streams.producer.api import (
    ApiError,
    ApiRuntime,
    JobTypes,
    _db_unavailable,
    _error,
    _invalid,
    _JobsApi,
    _pydantic_errors,
)
from jobstream.streams.producer.timing import MAX_DELAY, parse_duration, parse_instant

log = logging.getLogger(__name__)

MAX_LISTED = 1000
SCHEDULE_FIELDS = frozenset(
    {"name", "type", "payload", "cron", "every_s", "timezone", "missed", "catch_up_max"}
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- shared with the CLI -----------------------------------------------------------------------


def schedule_spec(body: Any, registry: JobTypes) -> ScheduleSpec:
    """A schedule as ``POST /schedules`` and ``jobstream schedules add`` take it: its rule
    checked (cron, zone, interval), its job type known and its payload accepted by the type's
    model; raises the 400 :class:`ApiError` listing every problem."""
    if not isinstance(body, dict):
        raise _invalid([_error([], "expected a schedule object", "dict_type")])
    accepted = ", ".join(sorted(SCHEDULE_FIELDS))
    errors = [
        _error([key], f"unknown field; a schedule may set {accepted}", "extra_forbidden")
        for key in body
        if key not in SCHEDULE_FIELDS
    ]
    fields = {k: v for k, v in body.items() if k in SCHEDULE_FIELDS and v is not None}
    if "type" in fields:
        fields["job_type"] = fields.pop("type")
    try:
        spec = ScheduleSpec.model_validate(fields)
    except ValidationError as exc:
        errors.extend(
            {**e, "loc": ["type" if loc == "job_type" else loc for loc in e["loc"]]}
            for e in _pydantic_errors(exc)
        )
        raise _invalid(errors) from None
    job_type = registry.get(spec.job_type)
    if job_type is None:
        known = ", ".join(registry.names())
        msg = f"unknown job type {spec.job_type!r}; known types: {known}"
        errors.append(_error(["type"], msg, "job_type_unknown"))
    else:
        try:
            job_type.payload_model.model_validate(spec.payload)
        except ValidationError as exc:
            errors.extend(_pydantic_errors(exc, ["payload"]))
    if errors:
        raise _invalid(errors)
    return spec


def when(text: str, now: datetime, name: str) -> datetime:
    """An instant (ISO-8601 with its offset) or a duration from now (``10m``, ``2h``) for the
    due window and re-timing; raises a 400 :class:`ApiError` naming ``name``."""
    try:
        return parse_instant(text)
    except ValueError as exc:
        instant_error = str(exc)
    try:
        delta = parse_duration(text)
    except ValueError:
        msg = f"{text!r} is neither an ISO-8601 time with its offset nor a duration (10m, 2h)"
        if "offset" in instant_error:  # a time, without its offset: say that
            msg = instant_error
        raise _invalid([_error([name], msg, "timing_invalid")]) from None
    if delta > MAX_DELAY:
        raise _invalid([_error([name], f"{name} is more than 10 years ahead", "timing_invalid")])
    return now + delta


def scheduled_view(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A scheduled job as the API and the CLI list it."""
    run_at: datetime = row["run_at"]
    return {
        "id": row["job_id"],
        "type": row["type"],
        "run_at": run_at.isoformat(),
        "due_in_s": round((run_at - now).total_seconds(), 3),
        "expires_at": _iso(row.get("expires_at")),
        "dispatched_at": _iso(row.get("dispatched_at")),
        "created_at": _iso(row.get("created_at")),
        "attempt": row.get("attempt"),
    }


def schedule_view(stored: schedules.StoredSchedule) -> dict[str, Any]:
    """A schedule with its next fire time (none while paused) and its last one."""
    view = stored.as_json()
    view["next_at"] = None if stored.paused else stored.next_at.isoformat()
    return view


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --- the routes ----------------------------------------------------------------------------------


def timed_routes(runtime: ApiRuntime, api: _JobsApi) -> list[web.RouteDef]:
    """Mounted by :func:`jobstream.streams.producer.api.api_routes`, behind ``api.guarded``."""
    t = _TimedApi(runtime, api)
    g = api.guarded
    return [
        web.get("/scheduled", g("scheduled_list", t.list_scheduled)),
        web.post("/scheduled/{job_id}/retime", g("scheduled_retime", t.retime)),
        web.post("/scheduled/{job_id}/run-now", g("scheduled_run_now", t.run_job_now)),
        web.get("/schedules", g("schedules_list", t.list_schedules)),
        web.post("/schedules", g("schedules_add", t.add)),
        web.get("/schedules/{name}", g("schedules_get", t.get)),
        web.post("/schedules/{name}/pause", g("schedules_pause", t.pause)),
        web.post("/schedules/{name}/resume", g("schedules_resume", t.resume)),
        web.post("/schedules/{name}/run-now", g("schedules_run_now", t.run_schedule_now)),
        web.delete("/schedules/{name}", g("schedules_remove", t.remove)),
    ]


class _TimedApi:
    def __init__(self, runtime: ApiRuntime, api: _JobsApi) -> None:
        self.rt = runtime
        self.api = api

    @property
    def topic(self) -> str:
        return self.rt.topics.main

    def pool(self) -> asyncpg.Pool:
        # both hosts (the worker's runtime, ApiServer) have one once started
        pool: asyncpg.Pool | None = getattr(self.rt, "pool", None)
        if pool is None:
            raise _unavailable("the database pool is not started yet")
        return pool

    @staticmethod
    def by(request: web.Request) -> str:
        return f"api from {request.remote or 'unknown'}"

    async def _db(self, work: Awaitable[Any]) -> Any:
        """A database call; an outage is a 503 that names no address or credential."""
        try:
            return await work
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("timed API: the database failed: %s", type(exc).__name__)
            raise _unavailable("PostgreSQL did not answer") from None

    async def body(self, request: web.Request) -> Any:
        """The JSON body, read as ``POST /jobs`` reads it (type, size limit, UTF-8)."""
        if not request.can_read_body:
            return {}
        self.api.require_json(request)
        raw = await self.api.read_body(request)
        return self.api.parse_json(raw)

    # -- scheduled jobs ----------------------------------------------------------------------

    async def list_scheduled(self, request: web.Request) -> web.Response:
        q = request.query
        now = datetime.now(UTC)
        unknown = sorted(set(q) - {"type", "due_after", "due_before", "limit"})
        if unknown:
            msg = "unknown filter; filters: type, due_after, due_before, limit"
            raise _invalid([_error([k], msg, "extra_forbidden") for k in unknown])
        after = when(q["due_after"], now, "due_after") if q.get("due_after") else None
        before = when(q["due_before"], now, "due_before") if q.get("due_before") else None
        limit = _limit(q.get("limit"))
        rows = await self._db(
            scheduled.listed(
                self.pool(),
                self.topic,
                job_type=q.get("type") or None,
                due_after=after,
                due_before=before,
                limit=limit,
            )
        )
        items = [scheduled_view(r, now) for r in rows]
        return web.json_response({"items": items, "limit": limit})

    async def retime(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        if not isinstance(body, dict):
            raise _invalid([_error([], "expected an object with run_at or delay_s", "dict_type")])
        unknown = sorted(set(body) - {"run_at", "delay_s"})
        if unknown:
            msg = "unknown field; give run_at or delay_s"
            raise _invalid([_error([k], msg, "extra_forbidden") for k in unknown])
        run_at = _new_time(body)
        return await self._move(request, run_at)

    async def run_job_now(self, request: web.Request) -> web.Response:
        return await self._move(request, None)

    async def _move(self, request: web.Request, run_at: datetime | None) -> web.Response:
        job_id = request.match_info["job_id"]
        try:
            moved = await self._db(
                scheduled.move(self.pool(), self.topic, job_id, run_at, by=self.by(request))
            )
        except scheduled.NotScheduledError as exc:
            raise ApiError(404, "not_scheduled", str(exc), id=job_id) from None
        except scheduled.WouldExpireError as exc:
            raise ApiError(409, "would_expire", str(exc), id=job_id) from None
        return web.json_response(
            {
                "id": moved.job_id,
                "status": "scheduled",
                "was": moved.was.isoformat(),
                "run_at": moved.run_at.isoformat(),
            }
        )

    # -- schedules ----------------------------------------------------------------------------

    async def list_schedules(self, request: web.Request) -> web.Response:
        found = await self._db(schedules.listed(self.pool(), self.topic))
        return web.json_response({"items": [schedule_view(s) for s in found]})

    async def get(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        stored = await self._db(schedules.get(self.pool(), self.topic, name))
        if stored is None:
            raise _no_schedule(name)
        return web.json_response(schedule_view(stored))

    async def add(self, request: web.Request) -> web.Response:
        spec = schedule_spec(await self.body(request), self.rt.registry)
        pool = self.pool()
        now: datetime = await self._db(pool.fetchval("SELECT now()"))
        added = await self._db(schedules.add(pool, self.topic, spec, now, by=self.by(request)))
        if not added:
            msg = f"a schedule {spec.name!r} exists; remove it first or pick another name"
            raise ApiError(409, "schedule_exists", msg, name=spec.name)
        stored = await self._db(schedules.get(pool, self.topic, spec.name))
        return web.json_response(schedule_view(stored), status=201)

    async def pause(self, request: web.Request) -> web.Response:
        return await self._pause(request, True)

    async def resume(self, request: web.Request) -> web.Response:
        return await self._pause(request, False)

    async def _pause(self, request: web.Request, paused: bool) -> web.Response:
        name = request.match_info["name"]
        pool = self.pool()
        now: datetime = await self._db(pool.fetchval("SELECT now()"))
        found = await self._db(
            schedules.set_paused(pool, self.topic, name, paused, now, by=self.by(request))
        )
        if not found:
            raise _no_schedule(name)
        stored = await self._db(schedules.get(pool, self.topic, name))
        return web.json_response(schedule_view(stored))

    async def run_schedule_now(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            job_id = await self._db(
                schedules.run_now(self.pool(), self.topic, name, by=self.by(request))
            )
        except schedules.ScheduleNotFoundError:
            raise _no_schedule(name) from None
        return web.json_response({"name": name, "id": job_id, "status": "scheduled"}, status=202)

    async def remove(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            found = await self._db(
                schedules.remove(self.pool(), self.topic, name, by=self.by(request), app_too=False)
            )
        except schedules.AppScheduleError as exc:
            raise ApiError(409, "declared_in_app", str(exc), name=name) from None
        if not found:
            raise _no_schedule(name)
        return web.json_response({"name": name, "removed": True})


def _new_time(body: dict[str, Any]) -> datetime:
    """``run_at`` (an instant) or ``delay_s`` (seconds from now) of a re-time."""
    run_at, delay = body.get("run_at"), body.get("delay_s")
    if (run_at is None) == (delay is None):
        raise _invalid([_error([], "give run_at or delay_s (one of them)", "timing_invalid")])
    now = datetime.now(UTC)
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise _invalid(
                [_error(["delay_s"], "delay_s is a number of seconds", "timing_invalid")]
            )
        if not 0 <= delay <= MAX_DELAY.total_seconds():
            msg = "delay_s must be between 0 and 10 years"
            raise _invalid([_error(["delay_s"], msg, "timing_invalid")])
        return now + timedelta(seconds=delay)
    if not isinstance(run_at, str):
        msg = "run_at is an ISO-8601 time with its UTC offset"
        raise _invalid([_error(["run_at"], msg, "timing_invalid")])
    try:
        at = parse_instant(run_at)
        if at - now > MAX_DELAY:
            raise ValueError("run_at is more than 10 years ahead")
        return at.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        msg = str(exc) if isinstance(exc, ValueError) else "run_at is out of range"
        raise _invalid([_error(["run_at"], msg, "timing_invalid")]) from None


def _limit(text: str | None) -> int:
    if not text:
        return 100
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LISTED:
        msg = f"limit is a whole number from 1 to {MAX_LISTED}"
        raise _invalid([_error(["limit"], msg, "limit_invalid")])
    return value


def _no_schedule(name: str) -> ApiError:
    return ApiError(404, "no_schedule", f"no schedule {name!r}", name=name)


def _unavailable(why: str) -> ApiError:
    return _db_unavailable(why)
