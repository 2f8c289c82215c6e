"""The ``jobstream`` command: one entry point, one subcommand per role."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from streams.console.server import add_console_parser
from streams.dlq.cli import add_dlq_parser
from streams.exits import Exit
from streams.ops.backup import add_backup_parser
from streams.ops.doctor import add_doctor_parser
from streams.producer.server import add_api_parser
from streams.services import database_url, kafka_bootstrap, resolve
from streams.settings import Settings


def _preflight(settings: Settings, bootstrap: str, dsn: str) -> None:
    """A refused handshake ends the command with one line, before faust starts retrying it."""
    from streams.services import preflight

    asyncio.run(preflight(settings, bootstrap=bootstrap, dsn=dsn))


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.observability import configure_logging
    from streams.worker.service import run_worker

    configure_logging(settings.log_level)
    bootstrap, dsn = resolve(settings)
    _preflight(settings, bootstrap, dsn)
    run_worker(settings, bootstrap, dsn)
    return Exit.OK


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from streams.pg.migrations import migrate
    from streams.pg.pool import create_pool

    dsn = database_url(settings)

    async def run() -> list[str]:
        pool = await create_pool(dsn, min_size=1, max_size=1, pooler_mode=settings.db_pooler_mode)
        try:
            async with pool.acquire() as conn:
                return await migrate(conn)
        finally:
            await pool.close()

    applied = asyncio.run(run())
    print("applied: " + (", ".join(applied) if applied else "nothing (schema up to date)"))
    return Exit.OK


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from streams.kafka.security import client_options
    from streams.producer.client import JobClient

    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        print(f"--payload is not JSON: {exc}", file=sys.stderr)
        return Exit.USAGE
    if not isinstance(payload, dict):
        print("--payload must be a JSON object", file=sys.stderr)
        return Exit.USAGE
    bootstrap = kafka_bootstrap(settings)

    async def run() -> list[str]:
        options = client_options(settings)
        async with JobClient(
            bootstrap, topic_prefix=settings.topic_prefix, options=options
        ) as client:
            events = [
                client.build(args.type, payload, job_id=args.id if args.count == 1 else None)
                for _ in range(args.count)
            ]
            return await client.submit_many(events)

    for job_id in asyncio.run(run()):
        print(job_id)
    return Exit.OK


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from streams.pg.pool import create_pool
    from streams.pg.results import fetch_job

    dsn = database_url(settings)

    async def run() -> dict[str, Any] | None:
        pool = await create_pool(dsn, min_size=1, max_size=1, pooler_mode=settings.db_pooler_mode)
        try:
            return await fetch_job(pool, args.job_id)
        finally:
            await pool.close()

    row = asyncio.run(run())
    if row is None:
        print(f"job {args.job_id} has no row yet (queued, running, or unknown)", file=sys.stderr)
        return Exit.FAILED
    print(json.dumps(row, default=str, indent=2))
    return Exit.OK


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from streams.dev.cli import cmd_dev as run  # development only, never loaded by the others

    return run(args, settings)


def cmd_fake_openrouter(args: argparse.Namespace, settings: Settings) -> int:
    from streams.dev.cli import cmd_fake_openrouter as run

    return run(args, settings)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streams.dev.cli import cmd_demo as run

    return run(args, settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobstream",
        description="Kafka consumer-group job runner. Settings come from JOBSTREAM_* variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("worker", help="run one consumer-group replica").set_defaults(fn=cmd_worker)
    sub.add_parser("migrate", help="create or update the PostgreSQL schema").set_defaults(
        fn=cmd_migrate
    )

    p = sub.add_parser("submit", help="publish job events")
    p.add_argument("type", help="job type, e.g. echo, sleep, llm.chat, http.webhook")
    p.add_argument("--payload", default="{}", help="JSON object")
    p.add_argument("--id", help="job id (default: a new uuid)")
    p.add_argument("--count", type=int, default=1, help="publish this many copies")
    p.set_defaults(fn=cmd_submit)

    p = sub.add_parser("status", help="show a job's row")
    p.add_argument("job_id")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("dev", help="the local Kafka + PostgreSQL stack")
    p.add_argument("action", choices=["up", "down", "status", "env", "fetch", "kafka-tool"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="kafka-tool: NAME ARGS...")
    p.set_defaults(fn=cmd_dev)

    p = sub.add_parser("fake-openrouter", help="run the fake OpenRouter server", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_fake_openrouter)

    p = sub.add_parser("demo", help="stack + worker(s) + a batch of jobs, with progress")
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--type", default="echo", choices=["echo", "llm.chat"])
    p.add_argument("--replicas", type=int, default=1)
    p.set_defaults(fn=cmd_demo)

    add_api_parser(sub)
    add_dlq_parser(sub)
    add_console_parser(sub)
    add_doctor_parser(sub)
    add_backup_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:
        print(f"invalid JOBSTREAM_* settings: {exc}", file=sys.stderr)
        return Exit.USAGE
    # aiokafka logs each refused connection; with no handler set up (every command but the
    # long-running ones) Python would print those to stderr next to our one line
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())
    try:
        result: int = args.fn(args, settings)
    except Exception as exc:
        from models.errors import ConfigurationError
        from streams.services import explain

        line = asyncio.run(explain(exc, settings, settings.kafka_bootstrap))
        if line is None:
            raise
        print(line, file=sys.stderr)
        # settings that cannot work together are a usage error; a refusal by a server is not
        return Exit.USAGE if type(exc) is ConfigurationError else Exit.UNREACHABLE
    return result


if __name__ == "__main__":
    raise SystemExit(main())
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
    from models.errors import ConfigurationError
    from streams.services import explain

