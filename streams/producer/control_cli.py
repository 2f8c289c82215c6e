"""``jobstream cancel``: cancel jobs by id, or the unfinished jobs a filter selects (with a dry
run). The same transaction as ``JobClient.cancel`` and ``POST /jobs/{id}/cancel``, audited as
``cli:user@host``."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import click

from jobstream.models.control import CancelResult, Dedupe, DedupeMode, Progress
from jobstream.models.errors import ResultTimeoutError
from jobstream.models.job import JobEvent, JobStatus
from jobstream.streams.command import (
    KAFKA,
    POSTGRES,
    CommandError,
    command,
    names,
    with_settings,
)
from jobstream.streams.exits import Exit
from jobstream.streams.output import print_table
from jobstream.streams.pg import control as pg_control
from jobstream.streams.producer.control import cancel_jobs, row_waiter, who
from jobstream.streams.producer.timing import parse_duration
from jobstream.streams.services import database_url, kafka_bootstrap
from jobstream.streams.settings import Settings
from jobstream.streams.topics import topic_names

MAX_IDS = 10_000


def _when(name: str, text: str | None) -> datetime | None:
    from jobstream.streams.dlq.filters import FilterError, parse_time

    if text is None:
        return None
    try:
        return parse_time(text, now=datetime.now(UTC))
    except FilterError as exc:
        raise CommandError(f"{name}: {exc}", Exit.USAGE) from None


def _statuses(values: Sequence[str]) -> tuple[JobStatus, ...]:
    out: list[JobStatus] = []
    for value in (v.strip() for raw in values for v in raw.split(",")):
        try:
            status = JobStatus(value)
        except ValueError:
            status = None
        if status not in pg_control.CANCELLABLE:
            allowed = ", ".join(s.value for s in pg_control.CANCELLABLE)
            why = "is finished" if status is not None else "is no status"
            raise CommandError(f"--status: {value!r} {why}; give one of {allowed}", Exit.USAGE)
        assert status is not None
        out.append(status)
    return tuple(out) or pg_control.CANCELLABLE


@command(
    "cancel",
    variables=names(KAFKA, POSTGRES, ("topic_prefix",)),
    short_help="cancel jobs by id, or the unfinished jobs a filter selects",
    help="Cancel the jobs JOB_ID... wherever they are: queued or unknown (they never run), "
    "scheduled or waiting to retry (cancelled now), running (the worker cancels the handler "
    "within about a second), finished (nothing changes). Without ids, the unfinished jobs of "
    "this topic prefix that the filter options select (at least one) are cancelled; --dry-run "
    "lists them and changes nothing. Jobs still queued in Kafka have no row, so only ids "
    "reach them.",
    epilog="Exit codes: 0 done (finished jobs included), 1 nothing matched, 2 bad arguments, "
    "3 Kafka or PostgreSQL unreachable.",
)
@click.argument("job_ids", nargs=-1, metavar="[JOB_ID]...")
@click.option("--type", "types", multiple=True, metavar="TYPE", help="job type (repeatable)")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    metavar="STATUS",
    help="scheduled, running or retrying (repeatable; default: all three)",
)
@click.option("--since", metavar="TIME", help="created at or after (ISO-8601, or an age: 2h)")
@click.option("--until", metavar="TIME", help="created before (ISO-8601, or an age: 30m)")
@click.option("--dedupe-key", metavar="KEY", help="jobs submitted under this dedupe key")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_IDS),
    default=1000,
    show_default=True,
    help="at most this many jobs by filter",
)
@click.option("--dry-run", is_flag=True, help="list the jobs the filter selects, cancel nothing")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@with_settings
def cancel_command(
    settings: Settings,
    job_ids: tuple[str, ...],
    types: tuple[str, ...],
    statuses: tuple[str, ...],
    since: str | None,
    until: str | None,
    dedupe_key: str | None,
    limit: int,
    dry_run: bool,
    as_json: bool,
) -> int:
    by_filter = bool(types or statuses or since or until or dedupe_key)
    if job_ids and by_filter:
        raise CommandError("give job ids or filter options, not both", Exit.USAGE)
    if not job_ids and not by_filter:
        raise CommandError(
            "give job ids, or filter options (--type, --status, --since, --until, "
            "--dedupe-key) to select unfinished jobs",
            Exit.USAGE,
        )
    if job_ids and dry_run:
        raise CommandError("--dry-run lists what a filter selects; give filter options", Exit.USAGE)
    if len(job_ids) > MAX_IDS:
        raise CommandError(f"at most {MAX_IDS} ids at once", Exit.USAGE)
    selection = pg_control.Selection(
        statuses=_statuses(statuses),
        types=tuple(t.strip() for raw in types for t in raw.split(",") if t.strip()),
        since=_when("--since", since),
        until=_when("--until", until),
        dedupe_key=dedupe_key,
        limit=limit,
    )
    dsn = database_url(settings)
    bootstrap = None if dry_run else kafka_bootstrap(settings)
    found, results = asyncio.run(_run(settings, dsn, bootstrap, list(job_ids), selection, dry_run))
    if found is not None and not found:
        click.echo("no unfinished job of this prefix matches", err=True)
        return Exit.FAILED
    if dry_run:
        assert found is not None
        _print_selected(found, as_json)
        return Exit.OK
    _print_results(results, as_json)
    return Exit.OK


async def _run(
    settings: Settings,
    dsn: str,
    bootstrap: str | None,
    job_ids: list[str],
    selection: pg_control.Selection,
    dry_run: bool,
) -> tuple[list[dict[str, Any]] | None, list[CancelResult]]:
    from jobstream.streams.kafka.publisher import Publisher
    from jobstream.streams.kafka.security import client_options
    from jobstream.streams.pg.pool import create_pool

    topics = topic_names(settings.topic_prefix)
    pool = await create_pool(dsn, min_size=1, max_size=8, pooler_mode=settings.db_pooler_mode)
    try:
        found = None
        if not job_ids:
            found = await pg_control.select(pool, topics.main, selection)
            if dry_run or not found:
                return found, []
            job_ids = [r["job_id"] for r in found]
        assert bootstrap is not None
        publisher = Publisher(
            bootstrap, client_id="jobstream-cancel", options=client_options(settings)
        )
        await publisher.start()
        try:
            return found, await cancel_jobs(pool, publisher, topics, job_ids, by=who("cli"))
        finally:
            await publisher.stop()
    finally:
        await pool.close()


def _print_selected(found: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"dry_run": True, "jobs": found}, default=str, indent=2))
        return
    print_table(
        ("job id", "type", "status", "created", "worker", "cancel asked"),
        [
            (
                r["job_id"],
                r["type"] or "-",
                r["status"],
                r["created_at"].isoformat(timespec="seconds") if r["created_at"] else "-",
                r["worker"] or "-",
                "yes" if r["cancel_requested"] else "",
            )
            for r in found
        ],
    )
    click.echo(f"dry run: would cancel {len(found)} job(s)", err=True)


def _print_results(results: list[CancelResult], as_json: bool) -> None:
    if as_json:
        rows = [
            {
                "id": r.job_id,
                "cancel": r.answer.value,
                "status": r.status.value,
                "was": r.was.value if r.was is not None else None,
            }
            for r in results
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    print_table(
        ("job id", "cancel", "status", "was"),
        [
            (r.job_id, r.answer.value, r.status.value, r.was.value if r.was else "no row")
            for r in results
        ],
    )
    counts: dict[str, int] = {}
    for r in results:
        counts[r.answer.value] = counts.get(r.answer.value, 0) + 1
    click.echo(", ".join(f"{n} {answer}" for answer, n in sorted(counts.items())), err=True)


# -- jobstream submit --dedupe-key, jobstream status --wait --------------------------------------


def dedupe_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--dedupe-key/--dedupe-mode/--dedupe-ttl``, handed to the command as ``dedupe``."""

    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        dedupe_key: str | None,
        dedupe_mode: str,
        dedupe_ttl: str | None,
        **kwargs: Any,
    ) -> Any:
        dedupe = None
        if dedupe_key is not None:
            try:
                ttl = parse_duration(dedupe_ttl) if dedupe_ttl is not None else None
                dedupe = Dedupe(dedupe_key, dedupe_mode, ttl)
            except ValueError as exc:
                raise CommandError(f"--dedupe-*: {exc}", Exit.USAGE) from None
        elif dedupe_ttl is not None or dedupe_mode != DedupeMode.SIMPLE:
            raise CommandError("--dedupe-mode and --dedupe-ttl need --dedupe-key", Exit.USAGE)
        if dedupe is not None and kwargs.get("count", 1) != 1:
            raise CommandError("--dedupe-key submits one job: not with --count", Exit.USAGE)
        return fn(*args, dedupe=dedupe, **kwargs)

    for option in reversed(
        (
            click.option(
                "--dedupe-key",
                metavar="KEY",
                help="submit under this key: one job stands for it across every producer",
            ),
            click.option(
                "--dedupe-mode",
                type=click.Choice([m.value for m in DedupeMode]),
                default=DedupeMode.SIMPLE.value,
                show_default=True,
                help="simple: keep the first while unfinished; throttle: ignore new ones for the"
                " ttl; debounce: replace the waiting one's payload and move its time (needs a"
                " delay)",
            ),
            click.option(
                "--dedupe-ttl",
                metavar="DURATION",
                help="how long the key holds: 90, 45s, 10m, 1h (throttle needs it)",
            ),
        )
    ):
        wrapper = option(wrapper)
    return wrapper


def submit_unique(settings: Settings, events: list[JobEvent], dedupe: Dedupe) -> int:
    """``jobstream submit --dedupe-key``: the id of the job that stands on stdout, and on stderr
    whether this submit was folded into it."""
    from jobstream.streams.kafka.publisher import Publisher
    from jobstream.streams.kafka.security import client_options
    from jobstream.streams.pg.pool import create_pool
    from jobstream.streams.producer.control import submit_unique as submit

    [event] = events
    dsn = database_url(settings)
    bootstrap = kafka_bootstrap(settings)
    topic = topic_names(settings.topic_prefix).main

    async def run() -> Any:
        pool = await create_pool(dsn, min_size=1, max_size=1, pooler_mode=settings.db_pooler_mode)
        publisher = Publisher(
            bootstrap, client_id="jobstream-submit", options=client_options(settings)
        )
        try:
            await publisher.start()
            return await submit(pool, publisher, topic, event, dedupe)
        finally:
            await publisher.stop()
            await pool.close()

    try:
        answer = asyncio.run(run())
    except ValueError as exc:  # debounce without a delay
        raise CommandError(f"invalid job: {exc}", Exit.USAGE) from None
    click.echo(answer.job_id)
    if answer.deduplicated:
        click.echo(f"deduplicated: job {answer.job_id} stands for key {dedupe.key!r}", err=True)
    return Exit.OK


def wait_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--wait",
        "wait_s",
        type=click.FloatRange(0, 24 * 3600, min_open=True),
        default=None,
        metavar="SECONDS",
        help="wait at most this long for the job to finish, its progress on stderr",
    )(fn)


async def wait_finished(pool: asyncpg.Pool, job_id: str, wait_s: float) -> bool:
    """Waits for the job's row to be terminal (reading it twice a second), its progress on
    stderr as it changes; False when it has not finished within ``wait_s``."""

    def show(p: Progress) -> None:
        detail = f" {p.detail}" if p.detail else ""
        click.echo(f"progress {p.fraction:.0%}{detail}", err=True)

    waiter = row_waiter(pool, interval_s=0.5)
    try:
        await waiter.result(job_id, timeout=wait_s, on_progress=show)
    except ResultTimeoutError:
        return False
    finally:
        await waiter.close()
    return True
