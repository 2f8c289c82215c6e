"""``jobstream doctor``: what an operator checks before going live, in one table.

Every check ends as ok, warn or fail with what to do about it; the exit code is the worst of
them (0 ok, 1 warn, 2 fail), so scripts and probes can act on it. The doctor uses exactly the
settings it is given (``JOBSTREAM_KAFKA_BOOTSTRAP``, ``JOBSTREAM_DATABASE_URL``, ...): it never
starts nor looks for a local stack, since the point is to check what production will use.

Exit codes for the consumer group: a group with members whose assignment covers the main topic
is ok; an empty group (no worker running) is a warning while nothing waits, and a failure when
events wait on the main topic with nobody to run them.

``--probe`` runs the fast subset a readiness check needs (Kafka reachable, topics present,
PostgreSQL reachable, schema current), prints nothing unless something fails, and exits the
same way.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from jobstream.streams.command import (
    JOB_TYPES,
    KAFKA,
    POSTGRES,
    TOPICS,
    app_option,
    command,
    names,
    with_settings,
)
from jobstream.streams.settings import Settings
from jobstream.streams.topics import TopicNames, topic_configs, topic_names

ENV = "JOBSTREAM_"
TIMEOUT_S = 10.0
# Configs compared with the settings; the broker reports many more.
CONFIG_KEYS = ("cleanup.policy", "retention.ms", "max.message.bytes")
DISK_WARN_BYTES = 2 * 1024**3
DISK_FAIL_BYTES = 256 * 1024**2


class Status(IntEnum):
    OK = 0
    WARN = 1
    FAIL = 2

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {**asdict(self), "status": str(self.status)}


def exit_code(checks: Iterable[Check]) -> int:
    return int(max((c.status for c in checks), default=Status.OK))


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.OK, detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.WARN, detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.FAIL, detail, fix)


# --- pure checks (unit-tested) -------------------------------------------------------------


# The highest Fetch version each Kafka release line speaks: brokers report API versions, not
# their release, so this is the closest a client can tell.
_FETCH_VERSIONS: tuple[tuple[int, str], ...] = (
    (18, "4.1 or newer"),
    (17, "4.0"),
    (16, "3.7 to 3.9"),
    (15, "3.5 to 3.6"),
    (13, "3.1 to 3.4"),
    (12, "2.7 to 3.0"),
)


def kafka_release(api_versions: Mapping[int, tuple[int, int]]) -> str:
    fetch_max = api_versions.get(1, (0, -1))[1]
    for version, release in _FETCH_VERSIONS:
        if fetch_max >= version:
            return release
    return "older than 2.7"


def check_kafka_version(api_versions: Mapping[int, tuple[int, int]], brokers: int) -> Check:
    release = kafka_release(api_versions)
    detail = f"{brokers} broker(s); Kafka {release} (from its API versions)"
    if release == "older than 2.7":
        return warn("kafka version", detail, "jobstream is tested on Kafka 4.x; upgrade the broker")
    return ok("kafka version", detail)


def check_replication(settings: Settings, brokers: int) -> Check:
    rf = settings.replication_factor
    if rf > brokers:
        return fail(
            "replication factor",
            f"{ENV}REPLICATION_FACTOR={rf} but the cluster has {brokers} broker(s)",
            f"lower {ENV}REPLICATION_FACTOR or add brokers; topics cannot be created",
        )
    if rf == 1 and brokers > 1:
        return warn(
            "replication factor",
            f"topics are created with one replica on a {brokers}-broker cluster",
            f"set {ENV}REPLICATION_FACTOR=3 (or the cluster's default) for durability",
        )
    return ok("replication factor", f"{rf} (cluster has {brokers} broker(s))")


def alter_command(topic: str, configs: Mapping[str, str]) -> str:
    pairs = ",".join(f"{k}={v}" for k, v in configs.items())
    return (
        f"kafka-configs --bootstrap-server $BOOTSTRAP --alter --entity-type topics "
        f"--entity-name {topic} --add-config {pairs}"
    )


def check_topic(
    topic: str,
    *,
    expected_partitions: int,
    expected_configs: Mapping[str, str],
    partitions: int | None,
    configs: Mapping[str, str | None],
) -> Check:
    """One topic against the settings: present, partition count, configs (drift)."""
    name = f"topic {topic}"
    if partitions is None:
        return fail(
            name,
            "missing",
            f"start a worker once (it creates its topics) or check {ENV}TOPIC_PREFIX",
        )
    problems = []
    if partitions != expected_partitions:
        problems.append(f"{partitions} partitions, settings say {expected_partitions}")
    drift = {k: v for k, v in expected_configs.items() if configs.get(k) != v}
    problems += [f"{k}={configs.get(k)} (expected {v})" for k, v in drift.items()]
    if not problems:
        return ok(name, f"{partitions} partitions, configs as set")
    fixes = []
    if drift:
        fixes.append(alter_command(topic, drift))
    if partitions != expected_partitions:
        fixes.append(
            f"set {ENV}PARTITIONS={partitions} to match"
            if partitions > expected_partitions
            else f"kafka-topics --alter --topic {topic} --partitions {expected_partitions}"
            " (keys move to other partitions)"
        )
    return warn(name, "; ".join(problems), "; ".join(fixes))


@dataclass(frozen=True)
class Member:
    member_id: str
    client_id: str
    host: str
    partitions: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class GroupState:
    state: str
    members: tuple[Member, ...] = ()
    lag: Mapping[int, int] = field(default_factory=dict)
    """Main-topic partition -> log end minus committed (log start when never committed)."""


def check_group(group: str, main_topic: str, partitions: int, g: GroupState) -> list[Check]:
    total = sum(g.lag.values())
    lag_text = f"lag {total} on {main_topic}"
    if not g.members:
        detail = f"{g.state or 'unknown'}, no members; {lag_text}"
        if total:
            return [
                fail(
                    f"group {group}",
                    detail,
                    "events wait and no worker consumes them: start workers "
                    f"(check {ENV}GROUP_ID matches theirs)",
                )
            ]
        return [warn(f"group {group}", detail, "start workers: `jobstream worker`")]
    checks = []
    owned = {p for m in g.members for t, p in m.partitions if t == main_topic}
    missing = sorted(set(range(partitions)) - owned)
    detail = f"{g.state}, {len(g.members)} member(s); {lag_text}"
    if g.state != "Stable":
        checks.append(warn(f"group {group}", detail, "a rebalance is under way; check again"))
    elif missing:
        checks.append(
            warn(
                f"group {group}",
                f"{detail}; partitions {missing} of {main_topic} have no owner",
                "check the workers' logs: a member subscribed to other topics?",
            )
        )
    else:
        checks.append(ok(f"group {group}", detail))
    per_member = ", ".join(
        f"{m.host.lstrip('/')} ({m.member_id[-8:]}): "
        f"{sum(1 for t, _ in m.partitions if t == main_topic)}"
        for m in g.members
    )
    if len(g.members) > partitions:
        checks.append(
            warn(
                "assignment",
                f"{len(g.members)} members for {partitions} partitions ({per_member})",
                f"members beyond {partitions} stay idle: scale down or add partitions",
            )
        )
    else:
        checks.append(ok("assignment", f"partitions of {main_topic} per member: {per_member}"))
    return checks


def check_schema(applied: Iterable[str], known: Sequence[str]) -> Check:
    done = set(applied)
    missing = [n for n in known if n not in done]
    unknown = sorted(done - set(known))
    if missing:
        return fail(
            "schema",
            f"behind: {len(missing)} migration(s) not applied ({', '.join(missing)})",
            "run `jobstream migrate` (workers also migrate at start)",
        )
    if unknown:
        return warn(
            "schema",
            f"the database has migrations this version does not know: {', '.join(unknown)}",
            "a newer jobstream migrated it: upgrade this one",
        )
    return ok("schema", f"up to date ({len(known)} migrations)")


@dataclass(frozen=True)
class Bucket:
    key: str
    paused_s: float
    """Seconds the key stays paused (an upstream's 429 Retry-After); 0 when not paused."""


def check_rate_limits(
    configured: Iterable[str], used: Mapping[str, str], buckets: Iterable[Bucket]
) -> list[Check]:
    """``used`` maps job types to the rate-limit key their handler takes."""
    keys = set(configured)
    checks = []
    unlimited = {t: k for t, k in used.items() if k not in keys}
    if unlimited:
        listed = ", ".join(f"{t} -> {k}" for t, k in sorted(unlimited.items()))
        checks.append(
            warn(
                "rate limits",
                f"job types use keys without a limit: {listed}",
                f"add them to {ENV}RATE_LIMITS or the policy file",
            )
        )
    else:
        checks.append(ok("rate limits", f"keys {', '.join(sorted(keys)) or 'none'} configured"))
    for b in buckets:
        if b.paused_s > 0:
            checks.append(
                warn(
                    f"rate limit {b.key}",
                    f"paused for {b.paused_s:.0f}s more (the upstream asked to back off)",
                    "nothing to do unless it keeps coming back: check the upstream's quota",
                )
            )
    return checks


def check_retention(settings: Settings) -> list[Check]:
    s = settings
    checks = []

    def days(ms: int) -> str:
        return "forever" if ms < 0 else f"{ms / 86_400_000:g} days"

    longest_tier_ms = max(s.retry_tiers_s) * 1000
    if 0 <= s.retry_retention_ms < longest_tier_ms * 10:
        checks.append(
            fail(
                "retry retention",
                f"{ENV}RETRY_RETENTION_MS={s.retry_retention_ms} is under 10x the longest "
                f"tier ({max(s.retry_tiers_s):g}s): held retries can be deleted before due",
                f"raise {ENV}RETRY_RETENTION_MS",
            )
        )
    dlq_ms = s.dlq_retention_ms
    rows_age = getattr(s, "retention_dead_lettered_age_s", None)
    if dlq_ms >= 0 and rows_age is not None and rows_age * 1000 > dlq_ms:
        checks.append(
            warn(
                "dlq retention",
                f"dead letters are kept {days(dlq_ms)} but their rows "
                f"{rows_age / 86_400:g} days: rows would point at deleted letters",
                f"raise {ENV}DLQ_RETENTION_MS or lower {ENV}RETENTION_DEAD_LETTERED_AGE_S",
            )
        )
    elif 0 <= dlq_ms < s.main_retention_ms:
        checks.append(
            warn(
                "dlq retention",
                f"dead letters ({days(dlq_ms)}) go before jobs ({days(s.main_retention_ms)})",
                f"raise {ENV}DLQ_RETENTION_MS: dead letters are what operators replay",
            )
        )
    if not checks:
        checks.append(
            ok(
                "retention",
                f"jobs {days(s.main_retention_ms)}, retries {days(s.retry_retention_ms)}, "
                f"outcomes {days(s.outcome_retention_ms)}, dead letters {days(dlq_ms)}",
            )
        )
    return checks


DUE_WARN_S = 60.0
DUE_FAIL_S = 300.0


@dataclass(frozen=True)
class Dispatch:
    """What PostgreSQL says of the dispatcher of one main topic."""

    holder: str | None
    """The lease's holder (``worker:pid:instance``), None when it was never taken."""
    live: bool
    until_s: float
    """Seconds until the lease ends (negative: it ended that long ago)."""
    held_s: float
    """Seconds the holder has held it."""
    due: int
    oldest_due_s: float
    schedules_behind: int


def check_dispatcher(d: Dispatch) -> Check:
    """The dispatcher's lease is held and renewed, and due jobs are not piling up."""
    name = "dispatcher"
    backlog = f"{d.due} due job(s) waiting" + (
        f", the oldest {d.oldest_due_s:.0f}s past its time" if d.due else ""
    )
    behind = f"; {d.schedules_behind} schedule(s) behind" if d.schedules_behind else ""
    if not d.live:
        who = (
            f"the lease of {d.holder.split(':', 1)[0]} ended {-d.until_s:.0f}s ago"
            if d.holder
            else "it was never taken"
        )
        detail = f"no replica holds the dispatcher's lease ({who}); {backlog}{behind}"
        if d.oldest_due_s > DUE_WARN_S or d.schedules_behind:
            return fail(name, detail, "start a worker: one replica at a time dispatches")
        if d.due:
            return warn(name, detail, "start a worker: one replica at a time dispatches")
        return ok(name, detail)
    detail = (
        f"held by {(d.holder or '?').split(':', 1)[0]} for {d.held_s:.0f}s, renewed"
        f" (ends in {d.until_s:.0f}s); {backlog}{behind}"
    )
    fix = "the holder does not keep up or cannot publish: see its log, restart it"
    if d.oldest_due_s > DUE_FAIL_S:
        return fail(name, detail, fix)
    if d.oldest_due_s > DUE_WARN_S or d.schedules_behind:
        return warn(name, detail, fix)
    return ok(name, detail)


def check_sentry(settings: Settings) -> Check:
    if settings.sentry_dsn is None:
        return ok("sentry", f"not configured ({ENV}SENTRY_DSN unset): errors are only logged")
    from sentry_sdk.utils import BadDsn, Dsn

    try:
        dsn = Dsn(settings.sentry_dsn.get_secret_value())
    except BadDsn as exc:
        return fail("sentry", f"{ENV}SENTRY_DSN does not parse: {exc}", "copy the DSN again")
    return ok("sentry", f"DSN parses (project {dsn.project_id} at {dsn.host})")


@dataclass(frozen=True)
class JobTypes:
    """What the app's job types need of the services: each type's rate-limit key, and the keys
    that have a limit (declared in the app or in JOBSTREAM_RATE_LIMITS)."""

    keys: dict[str, str]
    limited: frozenset[str]


def check_policy(settings: Settings) -> tuple[Check, JobTypes]:
    """The app loads and its job types resolve with the policy file."""
    from jobstream.agents.catalog import default_registry
    from jobstream.models.errors import ConfigurationError

    try:
        registry = default_registry(settings)
    except ConfigurationError as exc:
        return (
            fail("policy", str(exc), f"fix {ENV}APP (--app) or {ENV}POLICY_FILE"),
            JobTypes({}, frozenset()),
        )
    keys = {t.name: t.rate_limit_key for t in registry if t.rate_limit_key is not None}
    app = settings.app or "the built-in job types"
    where = f"policy file {settings.policy_file}" if settings.policy_file else "no policy file"
    return (
        ok("policy", f"{app}, {where}: {len(registry.names())} job types"),
        JobTypes(keys, frozenset(registry.rate_limits)),
    )


def is_local(bootstrap: str | None) -> bool:
    hosts = {urlsplit(f"//{s.strip()}").hostname for s in (bootstrap or "").split(",") if s}
    return bool(hosts) and hosts <= {"127.0.0.1", "localhost", "::1"}


def check_disk(path: Path, free_bytes: int) -> Check:
    gib = free_bytes / 1024**3
    detail = f"{gib:.1f} GiB free at {path}"
    if free_bytes < DISK_FAIL_BYTES:
        return fail("disk", detail, "free disk space: the local broker and database stop")
    if free_bytes < DISK_WARN_BYTES:
        return warn("disk", detail, "free disk space soon")
    return ok("disk", detail)


def check_configured(settings: Settings) -> list[Check]:
    checks = []
    if not settings.kafka_bootstrap:
        checks.append(
            fail("kafka", f"{ENV}KAFKA_BOOTSTRAP is not set", f"set {ENV}KAFKA_BOOTSTRAP")
        )
    if settings.database_url is None:
        checks.append(fail("postgresql", f"{ENV}DATABASE_URL is not set", f"set {ENV}DATABASE_URL"))
    return checks


# --- checks against the services -----------------------------------------------------------


async def _bounded(what: str, work: Awaitable[Any]) -> Any:
    try:
        return await asyncio.wait_for(work, TIMEOUT_S)
    except TimeoutError:
        raise TimeoutError(f"{what}: no answer within {TIMEOUT_S:.0f}s") from None


def _reason(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    from jobstream.streams.observability import scrub_text

    return scrub_text(f"{type(exc).__name__}: {exc}", secrets)


async def kafka_checks(settings: Settings, names: TopicNames, *, probe: bool) -> list[Check]:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaError
    from aiokafka.protocol.admin import ApiVersionRequest

    from jobstream.models.errors import ConfigurationError
    from jobstream.streams.kafka.security import check_access, client_options

    bootstrap = settings.kafka_bootstrap
    assert bootstrap
    try:
        await check_access(bootstrap, settings, timeout_s=TIMEOUT_S)
        options = client_options(settings)
        client = AIOKafkaClient(
            bootstrap_servers=bootstrap, request_timeout_ms=int(TIMEOUT_S * 1000), **options
        )
        await _bounded("bootstrap", client.bootstrap())
    except ConfigurationError as exc:  # KafkaAccessError included: a refused handshake
        return [fail("kafka", str(exc), "fix the setting it names")]
    except (KafkaError, OSError, TimeoutError) as exc:
        return [
            fail(
                "kafka",
                f"{bootstrap} unreachable ({_reason(exc)})",
                f"check {ENV}KAFKA_BOOTSTRAP and that the brokers run",
            )
        ]
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(TIMEOUT_S * 1000), **options
    )
    try:
        brokers = len(client.cluster.brokers())
        checks = [ok("kafka", f"{bootstrap} reachable ({brokers} broker(s))")]
        if not probe:
            response = await _bounded(
                "api versions", client.send(client.get_random_node(), ApiVersionRequest())
            )
            versions = {k: (lo, hi) for k, lo, hi in response.api_versions}
            checks += [check_kafka_version(versions, brokers), check_replication(settings, brokers)]
        await _bounded("admin", admin.start())
        checks += await _topic_checks(admin, settings, names, probe=probe)
        if not probe:
            checks += await _group_checks(admin, settings, names, options)
    except (KafkaError, OSError, TimeoutError) as exc:
        checks.append(fail("kafka", f"request failed ({_reason(exc)})", "check the brokers"))
    finally:
        await admin.close()
        await client.close()
    return checks


async def _partition_counts(admin: Any, topics: Sequence[str]) -> dict[str, int]:
    """Partitions of the topics that exist. Listing first matters: a metadata request naming a
    missing topic makes a broker with ``auto.create.topics.enable`` create it."""
    existing = set(await _bounded("topics", admin.list_topics()))
    wanted = [t for t in topics if t in existing]
    if not wanted:
        return {}
    metadata = await _bounded("metadata", admin.describe_topics(wanted))
    return {t["topic"]: len(t["partitions"]) for t in metadata if t["error_code"] == 0}


async def _topic_checks(
    admin: Any, settings: Settings, names: TopicNames, *, probe: bool
) -> list[Check]:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    partitions = await _partition_counts(admin, names.all())
    configs: dict[str, dict[str, str | None]] = {}
    present = [n for n in names.all() if n in partitions]
    if present and not probe:
        resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in present]
        for response in await _bounded("configs", admin.describe_configs(resources)):
            for error_code, _msg, _type, name, entries in response.resources:
                if not error_code:
                    configs[name] = {e[0]: e[1] for e in entries if e[0] in CONFIG_KEYS}
    expected = topic_configs(settings, names)
    checks = []
    for topic in names.all():
        if probe:
            if topic not in partitions:
                checks.append(fail(f"topic {topic}", "missing", "start a worker once"))
            continue
        checks.append(
            check_topic(
                topic,
                expected_partitions=settings.partitions,
                expected_configs=expected[topic],
                partitions=partitions.get(topic),
                configs=configs.get(topic, {}),
            )
        )
    if probe and not checks:
        checks.append(ok("topics", f"{len(partitions)} present"))
    return checks


async def _group_checks(
    admin: Any, settings: Settings, names: TopicNames, options: Mapping[str, Any]
) -> list[Check]:
    from aiokafka import TopicPartition
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    group = settings.group_id
    [response] = await _bounded("group", admin.describe_consumer_groups([group]))
    [described] = response.to_object()["groups"]
    members = []
    for m in described["members"]:
        parts: tuple[tuple[str, int], ...] = ()
        if m["member_assignment"]:
            assignment = ConsumerProtocolMemberAssignment.decode(m["member_assignment"])
            parts = tuple((tp.topic, tp.partition) for tp in assignment.partitions())
        members.append(Member(m["member_id"], m["client_id"], m["client_host"], parts))
    lag: dict[int, int] = {}
    counts = await _partition_counts(admin, [names.main])
    if names.main in counts:
        tps = [TopicPartition(names.main, p) for p in range(counts[names.main])]
        committed = await _bounded(
            "offsets", admin.list_consumer_group_offsets(group, partitions=tps)
        )
        ends, starts = await _log_offsets(settings, tps, options)
        for tp in tps:
            meta = committed.get(tp)
            base = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
            lag[tp.partition] = max(0, ends[tp] - max(base, starts[tp]))
    state = GroupState(described["state"], tuple(members), lag)
    return check_group(group, names.main, settings.partitions, state)


async def _log_offsets(
    settings: Settings, tps: list[Any], options: Mapping[str, Any]
) -> tuple[dict[Any, int], dict[Any, int]]:
    """Log end and start offsets, read by a group-less consumer (it never joins the group)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=int(TIMEOUT_S * 1000),
        **options,
    )
    await _bounded("consumer", consumer.start())
    try:
        ends = await _bounded("end offsets", consumer.end_offsets(tps))
        starts = await _bounded("start offsets", consumer.beginning_offsets(tps))
    finally:
        await consumer.stop()
    return dict(ends), dict(starts)


async def check_pooler(dsn: str) -> Check:
    """Is a transaction-mode pooler in front of PostgreSQL while JOBSTREAM_DB_POOLER_MODE says
    none? One connection prepares a named statement; a second holds a server connection in a
    transaction; the first runs its statement again. Straight to PostgreSQL both are backends
    of their own; through a transaction-mode pooler the first gets another server connection,
    where its statement does not exist."""
    import asyncpg

    from jobstream.streams.failures import pooler_symptom

    first = await asyncpg.connect(dsn, timeout=TIMEOUT_S)
    second = await asyncpg.connect(dsn, timeout=TIMEOUT_S, statement_cache_size=0)
    try:
        # the symptom may come at any step: the first statement itself can meet a server
        # connection where another client (a worker not told of the pooler) left a statement
        # of the same name, or lose its server connection between prepare and execute.
        # Straight to PostgreSQL, a fresh connection never sees either.
        await first.fetchval("SELECT $1::int", 1)
        async with second.transaction():
            await second.fetchval("SELECT 1")
            await asyncio.wait_for(first.fetchval("SELECT $1::int", 2), TIMEOUT_S)
    except asyncpg.PostgresError as exc:
        if not pooler_symptom(exc):
            raise
        return warn(
            "pooler",
            "PostgreSQL answers through a transaction-mode pooler (a prepared statement"
            " vanished or was already there); workers switch to unnamed statements at"
            " their first such error",
            f"set {ENV}DB_POOLER_MODE=transaction",
        )
    except TimeoutError:
        return warn(
            "pooler",
            "inconclusive: a second query waited for a server connection",
            f"set {ENV}DB_POOLER_MODE=transaction if a pooler is in front of PostgreSQL",
        )
    finally:
        await first.close()
        await second.close()
    return ok("pooler", f"named prepared statements persist ({ENV}DB_POOLER_MODE=none is right)")


async def postgres_checks(settings: Settings, *, probe: bool, job_types: JobTypes) -> list[Check]:
    import asyncpg

    from jobstream.streams.pg.migrations import _migrations

    assert settings.database_url is not None
    dsn = settings.database_url.get_secret_value()
    secrets = [p for p in [urlsplit(dsn).password] if p]
    try:
        # unnamed statements: they work whether or not a transaction-mode pooler is in front
        # (check_pooler tells which)
        conn = await _bounded(
            "connect", asyncpg.connect(dsn, timeout=TIMEOUT_S, statement_cache_size=0)
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return [
            fail(
                "postgresql",
                f"unreachable ({_reason(exc, secrets)})",
                f"check {ENV}DATABASE_URL and that PostgreSQL runs",
            )
        ]
    try:
        v = conn.get_server_version()
        release = f"{v.major}.{v.micro if v.major >= 10 else v.minor}"  # 15.4 is (15, 0, 4)
        checks = [ok("postgresql", f"reachable (PostgreSQL {release})")]
        known = [name for name, _ in _migrations()]
        has_table = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        applied = (
            [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")]
            if has_table
            else []
        )
        checks.append(check_schema(applied, known))
        if not probe and settings.db_pooler_mode == "none":
            checks.append(await check_pooler(dsn))
        if not probe:
            buckets = []
            if await conn.fetchval("SELECT to_regclass('rate_limit_buckets') IS NOT NULL"):
                rows = await conn.fetch(
                    "SELECT key, greatest(0, extract(epoch FROM paused_until - now()))::float8"
                    " AS paused_s FROM rate_limit_buckets ORDER BY key"
                )
                buckets = [Bucket(r["key"], r["paused_s"] or 0.0) for r in rows]
            checks += check_rate_limits(job_types.limited, job_types.keys, buckets)
            if await conn.fetchval("SELECT to_regclass('timed_audit') IS NOT NULL"):
                checks.append(check_dispatcher(await _dispatch(conn, settings)))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        checks.append(fail("postgresql", f"query failed ({_reason(exc, secrets)})", "check it"))
    finally:
        await conn.close()
    return checks


async def _dispatch(conn: Any, settings: Settings) -> Dispatch:
    from jobstream.models.schedules import MISFIRE_GRACE_S
    from jobstream.streams.pg import leases, scheduled, schedules

    main = topic_names(settings.topic_prefix, settings.retry_tiers_s).main
    lease = await leases.read(conn, f"dispatcher:{main}")
    due, oldest = await scheduled.waiting(conn, main)
    behind = await schedules.behind(conn, main, MISFIRE_GRACE_S)
    now: datetime = await conn.fetchval("SELECT now()")
    if lease is None:
        return Dispatch(None, False, 0.0, 0.0, due, oldest, behind)
    until, acquired = lease["until"], lease["acquired_at"]
    assert isinstance(until, datetime)
    assert isinstance(acquired, datetime)
    return Dispatch(
        str(lease["holder"]),
        bool(lease["live"]),
        (until - now).total_seconds(),
        (now - acquired).total_seconds(),
        due,
        oldest,
        behind,
    )


async def run_checks(settings: Settings, *, probe: bool = False) -> list[Check]:
    """All checks (or the probe's subset); never raises for a service being down."""
    names = topic_names(settings.topic_prefix, settings.retry_tiers_s)
    checks = check_configured(settings)
    job_types = JobTypes({}, frozenset())
    if not probe:
        policy, job_types = check_policy(settings)
        checks += [policy, check_sentry(settings), *check_retention(settings)]
    work: list[Callable[[], Awaitable[list[Check]]]] = []
    if settings.kafka_bootstrap:
        work.append(lambda: kafka_checks(settings, names, probe=probe))
    if settings.database_url is not None:
        work.append(lambda: postgres_checks(settings, probe=probe, job_types=job_types))
    for found in await asyncio.gather(*(w() for w in work)):
        checks += found
    if not probe and is_local(settings.kafka_bootstrap):
        path = settings.state_dir
        while not path.exists() and path != path.parent:
            path = path.parent
        checks.append(check_disk(settings.state_dir, shutil.disk_usage(path).free))
    return checks


# --- output and the command ----------------------------------------------------------------

_STYLE = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red"}


def render(checks: Sequence[Check], *, file: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="jobstream doctor", show_lines=False)
    for column in ("check", "status", "detail", "what to do"):
        table.add_column(column, overflow="fold")
    for c in checks:
        table.add_row(c.name, f"[{_STYLE[c.status]}]{c.status}[/]", c.detail, c.fix)
    console = Console(file=file or sys.stdout, width=160)
    console.print(table)
    worst = Status(exit_code(checks))
    counts = {s: sum(1 for c in checks if c.status is s) for s in Status}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    console.print(f"[{_STYLE[worst]}]{worst}[/]: {summary}")


def as_json(checks: Sequence[Check], elapsed_s: float) -> str:
    return json.dumps(
        {
            "status": str(Status(exit_code(checks))),
            "exit_code": exit_code(checks),
            "checked_at": datetime.now(UTC).isoformat(),
            "elapsed_s": round(elapsed_s, 3),
            "checks": [c.as_dict() for c in checks],
        },
        indent=2,
    )


DOCTOR_VARIABLES = names(
    KAFKA,
    POSTGRES,
    TOPICS,
    JOB_TYPES,
    ("group_id", "rate_limits", "state_dir", "sentry_dsn"),
)


@command(
    "doctor",
    variables=DOCTOR_VARIABLES,
    short_help="check Kafka, PostgreSQL, topics, the group and the settings before going live",
    help="Check Kafka, PostgreSQL, the topics, the consumer group and the settings before "
    "going live. Exit code: 0 all ok, 1 a warning, 2 a failure.",
)
@click.option("--json", "as_json_doc", is_flag=True, help="one JSON document for scripts")
@click.option(
    "--probe",
    is_flag=True,
    help="fast readiness subset (Kafka, topics, PostgreSQL, schema); quiet unless failing",
)
@app_option
@with_settings
def doctor_command(settings: Settings, as_json_doc: bool, probe: bool) -> int:
    started = time.monotonic()
    checks = asyncio.run(run_checks(settings, probe=probe))
    code = exit_code(checks)
    if as_json_doc:
        print(as_json(checks, time.monotonic() - started))
    elif probe:
        for c in checks:
            if c.status is Status.FAIL:
                print(f"{c.name}: {c.detail}", file=sys.stderr)
    else:
        render(checks)
    return code
