"""The console's timed work: scheduled jobs (filters, run now, re-time) and recurring schedules
(pause, resume, run now), with the audit of what operators did to them.

Viewers see both pages; only operators change anything, through the same audited functions
as the CLI and the API (:mod:`jobstream.streams.pg.scheduled`,
:mod:`jobstream.streams.pg.schedules`), recorded as ``console:operator@host from <address>``.
A page's buttons are plain forms (the CSRF token in a hidden field) that come back to the page
with what happened; the same actions are JSON under ``/api/``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from jobstream.streams.console import params
from jobstream.streams.console.access import (
    BASE_KEY,
    json_error,
    read_form,
    require_operator,
    wants_json,
)
from jobstream.streams.console.routes import _console, _shows_payloads, as_json, render
from jobstream.streams.dlq.filters import FilterError, parse_time
from jobstream.streams.pg import scheduled, schedules, timed_audit

timed_routes = web.RouteTableDef()
MAX_SCHEDULED_SHOWN = 1000


def ahead(name: str, value: str, now: datetime) -> datetime:
    """An ISO-8601 time, or a duration *from now* (``10m``: ten minutes ahead), for a due
    window or a new time; a 400 that says why otherwise."""
    text = value.strip()
    try:
        at = parse_time(text, now=now)
    except FilterError:
        raise params.BadInput(
            f"{name}: {value[:40]!r} is neither an ISO-8601 time nor a duration (45s, 10m, 2h)"
        ) from None
    except (OverflowError, ValueError):
        raise params.BadInput(f"{name}: {value[:40]!r} is out of range") from None
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return now + (now - at)  # parse_time reads a duration as an age: the other way
    return at.astimezone(UTC)


def _by(request: web.Request) -> str:
    return _console(request).replayed_by("operator", request.remote)


def _topic(request: web.Request) -> str:
    return _console(request).topics.main


# --- scheduled jobs ------------------------------------------------------------------------------


async def _scheduled(request: web.Request) -> dict[str, Any]:
    console = _console(request)
    q = request.query
    now = datetime.now(UTC)
    after = ahead("due after", q["due_after"], now) if q.get("due_after") else None
    before = ahead("due before", q["due_before"], now) if q.get("due_before") else None
    job_type = params.text("type", q["type"].strip()) if q.get("type", "").strip() else None
    limit = params.limit(q, default=100, maximum=MAX_SCHEDULED_SHOWN)
    rows = await scheduled.listed(
        console.pool,
        _topic(request),
        job_type=job_type,
        due_after=after,
        due_before=before,
        limit=limit,
    )
    items = [
        {**r, "due_in_s": round((r["run_at"] - now).total_seconds(), 1), "id": r["job_id"]}
        for r in rows
    ]
    audit = await timed_audit.entries(console.pool, _topic(request), kind="job", limit=20)
    return {"items": items, "limit": limit, "audit": audit}


@timed_routes.get("/scheduled")
async def scheduled_page(request: web.Request) -> web.Response:
    data = await _scheduled(request)
    keep = {k: v for k, v in request.query.items() if v and k not in ("done", "failed")}
    return render(
        request,
        "scheduled.html",
        data=data,
        query=keep,
        back="?" + urlencode(keep) if keep else "",
        done=request.query.get("done"),
        failed=request.query.get("failed"),
    )


@timed_routes.get("/api/scheduled")
async def api_scheduled(request: web.Request) -> web.Response:
    return as_json(await _scheduled(request))


async def _move(request: web.Request, run_at: datetime | None) -> dict[str, Any]:
    require_operator(request)
    job_id = params.job_id(request.match_info["job_id"])
    try:
        moved = await scheduled.move(
            _console(request).pool, _topic(request), job_id, run_at, by=_by(request)
        )
    except scheduled.NotScheduledError as exc:
        raise json_error(404, str(exc)) from None
    except scheduled.WouldExpireError as exc:
        raise json_error(409, str(exc)) from None
    return {"id": moved.job_id, "was": moved.was, "run_at": moved.run_at}


async def _new_time(request: web.Request) -> datetime:
    """The ``run_at`` of a re-time: a form field or a JSON body, ISO-8601 or a duration."""
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError, LookupError, RecursionError):
            raise params.BadInput("the body must be JSON with run_at") from None
        value = body.get("run_at") if isinstance(body, dict) else None
    else:
        value = (await read_form(request)).get("run_at")
    if not isinstance(value, str) or not value.strip():
        raise params.BadInput("run_at: give the new time (ISO-8601, or a duration from now)")
    return ahead("run_at", value, datetime.now(UTC))


@timed_routes.post("/api/scheduled/{job_id}/retime")
async def api_retime(request: web.Request) -> web.Response:
    require_operator(request)
    return as_json(await _move(request, await _new_time(request)))


@timed_routes.post("/api/scheduled/{job_id}/run-now")
async def api_run_job_now(request: web.Request) -> web.Response:
    return as_json(await _move(request, None))


@timed_routes.post("/scheduled/{job_id}/retime")
async def retime_form(request: web.Request) -> web.Response:
    require_operator(request)
    return await _form_result(request, "/scheduled", _move(request, await _new_time(request)))


@timed_routes.post("/scheduled/{job_id}/run-now")
async def run_job_now_form(request: web.Request) -> web.Response:
    return await _form_result(request, "/scheduled", _move(request, None))


# --- schedules -----------------------------------------------------------------------------------


def _schedule_json(request: web.Request, stored: schedules.StoredSchedule) -> dict[str, Any]:
    view = stored.as_json()
    view["next_at"] = None if stored.paused else stored.next_at
    if not _shows_payloads(request):  # a schedule's payload is a job's payload
        view["payload"] = f"(hidden: {len(str(view['payload']).encode())} bytes)"
    return view


async def _schedules(request: web.Request) -> dict[str, Any]:
    console = _console(request)
    found = await schedules.listed(console.pool, _topic(request))
    audit = await timed_audit.entries(console.pool, _topic(request), kind="schedule", limit=20)
    return {"items": [_schedule_json(request, s) for s in found], "audit": audit}


@timed_routes.get("/schedules")
async def schedules_page(request: web.Request) -> web.Response:
    return render(
        request,
        "schedules.html",
        data=await _schedules(request),
        done=request.query.get("done"),
        failed=request.query.get("failed"),
    )


@timed_routes.get("/api/schedules")
async def api_schedules(request: web.Request) -> web.Response:
    return as_json(await _schedules(request))


async def _schedule_action(request: web.Request, action: str) -> dict[str, Any]:
    require_operator(request)
    console = _console(request)
    name = params.text("schedule", request.match_info["name"])
    topic = _topic(request)
    if action == "run-now":
        try:
            job_id = await schedules.run_now(console.pool, topic, name, by=_by(request))
        except schedules.ScheduleNotFoundError as exc:
            raise json_error(404, str(exc)) from None
        return {"name": name, "id": job_id}
    now: datetime = await console.pool.fetchval("SELECT now()")
    paused = action == "pause"
    if not await schedules.set_paused(console.pool, topic, name, paused, now, by=_by(request)):
        raise json_error(404, f"no schedule {name!r}")
    stored = await schedules.get(console.pool, topic, name)
    assert stored is not None  # a removal in between: the next read says so
    return _schedule_json(request, stored)


for _action in ("pause", "resume", "run-now"):

    def _handlers(action: str) -> None:
        async def api(request: web.Request) -> web.Response:
            return as_json(await _schedule_action(request, action))

        async def form(request: web.Request) -> web.Response:
            return await _form_result(request, "/schedules", _schedule_action(request, action))

        timed_routes.post(f"/api/schedules/{{name}}/{action}")(api)
        timed_routes.post(f"/schedules/{{name}}/{action}")(form)

    _handlers(_action)


async def _form_result(request: web.Request, page: str, work: Any) -> web.Response:
    """A form's action done, back to ``page`` saying what happened (or why not)."""
    base = request.app[BASE_KEY]
    assert not wants_json(request, base)
    try:
        result = await work
    except web.HTTPException as exc:
        if exc.status == 403:
            raise
        query = {"failed": _error_text(exc)}
    except params.BadInput as exc:
        query = {"failed": str(exc)}
    else:
        query = {"done": _said(result)}
    form = await read_form(request)
    back = form.get("back")
    keep = back[1:] if isinstance(back, str) and back.startswith("?") else ""
    location = f"{base}{page}?{urlencode(query)}" + (f"&{keep}" if keep else "")
    return web.Response(status=303, headers={"Location": location})


def _error_text(exc: web.HTTPException) -> str:
    try:
        return str(json.loads(exc.text or "{}")["error"])
    except (ValueError, KeyError, TypeError):
        return exc.reason


def _said(result: dict[str, Any]) -> str:
    if "was" in result:
        return f"{result['id']}: now due at {result['run_at'].isoformat(timespec='seconds')}"
    if "paused" in result:
        return f"{result['name']}: {'paused' if result['paused'] else 'active'}"
    return f"{result['name']}: job {result['id']} is due now"
