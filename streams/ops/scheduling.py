"""``jobstream scheduled`` and ``jobstream schedules``: timed work from a terminal.

``scheduled list|retime|run-now`` shows the delayed jobs waiting in PostgreSQL and moves one;
``schedules list|add|pause|resume|remove|run-now`` manages the recurring schedules at run time.
Both need only PostgreSQL: a run-now is a scheduled row due now, which the dispatcher publishes
(the same outbox as every delayed job). Every change is audited (``timed_audit``) as
``cli:<user>@<host>``.

Exit codes: 0 done, 1 no such job or schedule (or nothing listed), 2 bad usage, 3 PostgreSQL
unreachable.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import click

from jobstream.streams.command import (
    JOB_TYPES,
    POSTGRES,
    CommandError,
    SettingsCommand,
    app_option,
    names,
    with_settings,
)
from jobstream.streams.dlq.audit import replayed_by
from jobstream.streams.exits import Exit
from jobstream.streams.output import print_json, print_table
from jobstream.streams.pg import scheduled, schedules
from jobstream.streams.producer.api import ApiError, error_line
from jobstream.streams.producer.timed_api import (
    schedule_spec,
    schedule_view,
    scheduled_view,
    when,
)
from jobstream.streams.producer.timing import parse_duration
from jobstream.streams.services import database_url
from jobstream.streams.settings import Settings
from jobstream.streams.topics import topic_names

T = TypeVar("T")
VARIABLES = names(POSTGRES, ("topic_prefix",))
EPILOG = """\
exit codes:
  0  done
  1  no such job or schedule (or, for list, nothing listed)
  2  bad usage
  3  PostgreSQL unreachable
"""


def _by() -> str:
    return f"cli:{replayed_by()}"


def _run(settings: Settings, work: Callable[[asyncpg.Pool, str], Awaitable[T]]) -> T:
    """``work(pool, main topic)`` on a small pool; a database that does not answer ends the
    command with one line and exit 3."""
    from jobstream.streams.pg.pool import create_pool

    dsn = database_url(settings)
    topic = topic_names(settings.topic_prefix, settings.retry_tiers_s).main

    async def run() -> T:
        pool = await create_pool(dsn, min_size=1, max_size=2, pooler_mode=settings.db_pooler_mode)
        try:
            return await work(pool, topic)
        finally:
            await pool.close()

    try:
        return asyncio.run(run())
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
        why = f"PostgreSQL unreachable: {type(exc).__name__}"
        raise CommandError(why, Exit.UNREACHABLE) from None


def _when(text: str, name: str) -> datetime:
    try:
        return when(text, datetime.now(UTC), name)
    except ApiError as exc:
        raise CommandError(error_line(exc), Exit.USAGE) from None


def _sub(
    group: click.Group, name: str, short_help: str, variables: tuple[str, ...] = VARIABLES
) -> Callable[[Callable[..., Any]], click.Command]:
    """A subcommand whose help lists the variables it reads and the exit codes."""
    return group.command(
        name, cls=SettingsCommand, variables=variables, epilog=EPILOG, short_help=short_help
    )


def _short(value: str | None) -> str:
    return value[:19].replace("T", " ") + "Z" if value else "-"


# --- jobstream scheduled ---------------------------------------------------------------------


@click.group("scheduled", short_help="delayed jobs waiting for their time: list, re-time, run now")
def scheduled_group() -> None:
    """Delayed jobs kept as scheduled rows until their time (the dispatcher publishes them)."""


@_sub(scheduled_group, "list", "list scheduled jobs, soonest first")
@click.option("--type", "job_type", help="only jobs of this type")
@click.option("--due-after", help="due at or after: ISO-8601 with offset, or a duration from now")
@click.option(
    "--due-before", help="due before: ISO-8601 with offset, or a duration (10m: within 10 min)"
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table")
@with_settings
def scheduled_list(
    settings: Settings,
    job_type: str | None,
    due_after: str | None,
    due_before: str | None,
    limit: int,
    as_json: bool,
) -> int:
    after = _when(due_after, "--due-after") if due_after else None
    before = _when(due_before, "--due-before") if due_before else None

    async def work(pool: asyncpg.Pool, topic: str) -> tuple[list[dict[str, Any]], datetime]:
        rows = await scheduled.listed(
            pool, topic, job_type=job_type, due_after=after, due_before=before, limit=limit
        )
        now: datetime = await pool.fetchval("SELECT now()")
        return rows, now

    rows, now = _run(settings, work)
    items = [scheduled_view(r, now) for r in rows]
    if as_json:
        print_json(items)
    else:
        print_table(
            ["ID", "TYPE", "RUN AT", "DUE IN", "EXPIRES AT", "DISPATCHED"],
            [
                [
                    i["id"], i["type"] or "-", _short(i["run_at"]), _seconds(i["due_in_s"]),
                    _short(i["expires_at"]), _short(i["dispatched_at"]),
                ]
                for i in items
            ],
        )  # fmt: skip
    return Exit.OK if items else Exit.FAILED


def _seconds(value: float) -> str:
    if value <= 0:
        return "due"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.1f}s"


def _move(settings: Settings, job_id: str, run_at: datetime | None) -> int:
    async def work(pool: asyncpg.Pool, topic: str) -> scheduled.Retimed:
        return await scheduled.move(pool, topic, job_id, run_at, by=_by())

    try:
        moved = _run(settings, work)
    except scheduled.NotScheduledError as exc:
        raise CommandError(str(exc), Exit.FAILED) from None
    except scheduled.WouldExpireError as exc:
        raise CommandError(str(exc), Exit.USAGE) from None
    click.echo(f"{moved.job_id}: run_at {moved.run_at.isoformat()} (was {moved.was.isoformat()})")
    return Exit.OK


@_sub(scheduled_group, "retime", "move a scheduled job to another time")
@click.argument("job_id")
@click.option("--at", "at", help="the new time: ISO-8601 with its offset")
@click.option("--in", "delay", help="the new time as a duration from now: 90s, 10m, 2h")
@with_settings
def scheduled_retime(settings: Settings, job_id: str, at: str | None, delay: str | None) -> int:
    if (at is None) == (delay is None):
        raise CommandError("give --at TIME or --in DURATION", Exit.USAGE)
    if at is not None:
        run_at = _when(at, "--at")
    else:
        assert delay is not None
        try:
            run_at = datetime.now(UTC) + parse_duration(delay)
        except ValueError as exc:
            raise CommandError(f"--in: {exc}", Exit.USAGE) from None
    return _move(settings, job_id, run_at)


@_sub(scheduled_group, "run-now", "make a scheduled job due now")
@click.argument("job_id")
@with_settings
def scheduled_run_now(settings: Settings, job_id: str) -> int:
    return _move(settings, job_id, None)


# --- jobstream schedules -------------------------------------------------------------------


@click.group(
    "schedules", short_help="recurring schedules: list, add, pause, resume, remove, run-now"
)
def schedules_group() -> None:
    """Recurring schedules: one job per tick of a cron expression (in an IANA time zone) or
    of a fixed interval. Those declared in the app are kept in step with its code; these
    commands manage them and add others at run time."""


@_sub(schedules_group, "list", "list schedules with their next and last fire times")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table")
@with_settings
def schedules_list(settings: Settings, as_json: bool) -> int:
    async def work(pool: asyncpg.Pool, topic: str) -> list[schedules.StoredSchedule]:
        return await schedules.listed(pool, topic)

    found = [schedule_view(s) for s in _run(settings, work)]
    if as_json:
        print_json(found)
    else:
        print_table(
            ["NAME", "TYPE", "RULE", "MISSED", "STATE", "NEXT", "LAST", "FIRED", "SOURCE"],
            [
                [
                    v["name"], v["job_type"], v["rule"], _missed(v),
                    "paused" if v["paused"] else "active", _short(v["next_at"]),
                    _short(v["last_at"]), str(v["fired"]), v["source"],
                ]
                for v in found
            ],
        )  # fmt: skip
    return Exit.OK if found else Exit.FAILED


def _missed(view: dict[str, Any]) -> str:
    if view["missed"] == "catch_up":
        return f"catch_up {view['catch_up_max']}"
    return str(view["missed"])


@_sub(schedules_group, "add", "add a schedule at run time", names(VARIABLES, JOB_TYPES))
@click.argument("name")
@click.option("--type", "job_type", required=True, help="the job type each tick runs")
@click.option("--payload", default="{}", show_default=True, help="the jobs' payload, a JSON object")
@click.option("--cron", help="a cron expression, read in --timezone: '*/5 * * * *'")
@click.option("--every", help="a fixed interval instead: 30s, 10m, 1h (counted from the epoch)")
@click.option("--timezone", default="UTC", show_default=True, help="an IANA zone for --cron")
@click.option(
    "--missed",
    type=click.Choice(["skip", "once", "catch_up"]),
    default="skip",
    show_default=True,
    help="ticks missed while nothing ran: skip them, run once, or catch up",
)
@click.option(
    "--catch-up-max",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="with --missed catch_up: run at most this many of the missed ticks",
)
@app_option
@with_settings
def schedules_add(
    settings: Settings,
    name: str,
    job_type: str,
    payload: str,
    cron: str | None,
    every: str | None,
    timezone: str,
    missed: str,
    catch_up_max: int,
) -> int:
    from jobstream.agents.catalog import default_registry

    if (cron is None) == (every is None):
        raise CommandError("give --cron EXPR or --every DURATION", Exit.USAGE)
    try:
        body: dict[str, Any] = {
            "name": name,
            "type": job_type,
            "payload": json.loads(payload),
            "cron": cron,
            "every_s": parse_duration(every).total_seconds() if every is not None else None,
            "timezone": timezone,
            "missed": missed,
            "catch_up_max": catch_up_max,
        }
    except ValueError as exc:  # a JSONDecodeError, or a duration that is none
        raise CommandError(f"--payload/--every: {exc}", Exit.USAGE) from None
    try:
        spec = schedule_spec(body, default_registry(settings))
    except ApiError as exc:
        raise CommandError(f"invalid schedule: {error_line(exc)}", Exit.USAGE) from None

    async def work(pool: asyncpg.Pool, topic: str) -> schedules.StoredSchedule | None:
        now: datetime = await pool.fetchval("SELECT now()")
        if not await schedules.add(pool, topic, spec, now, by=_by()):
            return None
        return await schedules.get(pool, topic, name)

    stored = _run(settings, work)
    if stored is None:
        taken = f"a schedule {name!r} exists: remove it first or pick another name"
        raise CommandError(taken, Exit.USAGE)
    click.echo(f"{name}: {spec.rule}, next at {stored.next_at.isoformat()}")
    return Exit.OK


def _pause(settings: Settings, name: str, paused: bool) -> int:
    async def work(pool: asyncpg.Pool, topic: str) -> schedules.StoredSchedule | None:
        now: datetime = await pool.fetchval("SELECT now()")
        if not await schedules.set_paused(pool, topic, name, paused, now, by=_by()):
            return None
        return await schedules.get(pool, topic, name)

    stored = _run(settings, work)
    if stored is None:
        raise CommandError(f"no schedule {name!r}", Exit.FAILED)
    if paused:
        click.echo(f"{name}: paused")
    else:
        click.echo(f"{name}: active, next at {stored.next_at.isoformat()}")
    return Exit.OK


def _simple(name: str, short_help: str) -> Callable[[Callable[..., int]], click.Command]:
    def deco(fn: Callable[..., int]) -> click.Command:
        return _sub(schedules_group, name, short_help)(click.argument("name")(with_settings(fn)))

    return deco


@_simple("pause", "stop firing a schedule (its next ticks are not run)")
def schedules_pause(settings: Settings, name: str) -> int:
    return _pause(settings, name, True)


@_simple("resume", "fire a paused schedule again, from its next tick after now")
def schedules_resume(settings: Settings, name: str) -> int:
    return _pause(settings, name, False)


@_simple("remove", "remove a schedule added at run time")
def schedules_remove(settings: Settings, name: str) -> int:
    async def work(pool: asyncpg.Pool, topic: str) -> bool:
        return await schedules.remove(pool, topic, name, by=_by(), app_too=False)

    try:
        found = _run(settings, work)
    except schedules.AppScheduleError as exc:
        raise CommandError(str(exc), Exit.USAGE) from None
    if not found:
        raise CommandError(f"no schedule {name!r}", Exit.FAILED)
    click.echo(f"{name}: removed")
    return Exit.OK


@_simple("run-now", "run one job of a schedule now (its ticks are unchanged)")
def schedules_run_now(settings: Settings, name: str) -> int:
    async def work(pool: asyncpg.Pool, topic: str) -> str:
        return await schedules.run_now(pool, topic, name, by=_by())

    try:
        job_id = _run(settings, work)
    except schedules.ScheduleNotFoundError as exc:
        raise CommandError(str(exc), Exit.FAILED) from None
    click.echo(job_id)
    return Exit.OK


# --- jobstream submit's timing flags ----------------------------------------------------------


def timing_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--delay``/``--at`` and ``--ttl``/``--expires-at`` for ``jobstream submit``; the command
    receives them in ``**timing`` and hands :func:`submit_timing` of them to the validation."""
    for option in reversed(
        (
            click.option(
                "--delay", metavar="DURATION", help="run it this long from now: 90s, 10m, 2h"
            ),
            click.option(
                "--at", "run_at", metavar="TIME", help="run it at this time: ISO-8601 with offset"
            ),
            click.option(
                "--ttl", metavar="DURATION", help="never run it if not started within this long"
            ),
            click.option(
                "--expires-at", metavar="TIME", help="never run it if not started by then"
            ),
        )
    ):
        fn = option(fn)
    return fn


def submit_timing(timing: dict[str, str | None]) -> dict[str, Any]:
    """The flags as the fields of ``POST /jobs`` (``delay_s``, ``run_at``, ``ttl_s``,
    ``expires_at``), checked there by the same rules; a duration that is none exits 2."""
    fields: dict[str, Any] = {}
    for flag, field in (("delay", "delay_s"), ("ttl", "ttl_s")):
        text = timing.get(flag)
        if text is not None:
            try:
                fields[field] = parse_duration(text).total_seconds()
            except ValueError as exc:
                raise CommandError(f"--{flag}: {exc}", Exit.USAGE) from None
    for flag, field in (("run_at", "run_at"), ("expires_at", "expires_at")):
        if timing.get(flag) is not None:
            fields[field] = timing[flag]
    return fields
