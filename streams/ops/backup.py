"""Backup and restore of the PostgreSQL state, with a manifest that ties it to Kafka.

``jobstream backup`` runs ``pg_dump -Fc`` on a snapshot exported by a repeatable-read
transaction, and counts the rows of every table in that same snapshot, so the manifest's counts
are exactly what the dump holds even while workers keep writing. Before the snapshot it reads
the consumer group's committed offsets: a worker commits an offset only after the rows of the
events before it are durable, so every event below the manifest's offsets has its row in the
dump. Restoring therefore loses no job as long as the group re-reads from those offsets (or
earlier): a job whose row was restored is deduplicated and only its outcome is re-emitted; a
job finished after the backup runs again.

The password never reaches a command line or a log line: the tools get the DSN without it, and
the password through ``PGPASSWORD`` in their environment.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import click

from jobstream.models.errors import JobstreamError
from jobstream.streams.command import KAFKA, RETENTION, command, names, with_settings
from jobstream.streams.exits import Exit
from jobstream.streams.services import database_url, kafka_bootstrap
from jobstream.streams.settings import Settings

MANIFEST_FORMAT = 1
DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")

_USER_TABLES = """
SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) AS name
FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1
"""

_USER_RELATIONS = """
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
"""


class BackupError(JobstreamError):
    """Raised when a backup or restore cannot be made or would overwrite data."""


# --- the PostgreSQL tools --------------------------------------------------------------------


def tool_major(path: Path) -> int | None:
    """``pg_dump (PostgreSQL) 15.18 (Debian ...)`` -> 15."""
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\)\s+(\d+)", out)
    return int(m.group(1)) if m else None


def find_tool(name: str, server_major: int, bin_dir: Path | None = None) -> Path:
    """The newest ``name`` whose major is at least the server's: an older pg_dump refuses a
    newer server, and pg_restore must read what that pg_dump wrote."""
    candidates: list[Path] = []
    if bin_dir is not None:
        candidates.append(bin_dir / name)
    else:
        dirs = sorted(
            DEBIAN_PG_ROOT.glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
            reverse=True,
        )
        candidates += [d / name for d in dirs]
        on_path = shutil.which(name)
        if on_path:
            candidates.append(Path(on_path))
    seen: list[str] = []
    for path in candidates:
        if not os.access(path, os.X_OK):
            continue
        major = tool_major(path)
        seen.append(f"{path} ({major})")
        if major is not None and major >= server_major:
            return path
    where = ", ".join(seen) or "none found"
    raise BackupError(
        f"no {name} of PostgreSQL {server_major} or newer ({where}); install the client tools "
        "of the server's major version or set JOBSTREAM_PG_BIN_DIR"
    )


def libpq_target(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without its password, and the environment that carries the password."""
    parts = urlsplit(dsn)
    env = dict(os.environ)
    if parts.password is None:
        return dsn, env
    env["PGPASSWORD"] = unquote(parts.password)
    userinfo = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{userinfo}@{host}" if userinfo else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), env


def redacted(dsn: str) -> str:
    """host:port/database, for messages."""
    parts = urlsplit(dsn)
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


async def _run_tool(cmd: list[str], env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        text = (err or out).decode("utf-8", "replace").strip()
        raise BackupError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}): {text[-2000:]}")


# --- manifest --------------------------------------------------------------------------------


def manifest_path(dump: Path) -> Path:
    return dump.with_name(dump.name + ".manifest.json")


def offsets_csv_path(dump: Path) -> Path:
    """``topic,partition,offset`` lines, the input of ``kafka-consumer-groups --from-file``."""
    return dump.with_name(dump.name + ".offsets.csv")


async def group_offsets(
    bootstrap: str, group_id: str, options: dict[str, Any] | None = None
) -> dict[str, dict[str, int]]:
    """The group's committed offsets, {topic: {partition: offset}}."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(options or {}))
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    out: dict[str, dict[str, int]] = {}
    for tp, meta in sorted(committed.items()):
        if meta.offset >= 0:
            out.setdefault(tp.topic, {})[str(tp.partition)] = meta.offset
    return out


def _version() -> str:
    try:
        return metadata.version("jobstream")
    except metadata.PackageNotFoundError:
        return "unknown"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- backup ----------------------------------------------------------------------------------


def dump_path(output: str, now: datetime) -> Path:
    """A directory (existing, or written with a trailing slash) gets a timestamped file."""
    path = Path(output)
    if path.is_dir() or output.endswith(os.sep):
        path.mkdir(parents=True, exist_ok=True)
        return path / f"jobstream-{now.strftime('%Y%m%dT%H%M%SZ')}.dump"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def prune_dumps(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` timestamped dumps (with their manifests) in
    ``directory``; a scheduled backup would otherwise fill its volume."""
    dumps = sorted(directory.glob("jobstream-*.dump"), reverse=True)  # names sort by time
    removed: list[Path] = []
    for dump in dumps[keep:]:
        for path in (dump, manifest_path(dump), offsets_csv_path(dump)):
            path.unlink(missing_ok=True)
        removed.append(dump)
    return removed


@dataclass(frozen=True)
class BackupResult:
    dump: Path
    manifest: dict[str, Any]


async def backup(
    dsn: str,
    output: str,
    *,
    bootstrap: str | None,
    group_id: str,
    kafka_options: dict[str, Any] | None = None,
    bin_dir: Path | None = None,
) -> BackupResult:
    started = time.monotonic()
    now = datetime.now(UTC)
    dump = dump_path(output, now)
    offsets: dict[str, dict[str, int]] | None = None
    offsets_error: str | None = None
    if bootstrap is not None:
        try:  # before the snapshot: every event below these offsets has its row in the dump
            offsets = await group_offsets(bootstrap, group_id, kafka_options)
        except Exception as exc:  # noqa: BLE001 - the database backup is still worth having
            offsets_error = f"{type(exc).__name__}: {exc}"
    conn = await asyncpg.connect(dsn)
    try:
        server_major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        pg_dump = find_tool("pg_dump", server_major, bin_dir)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            tables = [r["name"] for r in await conn.fetch(_USER_TABLES)]
            rows = {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in tables}
            schema: list[str] = []
            if "public.schema_migrations" in tables:
                schema = [
                    r["name"]
                    for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")
                ]
            database = await conn.fetchval("SELECT current_database()")
            server_version = await conn.fetchval("SHOW server_version")
            target, env = libpq_target(dsn)
            # the snapshot lives as long as this transaction: pg_dump must start inside it
            await _run_tool(
                [str(pg_dump), "-Fc", f"--snapshot={snapshot}", "-f", str(dump), "-d", target],
                env,
            )
    finally:
        await conn.close()
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "created_at": now.isoformat(),
        "jobstream_version": _version(),
        "database": {"name": database, "server_version": server_version},
        "schema_migrations": schema,
        "rows": rows,
        "kafka": {"group_id": group_id, "committed_offsets": offsets, "error": offsets_error},
        "dump": {
            "file": dump.name,
            "bytes": dump.stat().st_size,
            "sha256": _sha256(dump),
            "pg_dump": str(pg_dump),
        },
        "seconds": round(time.monotonic() - started, 3),
    }
    manifest_path(dump).write_text(json.dumps(manifest, indent=2) + "\n")
    if offsets:
        lines = [f"{t},{p},{o}" for t, parts in offsets.items() for p, o in parts.items()]
        offsets_csv_path(dump).write_text("\n".join(lines) + "\n")
    return BackupResult(dump, manifest)


# --- restore ---------------------------------------------------------------------------------


def read_manifest(dump: Path) -> dict[str, Any] | None:
    if not dump.is_file():
        raise BackupError(f"{dump} is not a file")
    manifest_file = manifest_path(dump)
    return json.loads(manifest_file.read_text()) if manifest_file.is_file() else None


async def restore(
    dsn: str, dump: Path, *, force: bool = False, bin_dir: Path | None = None
) -> dict[str, Any]:
    """Restore into an empty database (any relation outside the system schemas makes it
    non-empty); with ``force``, objects of the dump that exist are dropped first.

    One transaction: a restore that fails leaves the database as it was.
    """
    manifest = await asyncio.to_thread(read_manifest, dump)
    started = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        server_major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        existing = int(await conn.fetchval(_USER_RELATIONS))
        if existing and not force:
            raise BackupError(
                f"{redacted(dsn)} is not empty ({existing} tables, views or sequences); "
                "restore into a new database, or pass --force to replace what the dump holds"
            )
        pg_restore = find_tool("pg_restore", server_major, bin_dir)
        target, env = libpq_target(dsn)
        cmd = [str(pg_restore), "--no-owner", "--no-privileges", "--exit-on-error"]
        cmd += ["--single-transaction"]
        if force:
            cmd += ["--clean", "--if-exists"]
        await _run_tool([*cmd, "-d", target, str(dump)], env)
        tables = [r["name"] for r in await conn.fetch(_USER_TABLES)]
        rows = {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in tables}
    finally:
        await conn.close()
    mismatched: dict[str, Any] = {}
    if manifest is not None:
        for table, count in manifest["rows"].items():
            if rows.get(table) != count:
                mismatched[table] = {"manifest": count, "restored": rows.get(table)}
    if mismatched:
        raise BackupError(f"restored row counts differ from the manifest: {mismatched}")
    return {"rows": rows, "seconds": round(time.monotonic() - started, 3), "manifest": manifest}


# --- the commands ----------------------------------------------------------------------------


async def _resolve(settings: Settings, url: str | None) -> tuple[str, str | None]:
    """(dsn, bootstrap): the DSN from the argument, else the backup DSN, else the database URL;
    the bootstrap servers when they are set."""
    for secret in (settings.backup_database_url, settings.database_url):
        if url is None and secret is not None:
            url = secret.get_secret_value()
    if url is None:
        database_url(settings)  # raises: names the variable to set
    assert url is not None
    return url, settings.kafka_bootstrap or None


def _kafka_options(settings: Settings) -> dict[str, Any]:
    from jobstream.streams.kafka.security import client_options

    return client_options(settings)


@command(
    "backup",
    variables=names(("backup_database_url", "database_url", "pg_bin_dir", "group_id"), KAFKA),
    short_help="pg_dump the database, with a manifest (schema, rows, group offsets)",
    help="pg_dump the database to OUTPUT (a file, or a directory: then jobstream-<time>.dump "
    "in it), with a manifest of the schema, the row counts and the consumer group's offsets.",
)
@click.argument("output")
@click.option(
    "--database-url",
    "dump_url",
    help="dump this database (default JOBSTREAM_BACKUP_DATABASE_URL, then _DATABASE_URL)",
)
@click.option("--no-offsets", is_flag=True, help="do not read the group's offsets")
@click.option("--json", "as_json", is_flag=True, help="print the manifest as JSON")
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="then delete all but the newest N jobstream-*.dump in the directory (0: keep all)",
)
@with_settings
def backup_command(
    settings: Settings,
    output: str,
    dump_url: str | None,
    no_offsets: bool,
    as_json: bool,
    keep: int,
) -> int:
    async def run() -> BackupResult:
        dsn, bootstrap = await _resolve(settings, dump_url)
        return await backup(
            dsn,
            output,
            bootstrap=None if no_offsets else bootstrap,
            group_id=settings.group_id,
            kafka_options=_kafka_options(settings),
            bin_dir=settings.pg_bin_dir,
        )

    try:
        result = asyncio.run(run())
    except (BackupError, OSError, asyncpg.PostgresError) as exc:
        print(f"backup failed: {exc}", file=sys.stderr)
        return Exit.FAILED
    removed = prune_dumps(result.dump.parent, keep) if keep else []
    m = result.manifest
    if as_json:
        print(json.dumps({"path": str(result.dump), **m}, indent=2))
    else:
        rows = ", ".join(f"{t} {n}" for t, n in m["rows"].items())
        print(f"backup: {result.dump} ({m['dump']['bytes']} bytes, {m['seconds']} s)")
        print(f"manifest: {manifest_path(result.dump)}")
        print(f"rows: {rows}")
    for old in removed:
        print(f"removed old backup {old}")
    if m["kafka"]["error"]:
        print(f"warning: no consumer-group offsets in the manifest: {m['kafka']['error']}")
    return Exit.OK


@command(
    "restore",
    variables=("database_url", "backup_database_url", "pg_bin_dir"),
    short_help="pg_restore a backup into an empty database",
    help="pg_restore DUMP (written by `jobstream backup`) into an empty database.",
)
@click.argument("dump", type=click.Path(path_type=Path))
@click.option("--target-url", help="restore into this database (default the settings')")
@click.option("--force", is_flag=True, help="restore into a non-empty database, replacing")
@with_settings
def restore_command(settings: Settings, dump: Path, target_url: str | None, force: bool) -> int:
    async def run() -> dict[str, Any]:
        dsn, _ = await _resolve(settings, target_url)
        return await restore(dsn, dump, force=force, bin_dir=settings.pg_bin_dir)

    try:
        result = asyncio.run(run())
    except (BackupError, OSError, asyncpg.PostgresError) as exc:
        print(f"restore failed: {exc}", file=sys.stderr)
        return Exit.FAILED
    rows = ", ".join(f"{t} {n}" for t, n in result["rows"].items())
    print(f"restored in {result['seconds']} s: {rows}")
    csv = offsets_csv_path(dump)
    if csv.is_file():
        group = result["manifest"]["kafka"]["group_id"]
        print(
            "to re-read what came after the backup, with the workers stopped:\n"
            f"  kafka-consumer-groups --bootstrap-server <broker> --group {group} "
            f"--reset-offsets --from-file {csv} --execute"
        )
    return Exit.OK


@command(
    "prune",
    variables=names(
        ("database_url", "backup_database_url", "db_pooler_mode"),
        KAFKA,
        ("topic_prefix", "retry_tiers_s"),
        RETENTION,
    ),
    short_help="delete finished rows past their retention, now",
    help="Delete the finished rows past their retention now, as the workers' sweeper does.",
)
@click.option("--dry-run", is_flag=True, help="count what would be deleted")
@click.option(
    "--include-unexpired-dead-letters",
    is_flag=True,
    help="also dead-lettered rows whose letter is still in the topic",
)
@click.option("--json", "as_json", is_flag=True, help="the report as JSON")
@with_settings
def prune_command(
    settings: Settings, dry_run: bool, include_unexpired_dead_letters: bool, as_json: bool
) -> int:
    from functools import partial

    from jobstream.streams.pg.pool import create_pool
    from jobstream.streams.pg.retention import RetentionPolicy, Sweeper, dead_letter_horizon
    from jobstream.streams.topics import topic_names

    async def run() -> Any:
        dsn, _ = await _resolve(settings, None)
        bootstrap = kafka_bootstrap(settings)
        policy = RetentionPolicy.from_settings(
            settings,
            include_unexpired_dead_letters=include_unexpired_dead_letters or None,
        )
        dlq = topic_names(settings.topic_prefix, settings.retry_tiers_s).dlq
        pool = await create_pool(dsn, min_size=1, max_size=2, pooler_mode=settings.db_pooler_mode)
        try:
            sweeper = Sweeper(
                pool,
                policy,
                dead_letters=partial(
                    dead_letter_horizon, bootstrap, dlq, options=_kafka_options(settings)
                ),
            )
            return await sweeper.sweep(dry_run=dry_run)
        finally:
            await pool.close()

    try:
        report = asyncio.run(run())
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"prune failed: {exc}", file=sys.stderr)
        return Exit.UNREACHABLE
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        verb = "would delete" if dry_run else "deleted"
        for s in report.statuses:
            cutoff = s.cutoff.isoformat() if s.cutoff else "nothing due"
            note = f" ({s.note})" if s.note else ""
            print(f"{s.status:<14} {verb} {s.rows:>9}  finished before {cutoff}{note}")
        print(f"total {verb} {report.total} in {report.seconds:.2f} s")
    if not report.ran:
        print("another replica is sweeping now; run again later", file=sys.stderr)
        return Exit.FAILED
    return Exit.OK
