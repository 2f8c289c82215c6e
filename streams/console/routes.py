"""The console's pages and its JSON API (the pages' script polls the same API).

Pages are rendered on the server with what they show at load time; the script only keeps
them current. Every ``/api/`` answer is JSON, errors included: ``{"error": "..."}``.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from jobstream.models.deadletter import DeadLetter
from jobstream.streams.console import params, queries, rollup
from jobstream.streams.console.access import (
    BASE_KEY,
    POLICY_KEY,
    SESSION_KEY,
    Mode,
    Role,
    clear_cookie,
    json_error,
    read_form,
    require_operator,
    session_of,
    set_cookie_if_fresh,
)
from jobstream.streams.console.context import Console
from jobstream.streams.console.deadletters import detail, parse_filter, plan_json, stats, summary
from jobstream.streams.dlq.filters import DeadLetterFilter, FilterError
from jobstream.streams.dlq.replay import ReplayOptions, replay_matching
from jobstream.streams.dlq.snapshot import TopicMissingError, UnreachableError

CONSOLE_KEY = web.AppKey("console", Console)
MAX_DEAD_LETTERS_SHOWN = 500

routes = web.RouteTableDef()


def _console(request: web.Request) -> Console:
    return request.app[CONSOLE_KEY]


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def as_json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(
        data, status=status, dumps=lambda d: json.dumps(d, default=_json_default)
    )


def render(request: web.Request, template: str, status: int = 200, **ctx: Any) -> web.Response:
    console = _console(request)
    session = session_of(request)
    base = request.app[BASE_KEY]
    policy = request.app[POLICY_KEY]
    html = console.templates.get_template(template).render(
        base=base,
        role=session.role.value if session.role else None,
        operator=session.role is Role.OPERATOR,
        csrf=session.csrf,
        dev_open=policy.mode is Mode.DEV_OPEN,
        prefix=console.topics.prefix,
        group=console.settings.group_id,
        quote=lambda s: quote(str(s), safe=""),
        path=request.path,
        rate=console.settings.console_replay_rate,
        **ctx,
    )
    return web.Response(text=html, status=status, content_type="text/html")


# --- login -----------------------------------------------------------------------------------


@routes.get("/login")
async def login_page(request: web.Request) -> web.Response:
    return render(request, "login.html", error=None)


@routes.post("/login")
async def login(request: web.Request) -> web.StreamResponse:
    policy = request.app[POLICY_KEY]
    who = request.remote or "unknown"
    wait = policy.throttle.wait_s(who)
    if wait > 0:
        message = f"Too many wrong tokens from your address: try again in {wait:.0f} s."
        return render(request, "login.html", status=429, error=message)
    form = await read_form(request)
    token = form.get("token")
    role = policy.role_for_token(token) if isinstance(token, str) else None
    if role is None:
        policy.throttle.failed(who)
        return render(request, "login.html", status=401, error="That token is not valid.")
    session = policy.new_session(role)  # a new CSRF token too: nothing carries over from before
    request[SESSION_KEY] = session
    response = web.Response(status=303, headers={"Location": f"{request.app[BASE_KEY]}/"})
    set_cookie_if_fresh(request, response, session)
    return response


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    response = web.Response(status=303, headers={"Location": f"{request.app[BASE_KEY]}/login"})
    clear_cookie(request, response)
    request[SESSION_KEY] = request.app[POLICY_KEY].new_session(None)
    return response


@routes.get("/health")
async def health(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


# --- overview --------------------------------------------------------------------------------


@routes.get("/")
async def overview_page(request: web.Request) -> web.Response:
    console = _console(request)
    initial = await rollup.window(console.pool, "1h")
    return render(request, "overview.html", initial=json.dumps(initial, default=_json_default))


@routes.get("/api/overview")
async def api_overview(request: web.Request) -> web.Response:
    window = params.window(request.query)
    return as_json(await rollup.window(_console(request).pool, window))


@routes.get("/api/cluster")
async def api_cluster(request: web.Request) -> web.Response:
    console = _console(request)
    view = dict(await console.cluster.snapshot())
    claims = await queries.claims_by_worker(console.pool, console.schema)
    view["claims"] = claims
    view["in_flight_note"] = (
        "in flight = jobs under a live claim, per claimant"
        if claims is not None
        else "in flight per replica: each replica's /ready (in_flight); "
        "the jobs table here has no claim columns"
    )
    return as_json(view)


@routes.get("/api/rate-limits")
async def api_rate_limits(request: web.Request) -> web.Response:
    return as_json({"keys": await queries.rate_limits(_console(request).pool)})


# --- jobs --------------------------------------------------------------------------------------


def _prefix(request: web.Request) -> str | None:
    """The topic prefix whose jobs are shown: the console's own, or None for ``scope=all``."""
    return None if params.all_prefixes(request.query) else _console(request).topics.prefix


def _visible_row(request: web.Request, row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A row as this session may see it: a claim token is the running execution's write
    permission (its fence), so only operators see it."""
    if row is not None and session_of(request).role is not Role.OPERATOR:
        row.pop("claim_token", None)
    return row


async def _jobs(request: web.Request) -> dict[str, Any]:
    console = _console(request)
    flt = params.job_filter(request.query, console.schema.statuses)
    flt = dataclasses.replace(
        flt, prefix=_prefix(request), cancel_requested=params.cancel_filter(request.query)
    )
    after = params.cursor(request.query)
    limit = params.limit(request.query)
    rows, next_cursor = await queries.jobs_page(console.pool, flt, after, limit)
    return {"items": rows, "next_cursor": next_cursor, "limit": limit}


@routes.get("/jobs")
async def jobs_page(request: web.Request) -> web.StreamResponse:
    console = _console(request)
    wanted = request.query.get("id", "").strip()
    missing = None
    if wanted:
        job_id = params.job_id(wanted)
        if await queries.job_row(console.pool, job_id, prefix=_prefix(request)) is not None:
            location = f"{request.app[BASE_KEY]}/jobs/{quote(job_id, safe='')}"
            return web.Response(status=303, headers={"Location": location})
        missing = job_id
    page = await _jobs(request)
    keep = {k: v for k, v in request.query.items() if k not in ("after", "id") and v}
    next_url = None
    if page["next_cursor"]:
        next_url = "?" + urlencode({**keep, "after": page["next_cursor"]})
    return render(
        request,
        "jobs.html",
        page=page,
        query=keep,
        statuses=console.schema.statuses,
        next_url=next_url,
        first_page="after" not in request.query,
        missing=missing,
    )


@routes.get("/api/jobs")
async def api_jobs(request: web.Request) -> web.Response:
    return as_json(await _jobs(request))


async def _job(request: web.Request) -> dict[str, Any]:
    console = _console(request)
    job_id = params.job_id(request.match_info["job_id"])
    row = _visible_row(
        request, await queries.job_row(console.pool, job_id, prefix=_prefix(request))
    )
    letters: list[DeadLetter] = []
    kafka_note = None
    try:
        every, kafka_note = await console.dead_letters.all()
        letters = [d for d in every if d.job_id == job_id]
    except UnreachableError as exc:
        kafka_note = str(exc)
    if row is None and not letters:
        raise json_error(404, f"no job {job_id!r}: no row (queued, or unknown)")
    ids = [d.id for d in letters]
    show = _shows_payloads(request)
    latest = letters[-1] if letters else None
    if row is not None and row.get("result") is not None:
        text = json.dumps(row["result"], indent=2, default=_json_default)
        if not show:  # a result can echo its input: treated like the payload
            text = f"(hidden: {len(text.encode())} bytes; set JOBSTREAM_CONSOLE_SHOW_PAYLOADS)"
            row["result"] = text
    else:
        text = "(none)"
    if row is not None and row.get("event") is not None and not show:
        # a scheduled job's event (the outbox) holds its payload
        size = len(json.dumps(row["event"], default=_json_default).encode())
        row["event"] = f"(hidden: {size} bytes; set JOBSTREAM_CONSOLE_SHOW_PAYLOADS)"
    from jobstream.streams.console.control import job_control

    return {
        "job_id": job_id,
        "row": row,
        "control": await job_control(console, request, job_id, row),
        "result_text": text,
        "dead_letters": [detail(d, show_payload=show) for d in letters],
        "history": [h.model_dump(mode="json") for h in latest.history] if latest else [],
        "replay_of": row.get("replay_of") if row else None,
        "replayed_into": await queries.rows_replayed_from(console.pool, ids),
        "audit": await queries.replay_log(console.pool, job_id=job_id),
        "note": kafka_note,
    }


@routes.get("/jobs/{job_id}")
async def job_page(request: web.Request) -> web.Response:
    try:
        job = await _job(request)
    except web.HTTPNotFound:
        from jobstream.streams.console.control import job_control

        job_id = request.match_info["job_id"]
        control = await job_control(_console(request), request, job_id, None)
        return render(request, "job.html", status=404, job=None, missing=job_id, control=control)
    return render(request, "job.html", job=job, missing=None, control=job["control"])


@routes.get("/api/jobs/{job_id}")
async def api_job(request: web.Request) -> web.Response:
    return as_json(await _job(request))


# --- dead letters ----------------------------------------------------------------------------


def _shows_payloads(request: web.Request) -> bool:
    role = session_of(request).role
    return role is Role.OPERATOR or _console(request).settings.console_show_payloads


def _dl_filter(request: web.Request) -> DeadLetterFilter:
    params.times(request.query)  # a time no datetime can hold is a 400, not an OverflowError
    try:
        return parse_filter(request.query)
    except FilterError as exc:
        raise params.BadInput(str(exc)) from None


async def _dead_letters(request: web.Request) -> dict[str, Any]:
    console = _console(request)
    flt = _dl_filter(request)
    limit = params.limit(request.query, default=100, maximum=MAX_DEAD_LETTERS_SHOWN)
    try:
        every, note = await console.dead_letters.all()
    except UnreachableError as exc:
        raise json_error(503, str(exc)) from None
    matched = [d for d in every if flt.matches(d)]
    newest_first = list(reversed(matched))[:limit]
    counts = await queries.replay_counts(console.pool, [d.id for d in newest_first])
    return {
        "total": len(every),
        "stats": stats(matched),
        "items": [summary(d, counts.get(d.id, 0)) for d in newest_first],
        "limit": limit,
        "note": note,
    }


@routes.get("/dead-letters")
async def dead_letters_page(request: web.Request) -> web.Response:
    data = await _dead_letters(request)
    keep = {k: v for k, v in request.query.items() if v}
    return render(request, "deadletters.html", data=data, query=keep)


@routes.get("/api/dead-letters")
async def api_dead_letters(request: web.Request) -> web.Response:
    return as_json(await _dead_letters(request))


@routes.get("/api/dead-letters/stats")
async def api_dead_letter_stats(request: web.Request) -> web.Response:
    data = await _dead_letters(request)
    return as_json({"total": data["total"], **data["stats"]})


async def _dead_letter(request: web.Request) -> dict[str, Any]:
    console = _console(request)
    ident = request.match_info["dl_id"]
    try:
        every, _ = await console.dead_letters.all()
    except UnreachableError as exc:
        raise json_error(503, str(exc)) from None
    found = [d for d in every if d.id == ident]
    if not found:
        raise json_error(404, f"no dead letter {ident!r} in {console.topics.dlq}")
    dl = found[0]
    doc = detail(dl, show_payload=_shows_payloads(request))
    doc["audit"] = await queries.replay_log(console.pool, dead_letter_ids=[dl.id])
    doc["replayed_into"] = await queries.rows_replayed_from(console.pool, [dl.id])
    doc["job_row"] = _visible_row(request, await queries.job_row(console.pool, dl.job_id))
    return doc


@routes.get("/dead-letters/{dl_id}")
async def dead_letter_page(request: web.Request) -> web.Response:
    try:
        dl = await _dead_letter(request)
    except web.HTTPNotFound:
        return render(request, "deadletter.html", status=404, dl=None)
    return render(request, "deadletter.html", dl=dl)


@routes.get("/api/dead-letters/{dl_id}")
async def api_dead_letter(request: web.Request) -> web.Response:
    return as_json(await _dead_letter(request))


@routes.post("/api/replay")
async def api_replay(request: web.Request) -> web.Response:
    """Preview (``dry_run``) or replay the selected dead letters, operators only."""
    require_operator(request)
    console = _console(request)
    settings = console.settings
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError, LookupError, RecursionError, web.RequestPayloadError):
        raise params.BadInput("the body must be JSON (Content-Type: application/json)") from None
    req = params.replay_request(body)
    try:
        flt = parse_filter(req.filters())
    except FilterError as exc:
        raise params.BadInput(str(exc)) from None
    ids = frozenset(req.ids or ())
    if len(ids) > settings.console_replay_max:
        raise params.BadInput(f"at most {settings.console_replay_max} ids per replay")

    def match(dl: DeadLetter) -> bool:
        return flt.matches(dl) and (not ids or dl.id in ids)

    cap = settings.console_replay_max
    opts = ReplayOptions(
        target_topic=console.topics.main,
        dry_run=req.dry_run,
        limit=min(req.limit, cap) if req.limit else cap,
        rate=min(req.rate or settings.console_replay_rate, settings.console_replay_rate),
        reset_attempts=req.reset_attempts,
        force=req.force,
        include_cancelled=req.include_cancelled,
    )
    planned: list[int] = []

    def approve(items: Any) -> bool:
        n = sum(1 for i in items if i.action.value == "replay")
        planned.append(n)
        return n == req.expect

    remote = request.remote
    try:
        async with console.pool.acquire() as conn:
            run = await replay_matching(
                match,
                opts,
                bootstrap=console.bootstrap,
                dlq_topic=console.topics.dlq,
                conn=conn,
                by=console.replayed_by("operator", remote),
                approve=approve,
                options=console.kafka_options,
            )
    except TopicMissingError as exc:
        raise json_error(409, str(exc)) from None
    except UnreachableError as exc:
        raise json_error(503, str(exc)) from None
    preview = plan_json(run.items)
    base = {"matched": len(run.snapshot.matched), "scanned": run.snapshot.scanned, **preview}
    if req.dry_run:
        return as_json({"dry_run": True, "rate": opts.rate, **base})
    if run.refused or (not run.items and req.expect != 0):
        now = planned[0] if planned else 0
        return as_json(
            {
                "error": f"the selection changed since the preview: it would now replay {now},"
                f" not the {req.expect} confirmed; preview again",
                **base,
            },
            status=409,
        )
    console.dead_letters.invalidate()
    counts = run.counts
    return as_json(
        {
            **base,
            "dry_run": False,
            "rate": opts.rate,
            "replayed": counts.replayed if counts else 0,
            "skipped_already_replayed": counts.skipped_replayed if counts else 0,
            "skipped_invalid": counts.skipped_invalid if counts else 0,
            "skipped_cancelled": counts.skipped_cancelled if counts else 0,
            "failed": counts.failed if counts else 0,
        }
    )
