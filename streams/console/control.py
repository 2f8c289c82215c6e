"""Job control in the console: a job's progress, cancel state and dedupe key on its page, and
the operators' cancel button (the transaction of :mod:`jobstream.streams.pg.control`, audited
as ``console:operator@host from <address>``, as a replay is)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from jobstream.models.control import CancelAnswer
from jobstream.models.job import JobStatus
from jobstream.streams.console import params, queries
from jobstream.streams.console.access import Role, json_error, require_operator, session_of
from jobstream.streams.console.context import Console
from jobstream.streams.pg import control as pg_control
from jobstream.streams.pg import dedupe as pg_dedupe

routes = web.RouteTableDef()

ANSWERS = {
    CancelAnswer.CANCELLED: "Cancelled: it had not started, and it never will.",
    CancelAnswer.REQUESTED: "Cancel requested: its worker stops the handler within about a second.",
    CancelAnswer.FINISHED: "It had finished already: nothing to cancel.",
}


async def job_control(
    console: Console, request: web.Request, job_id: str, row: dict[str, Any] | None
) -> dict[str, Any]:
    """What the job page shows of control: whether it may be cancelled (by whom), its progress,
    a pending cancel, the dedupe key that names it, and who cancelled it."""
    status = JobStatus(row["status"]) if row is not None else None
    return {
        "cancellable": status is None or not status.terminal,
        "operator": session_of(request).role is Role.OPERATOR,
        "progress": row.get("progress") if row else None,
        "progress_detail": row.get("progress_detail") if row else None,
        "progress_at": row.get("progress_at") if row else None,
        "cancel_requested_at": row.get("cancel_requested_at") if row else None,
        "dedupe": await pg_dedupe.key_of(console.pool, job_id)
        if row and row.get("dedupe_key")
        else None,
        "audit": await pg_control.audit_of(console.pool, job_id),
    }


@routes.post("/api/jobs/{job_id}/cancel")
async def api_cancel(request: web.Request) -> web.Response:
    """Cancel one job, operators only: 200 cancelled or requested, 409 finished already."""
    from jobstream.streams.console.routes import CONSOLE_KEY, as_json

    require_operator(request)
    console = request.app[CONSOLE_KEY]
    job_id = params.job_id(request.match_info["job_id"])
    if not params.all_prefixes(request.query) and await _elsewhere(console, job_id):
        raise json_error(404, f"job {job_id!r} belongs to another topic prefix (scope=all)")
    by = console.replayed_by("operator", request.remote)
    async with console.pool.acquire() as conn:
        done = await pg_control.cancel(conn, job_id, topic=console.topics.main, by=by)
    record = pg_control.outcome_of(done)
    if record is not None:
        try:
            await console.send_outcome(*record)
        except Exception as exc:  # noqa: BLE001 - the row is cancelled; its records re-emit it
            raise json_error(
                503, f"cancelled, but its outcome record was not published: {type(exc).__name__}"
            ) from None
    r = done.result
    body = {
        "id": job_id,
        "cancel": r.answer.value,
        "status": r.status.value,
        "was": r.was.value if r.was is not None else None,
        "message": ANSWERS[r.answer],
    }
    if r.answer is CancelAnswer.FINISHED:  # a 4xx: in the console's error shape as well
        return as_json({"error": f"{ANSWERS[r.answer]} ({r.status.value})", **body}, status=409)
    return as_json(body)


async def _elsewhere(console: Console, job_id: str) -> bool:
    """The job has a row, and it is another topic prefix's (the console shows only its own)."""
    if await queries.job_row(console.pool, job_id) is None:
        return False
    return await queries.job_row(console.pool, job_id, prefix=console.topics.prefix) is None
