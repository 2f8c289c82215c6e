"""The ``jobstream`` command: one entry point, one subcommand per role.

The commands are click commands; each role's module declares its own (``dlq``, ``console``,
``api``, ``doctor``, ``backup``/``restore``/``prune``) and this module mounts them. The
development commands (``dev``, ``demo``, ``fake-openrouter``) are loaded from
:mod:`jobstream.streams.dev.cli` only when one of them (or the command list) is asked for, so a
production command never imports :mod:`jobstream.streams.dev`; in an install without it (no
``[dev]`` extra) they say in one line how to get it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from jobstream.models.control import Dedupe
from jobstream.streams.command import (
    JOB_TYPES,
    KAFKA,
    LOGS,
    POOL,
    POSTGRES,
    TOPICS,
    CommandError,
    app_option,
    command,
    names,
    with_settings,
)
from jobstream.streams.console.server import console_command
from jobstream.streams.dlq.cli import dlq_group
from jobstream.streams.exits import Exit
from jobstream.streams.ops.backup import backup_command, prune_command, restore_command
from jobstream.streams.ops.doctor import doctor_command
from jobstream.streams.ops.scheduling import (
    scheduled_group,
    schedules_group,
    submit_timing,
    timing_options,
)
from jobstream.streams.output import print_json
from jobstream.streams.producer.control_cli import (
    cancel_command,
    dedupe_options,
    submit_unique,
    wait_finished,
    wait_option,
)
from jobstream.streams.producer.server import api_command
from jobstream.streams.services import database_url, kafka_bootstrap, resolve
from jobstream.streams.settings import Settings

WORKER_VARIABLES = names(
    KAFKA,
    POSTGRES,
    POOL,
    TOPICS,
    JOB_TYPES,
    (
        "group_id",
        "concurrency",
        "buffer_maxsize",
        "shutdown_grace_s",
        "commit_interval_s",
        "max_poll_interval_s",
        "session_timeout_s",
        "claim_lease_s",
        "durable_step_timeout_s",
        "durable_step_deadline_s",
        "batch_max_size",
        "batch_max_delay_ms",
        "rate_limits",
        "rate_limit_lease",
        "lag_sample_interval_s",
        "retention_enabled",
        "retention_interval_s",
        "retention_batch_size",
        "retention_succeeded_age_s",
        "retention_succeeded_max_rows",
        "retention_dead_lettered_age_s",
        "retention_dead_lettered_max_rows",
        "retention_include_unexpired_dead_letters",
        "web_host",
        "web_port",
        "api_token",
        "api_max_body_bytes",
        "http_header_timeout_s",
        "http_body_timeout_s",
        "http_keepalive_timeout_s",
        "http_max_connections",
        "state_dir",
    ),
    LOGS,
)
SUBMIT_VARIABLES = names(KAFKA, ("topic_prefix", "max_event_bytes"), JOB_TYPES, POSTGRES)


def _preflight(settings: Settings, bootstrap: str, dsn: str) -> None:
    """A refused handshake ends the command with one line, before faust starts retrying it."""
    from jobstream.streams.services import preflight

    asyncio.run(preflight(settings, bootstrap=bootstrap, dsn=dsn))


@command(
    "worker",
    variables=WORKER_VARIABLES,
    short_help="run one consumer-group replica",
    help="Run one consumer-group replica: consume the job topics, run the jobs, write their "
    "rows, serve /health, /ready, /metrics and the producer API on the web port. Stops "
    "draining on SIGTERM.",
)
@app_option
@with_settings
def cmd_worker(settings: Settings) -> int:
    from jobstream.streams.observability import configure_logging
    from jobstream.streams.worker.service import run_worker

    configure_logging(settings.log_level)
    bootstrap, dsn = resolve(settings)
    _preflight(settings, bootstrap, dsn)
    run_worker(settings, bootstrap, dsn)
    return Exit.OK


@command(
    "migrate",
    variables=("database_url", "db_pooler_mode"),
    short_help="create or update the PostgreSQL schema",
    help="Apply the schema migrations not yet applied; prints which ones (or that the schema "
    "is up to date).",
)
@with_settings
def cmd_migrate(settings: Settings) -> int:
    from jobstream.streams.pg.migrations import migrate
    from jobstream.streams.pg.pool import create_pool

    dsn = database_url(settings)

    async def run() -> list[str]:
        pool = await create_pool(dsn, min_size=1, max_size=1, pooler_mode=settings.db_pooler_mode)
        try:
            async with pool.acquire() as conn:
                return await migrate(conn)
        finally:
            await pool.close()

    applied = asyncio.run(run())
    click.echo("applied: " + (", ".join(applied) if applied else "nothing (schema up to date)"))
    return Exit.OK


def _payload(text: str) -> dict[str, Any]:
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--payload is not JSON: {exc}", Exit.USAGE) from None
    if not isinstance(payload, dict):
        raise CommandError("--payload must be a JSON object", Exit.USAGE)
    return payload


@command(
    "submit",
    variables=SUBMIT_VARIABLES,
    short_help="publish job events",
    help="Publish COUNT events of job type TYPE and print their ids, one a line. The type and "
    "payload are checked as POST /jobs checks them; a job it would refuse exits 2 and "
    "nothing is published.",
)
@click.argument("job_type", metavar="TYPE")
@click.option("--payload", default="{}", show_default=True, help="the job's payload, a JSON object")
@click.option(
    "--id", "job_id", metavar="ID", help="job id (default: a new uuid; only with --count 1)"
)
@click.option(
    "--count", type=click.IntRange(min=1), default=1, show_default=True, help="publish this many"
)
@timing_options
@dedupe_options
@app_option
@with_settings
def cmd_submit(
    settings: Settings,
    job_type: str,
    payload: str,
    job_id: str | None,
    count: int,
    dedupe: Dedupe | None,
    **timing: str | None,
) -> int:
    from jobstream.agents.catalog import default_registry
    from jobstream.streams.kafka.security import client_options
    from jobstream.streams.producer.api import ApiError, error_line, validate_job
    from jobstream.streams.producer.client import JobClient

    body = _payload(payload)
    registry = default_registry(settings)
    item: dict[str, Any] = {"type": job_type, "payload": body, **submit_timing(timing)}
    try:
        events = [
            validate_job(
                {**item, "id": job_id if count == 1 else None}, registry, settings.max_event_bytes
            )
            for _ in range(count)
        ]
    except ApiError as exc:
        raise CommandError(f"invalid job: {error_line(exc)}", Exit.USAGE) from None
    if dedupe is not None:
        return submit_unique(settings, events, dedupe)
    bootstrap = kafka_bootstrap(settings)

    async def run() -> list[str]:
        options = client_options(settings)
        async with JobClient(
            bootstrap, topic_prefix=settings.topic_prefix, options=options
        ) as client:
            return await client.submit_many(events)

    for submitted in asyncio.run(run()):
        click.echo(submitted)
    return Exit.OK


@command(
    "status",
    variables=("database_url", "db_pooler_mode"),
    short_help="show a job's row",
    help="Print the row of job JOB_ID as JSON (with its progress); exits 1 when the job has no "
    "row yet (queued in Kafka or waiting for a handler slot, or unknown). With --wait, waits "
    "for the job to finish first, printing its progress on stderr, and exits 1 when it has not "
    "finished by then.",
)
@click.argument("job_id")
@wait_option
@with_settings
def cmd_status(settings: Settings, job_id: str, wait_s: float | None) -> int:
    from jobstream.streams.pg.pool import create_pool
    from jobstream.streams.pg.results import fetch_job

    dsn = database_url(settings)

    async def run() -> tuple[dict[str, Any] | None, bool]:
        pool = await create_pool(dsn, min_size=1, max_size=2, pooler_mode=settings.db_pooler_mode)
        try:
            finished = await wait_finished(pool, job_id, wait_s) if wait_s else True
            return await fetch_job(pool, job_id), finished
        finally:
            await pool.close()

    row, finished = asyncio.run(run())
    if row is None:
        raise CommandError(f"job {job_id} has no row yet (queued, or unknown)", Exit.FAILED)
    print_json(row)
    if not finished:
        click.echo(f"job {job_id} has not finished within {wait_s:g}s", err=True)
        return Exit.FAILED
    return Exit.OK


DEV_COMMANDS = {
    "dev": "the local Kafka + PostgreSQL stack (development only)",
    "demo": "stack + worker(s) + a batch of jobs, with progress (development only)",
    "fake-openrouter": "run the fake OpenRouter server (development only)",
}
DEV_TOOLING = "jobstream.streams.dev"
"""Not in a production install: the jobstream-dev distribution, which the ``[dev]`` extra pulls
in, provides it (a checkout's editable install has it too)."""


def dev_tooling_installed() -> bool:
    """Whether :mod:`jobstream.streams.dev` can be imported, found without importing it."""
    return importlib.util.find_spec(DEV_TOOLING) is not None


def _not_installed(name: str) -> click.Command:
    """Stands in for a development command in an install without the dev tooling: whatever the
    arguments, one line saying how to get it, exit 2. Hidden from the command list."""

    def run(args: tuple[str, ...]) -> None:
        raise CommandError(
            f"`jobstream {name}` is development tooling, not part of this install: "
            "pip install 'jobstream[dev]' (or run it from a checkout: make venv)",
            Exit.USAGE,
        )

    return click.Command(
        name,
        callback=run,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        context_settings={"ignore_unknown_options": True},
        add_help_option=False,
        hidden=True,
    )


class Jobstream(click.Group):
    """The root group; the development commands come from :mod:`jobstream.streams.dev.cli`
    when asked, and say how to install them where they are not."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*self.commands, *DEV_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in DEV_COMMANDS:
            if not dev_tooling_installed():
                return _not_installed(cmd_name)
            from jobstream.streams.dev.cli import (
                commands,  # development only, never loaded by the others
            )

            return commands()[cmd_name]
        return super().get_command(ctx, cmd_name)


@click.group(
    "jobstream",
    cls=Jobstream,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
def cli() -> None:
    """Kafka consumer-group job runner. Settings come from JOBSTREAM_* variables; each
    command's --help lists the ones it reads."""


for _cmd in (
    cmd_worker,
    cmd_migrate,
    cmd_submit,
    cmd_status,
    cancel_command,
    api_command,
    console_command,
    dlq_group,
    doctor_command,
    backup_command,
    restore_command,
    prune_command,
    scheduled_group,
    schedules_group,
):
    cli.add_command(_cmd)


def main(argv: Sequence[str] | None = None) -> int:
    # aiokafka logs each refused connection, asyncio a refused handshake's future nobody
    # awaited; with no handler set up (every command but the long-running ones) Python would
    # print those to stderr next to our one line
    for name in ("aiokafka", "asyncio"):
        logging.getLogger(name).addHandler(logging.NullHandler())
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = cli.main(args, prog_name="jobstream", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("interrupted", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last resort of every command: one line naming the failure, no traceback
        return _one_line(exc)
    return int(result) if isinstance(result, int) else Exit.OK


def _one_line(exc: Exception) -> int:
    """A refused or missing service, or settings that cannot work together: one line naming
    what to set; anything else is a bug and keeps its traceback."""
    from jobstream.models.errors import ConfigurationError
    from jobstream.streams.services import explain

    try:
        settings = Settings()
    except ValueError:
        raise exc from None
    line = asyncio.run(explain(exc, settings, settings.kafka_bootstrap))
    if line is None:
        raise exc
    click.echo(line, err=True)
    # settings that cannot work together are a usage error; a refusal by a server is not
    return Exit.USAGE if type(exc) is ConfigurationError else Exit.UNREACHABLE


if __name__ == "__main__":
    raise SystemExit(main())
