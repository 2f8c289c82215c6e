"""``jobstream dlq``: inspect and replay the dead-letter topic from a terminal.

The exit codes are part of the interface (scripts and runbooks branch on them), so they are
spelled out in ``--help`` and mapped in one place, :func:`run_dlq_async`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import click

from jobstream.models.deadletter import DeadLetter, DeadLetterReason, unb64
from jobstream.streams.command import KAFKA, command, with_settings
from jobstream.streams.command import names as settings_names
from jobstream.streams.dlq.filters import DeadLetterFilter, FilterError, decoded_key
from jobstream.streams.dlq.replay import Action, ReplayCounts, ReplayOptions, replay_matching
from jobstream.streams.dlq.snapshot import (
    Snapshot,
    TopicMissingError,
    UnreachableError,
    first_line,
    read_snapshot,
)
from jobstream.streams.exits import Exit
from jobstream.streams.kafka.security import client_options
from jobstream.streams.output import Progress, print_table
from jobstream.streams.services import ServiceUnavailable, database_url, kafka_bootstrap
from jobstream.streams.settings import Settings
from jobstream.streams.topics import topic_names

EPILOG = """\
exit codes:
  0  success (replay: every selected dead letter republished or skipped by rule)
  1  no dead letter matches the filters
  2  bad filters or usage, or a topic missing (wrong --prefix?)
  3  Kafka or PostgreSQL unreachable
  4  replay partially failed (see the summary line and the messages above it)

filters combine with AND; a repeated flag or a comma list is an OR:
  --type a,b --reason exhausted   type a or b, and reason exhausted
times (--since inclusive, --until exclusive) compare with the dead letter's last failure;
they take ISO-8601 (2024-05-01T12:00Z; naive means UTC) or an age: 45s, 30m, 2h, 7d, 1w.
"""

REPLAY_EPILOG = (
    EPILOG
    + """
replay republishes each dead letter's ORIGINAL event to the main topic with the header
jobstream-replayed-from: <dead letter id>, keeping the original key and headers and
clearing not_before. --reset-attempts sets attempt back to 1 and keeps the history (the
evidence of earlier failures). Records that are not a valid JobEvent are skipped unless
--include-invalid, which republishes their bytes unchanged. Each replay is recorded in the
PostgreSQL table dlq_replays after the broker acknowledged it: a dead letter is republished
once unless --force, and a crash between the two republishes it at most once more.
--limit counts republished dead letters, oldest failure first. A dead letter whose job was
cancelled since is skipped (skip-cancelled) unless --include-cancelled: then the job is
reopened in the replay's transaction (audited in control_audit) and runs again.
"""
)


@dataclass(frozen=True)
class DlqArgs:
    """One ``dlq`` subcommand's arguments, as parsed by click (or built by a test)."""

    dlq_command: str
    dlq_prefix: str | None = None
    as_json: bool = False
    types: Sequence[str] | None = None
    reasons: Sequence[str] | None = None
    error_classes: Sequence[str] | None = None
    since: str | None = None
    until: str | None = None
    keys: Sequence[str] | None = None
    limit: int | None = None
    ident: str = ""
    dry_run: bool = False
    rate: float = 100.0
    reset_attempts: bool = False
    force: bool = False
    include_invalid: bool = False
    include_cancelled: bool = False

    @classmethod
    def of(cls, command: str, params: Mapping[str, Any]) -> DlqArgs:
        """From click's parameters; a repeatable flag never given is None, as if absent."""
        fields: dict[str, Any] = {k: (None if v == () else v) for k, v in params.items()}
        return cls(dlq_command=command, **fields)


DLQ_VARIABLES = settings_names(KAFKA, ("topic_prefix",))
REPLAY_VARIABLES = settings_names(KAFKA, ("topic_prefix", "database_url"))


def _filters(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--type", "types", multiple=True, metavar="TYPE", help="job type"),
        click.option(
            "--reason",
            "reasons",
            multiple=True,
            metavar="REASON",
            help=", ".join(r.value for r in DeadLetterReason),
        ),
        click.option(
            "--error-class",
            "error_classes",
            multiple=True,
            metavar="CLASS",
            help="full or bare class name",
        ),
        click.option("--since", metavar="TIME", help="ISO-8601 or age (2h, 30m, 7d)"),
        click.option("--until", metavar="TIME", help="ISO-8601 or age (2h, 30m, 7d)"),
        click.option(
            "--key",
            "keys",
            multiple=True,
            metavar="KEY",
            help="job id, original record key or dead-letter id",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--json", "as_json", is_flag=True, help="JSON on stdout")(fn)
    return click.option(
        "--prefix", "dlq_prefix", metavar="PREFIX", help="topic prefix (default: settings)"
    )(fn)


def _run(command: str) -> Callable[..., int]:
    @with_settings
    def run(settings: Settings, **params: Any) -> int:
        return run_dlq(DlqArgs.of(command, params), settings)

    return run


@click.group(
    "dlq",
    short_help="inspect and replay dead letters",
    help="Inspect and replay the dead-letter topic <prefix>.dlq.",
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
def dlq_group() -> None:
    pass


dlq_group.add_command(
    command("list", variables=DLQ_VARIABLES, help="List dead letters.", epilog=EPILOG)(
        _common(
            _filters(
                click.option("--limit", type=int, metavar="N", help="show at most N")(_run("list"))
            )
        )
    )
)
dlq_group.add_command(
    command(
        "stats",
        variables=DLQ_VARIABLES,
        help="Counts by reason, type, error class.",
        epilog=EPILOG,
    )(_common(_filters(_run("stats"))))
)
dlq_group.add_command(
    command("show", variables=DLQ_VARIABLES, help="One dead letter in full.", epilog=EPILOG)(
        _common(click.argument("ident", metavar="ID")(_run("show")))
    )
)


def _replay_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--dry-run", is_flag=True, help="show what would happen, publish nothing"),
        click.option("--limit", type=int, metavar="N", help="republish at most N"),
        click.option(
            "--rate",
            type=float,
            default=100.0,
            metavar="R",
            help="events/s (default 100, 0: unpaced)",
        ),
        click.option("--reset-attempts", is_flag=True, help="attempt back to 1"),
        click.option("--force", is_flag=True, help="replay again if already replayed"),
        click.option(
            "--include-invalid", is_flag=True, help="republish non-JobEvent bytes unchanged"
        ),
        click.option(
            "--include-cancelled",
            is_flag=True,
            help="replay jobs cancelled since too (each is reopened, audited, and runs again)",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


dlq_group.add_command(
    command(
        "replay",
        variables=REPLAY_VARIABLES,
        help="Republish to the main topic.",
        epilog=REPLAY_EPILOG,
    )(_common(_filters(_replay_options(_run("replay")))))
)


def parse_args(argv: Sequence[str]) -> DlqArgs:
    """``dlq`` arguments (``["list", "--type", "a"]``) parsed as the command line parses them."""
    ctx = click.Context(dlq_group, info_name="dlq")
    name, cmd, rest = dlq_group.resolve_command(ctx, list(argv))
    if name is None or cmd is None:
        raise click.UsageError("no dlq command given")
    sub = cmd.make_context(name, rest, parent=ctx)
    return DlqArgs.of(name, sub.params)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobstream.streams.dlq.cli``: the same commands as ``jobstream dlq``."""
    try:
        result = dlq_group.main(
            list(sys.argv[1:] if argv is None else argv),
            prog_name="python -m jobstream.streams.dlq.cli",
            standalone_mode=False,
        )
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return int(result) if isinstance(result, int) else Exit.OK


def run_dlq(args: DlqArgs, settings: Settings) -> int:
    """The process entry point (``jobstream dlq``); tests call :func:`run_dlq_async`."""
    aiokafka_log = logging.getLogger("aiokafka")
    if aiokafka_log.level == logging.NOTSET:
        # the tool prints its own one-line diagnosis; aiokafka's connection chatter adds nothing
        aiokafka_log.setLevel(logging.CRITICAL)
    try:
        return asyncio.run(run_dlq_async(args, settings))
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


async def run_dlq_async(args: DlqArgs, settings: Settings) -> int:
    """Run one ``dlq`` subcommand; every expected failure becomes an exit code and one line."""
    cmd = args.dlq_command
    try:
        flt = DeadLetterFilter()
        if cmd != "show":
            flt = DeadLetterFilter.parse(
                types=args.types,
                reasons=args.reasons,
                error_classes=args.error_classes,
                since=args.since,
                until=args.until,
                keys=args.keys,
            )
        if args.limit is not None and args.limit < 1:
            raise FilterError("--limit must be at least 1")
        if cmd == "replay" and args.rate < 0:
            raise FilterError("--rate must be >= 0")
    except FilterError as exc:
        _err(f"error: {exc}")
        return Exit.USAGE
    prefix = args.dlq_prefix or settings.topic_prefix
    try:
        bootstrap, dsn = await _services(settings, need_db=cmd == "replay")
        if cmd == "replay":
            return await _replay(args, flt, prefix, bootstrap, dsn, client_options(settings))
        snap = await read_snapshot(
            bootstrap,
            topic_names(prefix).dlq,
            _show_match(args.ident) if cmd == "show" else flt.matches,
            options=client_options(settings),
        )
    except (UnreachableError, ServiceUnavailable) as exc:
        _err(f"error: {exc}")
        return Exit.UNREACHABLE
    except TopicMissingError as exc:
        _err(f"error: {exc}")
        return Exit.USAGE
    _report_unreadable(snap)
    if not snap.matched:
        _err(f"no dead letters match in {snap.topic} ({snap.scanned} scanned)")
        return Exit.FAILED
    if cmd == "list":
        _print_list(snap, args.limit, args.as_json)
    elif cmd == "stats":
        _print_stats(snap, args.as_json)
    else:
        _print_show(snap.matched, args.as_json)
    return Exit.OK


def _show_match(ident: str) -> Any:
    return lambda dl: ident in (dl.id, dl.job_id)


async def _services(settings: Settings, *, need_db: bool) -> tuple[str, str | None]:
    return kafka_bootstrap(settings), database_url(settings) if need_db else None


def _redact(dsn: str) -> str:
    """The DSN for messages, without its password."""
    try:
        parts = urlsplit(dsn)
        if parts.password:
            host = parts.hostname or ""
            netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparseable dsn>"
    return dsn


async def _connect(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise UnreachableError(
            f"PostgreSQL at {_redact(dsn)} is unreachable ({first_line(exc)})"
        ) from exc


async def _replay(
    args: DlqArgs,
    flt: DeadLetterFilter,
    prefix: str,
    bootstrap: str,
    dsn: str | None,
    options: Mapping[str, Any],
) -> int:
    assert dsn is not None
    names = topic_names(prefix)
    opts = ReplayOptions(
        target_topic=names.main,
        dry_run=args.dry_run,
        limit=args.limit,
        rate=args.rate,
        reset_attempts=args.reset_attempts,
        force=args.force,
        include_invalid=args.include_invalid,
        include_cancelled=args.include_cancelled,
    )
    conn = await _connect(dsn)  # before the snapshot: fail fast, not after a long read
    bar = None if opts.dry_run else Progress(0, "replay", file=sys.stderr)
    try:
        run = await replay_matching(
            flt.matches,
            opts,
            bootstrap=bootstrap,
            dlq_topic=names.dlq,
            conn=conn,
            on_snapshot=_report_unreadable,
            on_progress=(lambda c: bar.update(c.done, c.total)) if bar else None,
            log=_err if bar is None else bar.log,
            options=options,
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise UnreachableError(f"PostgreSQL at {_redact(dsn)} failed ({first_line(exc)})") from exc
    finally:
        if bar is not None:
            bar.close()
        await conn.close()
    if not run.snapshot.matched:
        _err(f"no dead letters match in {run.snapshot.topic} ({run.snapshot.scanned} scanned)")
        return Exit.FAILED
    if run.counts is None:
        _print_dry_run(run.items, args.as_json)
        return Exit.OK
    _print_summary(run.counts, args.as_json)
    return Exit.PARTIAL if run.counts.failed else Exit.OK


# --- output ------------------------------------------------------------------------------


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _report_unreadable(snap: Snapshot, shown: int = 20) -> None:
    for u in snap.unreadable[:shown]:
        _err(f"warning: skipped {snap.topic} partition {u.partition} offset {u.offset}: {u.error}")
    if len(snap.unreadable) > shown:
        _err(f"warning: ... and {len(snap.unreadable) - shown} more unreadable records")


def _short(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _ts(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds")


def _print_list(snap: Snapshot, limit: int | None, as_json: bool) -> None:
    shown = snap.matched[:limit] if limit else snap.matched
    if as_json:
        print(json.dumps([d.model_dump(mode="json") for d in shown], indent=2))
        return
    rows = [
        [
            d.id,
            d.job_id,
            d.job_type or "-",
            d.reason.value,
            d.error_class,
            str(d.attempt),
            _ts(d.last_failure_at),
            _short(d.error_message),
        ]
        for d in shown
    ]
    headers = ["ID", "JOB ID", "TYPE", "REASON", "ERROR CLASS", "ATT", "LAST FAILURE", "MESSAGE"]
    print_table(headers, rows)
    print(f"{len(shown)} of {len(snap.matched)} matching ({snap.scanned} scanned in {snap.topic})")


def _print_stats(snap: Snapshot, as_json: bool) -> None:
    groups = Counter((d.reason.value, d.job_type or "-", d.error_class) for d in snap.matched)
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))
    if as_json:
        out = {
            "topic": snap.topic,
            "scanned": snap.scanned,
            "matched": len(snap.matched),
            "unreadable": len(snap.unreadable),
            "groups": [
                {"reason": r, "type": t, "error_class": e, "count": n} for (r, t, e), n in ordered
            ],
        }
        print(json.dumps(out, indent=2))
        return
    rows = [[r, t, e, str(n)] for (r, t, e), n in ordered]
    rows.append(["total", "", "", str(len(snap.matched))])
    print_table(["REASON", "TYPE", "ERROR CLASS", "COUNT"], rows)


def _decoded_value(dl: DeadLetter) -> Any:
    """The original value as JSON when it is UTF-8 JSON; None otherwise (shown as base64)."""
    raw = dl.original_bytes()
    if raw is None:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        return None


def _header_text(value: str | None) -> str:
    raw = unb64(value)
    if raw is None:
        return "(null)"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"(base64) {base64.b64encode(raw).decode()}"
    return text if text.isprintable() else f"(base64) {base64.b64encode(raw).decode()}"


def _print_show(matched: Sequence[DeadLetter], as_json: bool) -> None:
    if as_json:
        docs = []
        for d in matched:
            doc = d.model_dump(mode="json")
            doc["original_value_decoded"] = _decoded_value(d)
            docs.append(doc)
        print(json.dumps(docs, indent=2))
        return
    if len(matched) > 1:
        print(f"{len(matched)} dead letters match\n")
    for i, d in enumerate(matched):
        if i:
            print("\n" + "-" * 72 + "\n")
        _print_one(d)


def _print_one(d: DeadLetter) -> None:
    fields = [
        ("id", d.id),
        ("job id", d.job_id),
        ("type", d.job_type or "-"),
        ("reason", d.reason.value),
        ("error", f"{d.error_class}: {d.error_message}"),
        ("attempt", str(d.attempt)),
        ("source", f"{d.source_topic} partition {d.source_partition} offset {d.source_offset}"),
        ("first failure", _ts(d.first_failure_at)),
        ("last failure", _ts(d.last_failure_at)),
        ("original key", decoded_key(d) or "(none)"),
    ]
    for name, value in fields:
        print(f"{name + ':':<15}{value}")
    print("headers:" + ("" if d.original_headers else " (none)"))
    for hname, hvalue in d.original_headers:
        print(f"  {hname}: {_header_text(hvalue)}")
    decoded = _decoded_value(d)
    if decoded is not None:
        print("original value (JSON):")
        print("\n".join("  " + ln for ln in json.dumps(decoded, indent=2).splitlines()))
    else:
        print(f"original value (base64): {d.original_value or '(none)'}")
    print("history:" + ("" if d.history else " (none)"))
    for h in d.history:
        kind = "retryable" if h.retryable else "fatal"
        print(f"  #{h.attempt} {_ts(h.at)} {h.error_class} ({kind}): {h.message}")
    print("traceback:" + ("" if d.traceback else " (none)"))
    if d.traceback:
        print("\n".join("  " + ln for ln in d.traceback.rstrip().splitlines()))


def _print_dry_run(items: Sequence[Any], as_json: bool) -> None:
    tally = Counter(i.action for i in items)
    summary: dict[str, Any] = {
        "dry_run": True,
        "would_replay": tally[Action.REPLAY],
        "skipped_already_replayed": tally[Action.SKIP_REPLAYED],
        "skipped_invalid": tally[Action.SKIP_INVALID],
    }
    if tally[Action.SKIP_CANCELLED]:  # named only when there are some: the output stays as it was
        summary["skipped_cancelled"] = tally[Action.SKIP_CANCELLED]
    if as_json:
        summary["items"] = [
            {"action": i.action.value, "id": i.dead_letter.id, "job_id": i.dead_letter.job_id}
            for i in items
        ]
        print(json.dumps(summary, indent=2))
        return
    # already-replayed ones are only counted: after a big replay they would drown the rest
    rows = [
        [i.action.value, i.dead_letter.id, i.dead_letter.job_id, i.dead_letter.job_type or "-"]
        for i in items
        if i.action is not Action.SKIP_REPLAYED
    ]
    if rows:
        print_table(["ACTION", "ID", "JOB ID", "TYPE"], rows)
    print(
        f"dry run: would replay {summary['would_replay']}, "
        f"skipped-already-replayed {summary['skipped_already_replayed']}, "
        f"skipped-invalid {summary['skipped_invalid']}"
        + (f", skipped-cancelled {n}" if (n := summary.get("skipped_cancelled")) else "")
    )


def _print_summary(c: ReplayCounts, as_json: bool) -> None:
    cancelled = {"skipped_cancelled": c.skipped_cancelled} if c.skipped_cancelled else {}
    if as_json:
        print(
            json.dumps(
                {
                    "replayed": c.replayed,
                    "skipped_already_replayed": c.skipped_replayed,
                    "skipped_invalid": c.skipped_invalid,
                    **cancelled,
                    "failed": c.failed,
                }
            )
        )
        return
    print(
        f"replayed {c.replayed}, skipped-already-replayed {c.skipped_replayed}, "
        f"skipped-invalid {c.skipped_invalid}, "
        + (f"skipped-cancelled {c.skipped_cancelled}, " if cancelled else "")
        + f"failed {c.failed}"
    )


if __name__ == "__main__":
    sys.exit(main())
