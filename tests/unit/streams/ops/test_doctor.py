"""The doctor's verdicts from given facts, without Kafka or PostgreSQL."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from jobstream.streams.ops.doctor import (
    Bucket,
    Check,
    GroupState,
    Member,
    Status,
    as_json,
    check_configured,
    check_disk,
    check_group,
    check_kafka_version,
    check_policy,
    check_rate_limits,
    check_replication,
    check_retention,
    check_schema,
    check_sentry,
    check_topic,
    exit_code,
    is_local,
    render,
)
from jobstream.streams.settings import Settings

CONFIGS = {"retention.ms": "1000", "max.message.bytes": "2000"}


def test_exit_code_is_the_worst_status() -> None:
    assert exit_code([]) == 0
    assert exit_code([Check("a", Status.OK, "")]) == 0
    assert exit_code([Check("a", Status.OK, ""), Check("b", Status.WARN, "", "x")]) == 1
    assert exit_code([Check("a", Status.FAIL, "", "x"), Check("b", Status.WARN, "", "x")]) == 2


def test_unset_services_name_their_variable() -> None:
    checks = check_configured(Settings(kafka_bootstrap=None, database_url=None))
    assert [(c.name, c.status, c.detail) for c in checks] == [
        ("kafka", Status.FAIL, "JOBSTREAM_KAFKA_BOOTSTRAP is not set"),
        ("postgresql", Status.FAIL, "JOBSTREAM_DATABASE_URL is not set"),
    ]
    configured = Settings(kafka_bootstrap="k:9092", database_url=SecretStr("postgresql://x"))
    assert check_configured(configured) == []


def test_topic_present_as_set() -> None:
    c = check_topic(
        "jobs", expected_partitions=8, expected_configs=CONFIGS, partitions=8, configs=CONFIGS
    )
    assert c.status is Status.OK


def test_topic_missing_fails() -> None:
    c = check_topic(
        "jobs", expected_partitions=8, expected_configs=CONFIGS, partitions=None, configs={}
    )
    assert (c.status, c.detail) == (Status.FAIL, "missing")


def test_topic_drift_warns_with_the_command_that_fixes_it() -> None:
    c = check_topic(
        "jobs.dlq",
        expected_partitions=8,
        expected_configs=CONFIGS,
        partitions=4,
        configs={"retention.ms": "604800000", "max.message.bytes": "2000"},
    )
    assert c.status is Status.WARN
    assert c.detail == "4 partitions, settings say 8; retention.ms=604800000 (expected 1000)"
    assert "--entity-name jobs.dlq --add-config retention.ms=1000" in c.fix
    assert "--partitions 8" in c.fix


def test_kafka_version_from_api_versions() -> None:
    assert "4.1 or newer" in check_kafka_version({1: (4, 18)}, 1).detail
    assert "4.0" in check_kafka_version({1: (4, 17)}, 3).detail
    assert check_kafka_version({1: (0, 11)}, 1).status is Status.WARN


def test_replication_factor_against_the_brokers() -> None:
    assert check_replication(Settings(replication_factor=3), 1).status is Status.FAIL
    assert check_replication(Settings(replication_factor=1), 3).status is Status.WARN
    assert check_replication(Settings(replication_factor=3), 3).status is Status.OK


def member(name: str, *parts: int, topic: str = "jobs") -> Member:
    return Member(name, name, "/10.0.0.1", tuple((topic, p) for p in parts))


def test_group_with_members_covering_every_partition_is_ok() -> None:
    g = GroupState("Stable", (member("a", 0, 1), member("b", 2, 3)), {0: 1, 1: 0, 2: 0, 3: 4})
    group, assignment = check_group("g", "jobs", 4, g)
    assert group.status is Status.OK
    assert "2 member(s); lag 5 on jobs" in group.detail
    assert assignment.status is Status.OK
    assert "10.0.0.1 (a): 2" in assignment.detail


def test_empty_group_warns_and_fails_when_events_wait() -> None:
    [idle] = check_group("g", "jobs", 4, GroupState("Empty", (), {0: 0}))
    assert idle.status is Status.WARN
    [stuck] = check_group("g", "jobs", 4, GroupState("Empty", (), {0: 3}))
    assert stuck.status is Status.FAIL
    assert "lag 3" in stuck.detail


def test_unowned_partitions_rebalancing_and_idle_members_warn() -> None:
    [group, _] = check_group("g", "jobs", 4, GroupState("Stable", (member("a", 0, 1),)))
    assert group.status is Status.WARN
    assert "[2, 3]" in group.detail
    [group, _] = check_group("g", "jobs", 1, GroupState("PreparingRebalance", (member("a", 0),)))
    assert group.status is Status.WARN
    members = (member("a", 0), member("b"), member("c"))
    [_, assignment] = check_group("g", "jobs", 1, GroupState("Stable", members))
    assert assignment.status is Status.WARN
    assert "stay idle" in assignment.fix


def test_schema_behind_ahead_and_current() -> None:
    known = ["0001_a", "0002_b", "0003_c"]
    behind = check_schema(["0001_a"], known)
    assert behind.status is Status.FAIL
    assert "0002_b, 0003_c" in behind.detail
    assert check_schema([*known, "0004_new"], known).status is Status.WARN
    assert check_schema(known, known).status is Status.OK


def test_rate_limits_unlimited_keys_and_pauses() -> None:
    [c] = check_rate_limits(["openrouter"], {"llm.chat": "openrouter"}, [Bucket("openrouter", 0)])
    assert c.status is Status.OK
    checks = check_rate_limits(
        ["openrouter"], {"llm.chat": "openrouter", "x": "other"}, [Bucket("openrouter", 42.4)]
    )
    assert [c.status for c in checks] == [Status.WARN, Status.WARN]
    assert "x -> other" in checks[0].detail
    assert checks[1].name == "rate limit openrouter"
    assert "42s" in checks[1].detail


def test_retention_settings() -> None:
    [c] = check_retention(Settings())
    assert c.status is Status.OK
    assert "dead letters 30 days" in c.detail
    [c] = check_retention(Settings(retry_tiers_s=(600.0,), retry_retention_ms=600_000))
    assert c.status is Status.FAIL
    assert "JOBSTREAM_RETRY_RETENTION_MS" in c.detail
    [c] = check_retention(Settings(dlq_retention_ms=86_400_000))
    assert c.status is Status.WARN
    [c] = check_retention(Settings(dlq_retention_ms=-1))
    assert c.status is Status.OK
    assert "dead letters forever" in c.detail


def test_sentry_dsn() -> None:
    assert check_sentry(Settings(sentry_dsn=None)).status is Status.OK
    good = check_sentry(Settings(sentry_dsn=SecretStr("https://abc@o1.ingest.example.com/42")))
    assert good.status is Status.OK
    assert "project 42" in good.detail
    assert "abc" not in good.detail
    bad = check_sentry(Settings(sentry_dsn=SecretStr("not a dsn")))
    assert bad.status is Status.FAIL


def test_policy_file(tmp_path: Path) -> None:
    policy, keys = check_policy(Settings())
    assert policy.status is Status.OK
    assert keys.keys.get("llm.chat") == "openrouter"
    assert "openrouter" in keys.limited
    broken = tmp_path / "policy.json"
    broken.write_text('{"no.such.type": {"max_attempts": 2}}')
    policy, _ = check_policy(Settings(policy_file=broken))
    assert policy.status is Status.FAIL
    assert "unknown job types" in policy.detail


@pytest.mark.parametrize(
    ("bootstrap", "local"),
    [("127.0.0.1:9092", True), ("localhost:1,127.0.0.1:2", True), ("kafka:9092", False),
     ("127.0.0.1:1,kafka:2", False), (None, False)],
)  # fmt: skip
def test_is_local(bootstrap: str | None, local: bool) -> None:
    assert is_local(bootstrap) is local


def test_disk() -> None:
    assert check_disk(Path("."), 10 * 1024**3).status is Status.OK
    assert check_disk(Path("."), 1024**3).status is Status.WARN
    assert check_disk(Path("."), 1024**2).status is Status.FAIL


def test_outputs() -> None:
    checks = [Check("kafka", Status.OK, "fine"), Check("schema", Status.FAIL, "behind", "migrate")]
    report = json.loads(as_json(checks, 0.25))
    assert report["status"] == "fail"
    assert report["exit_code"] == 2
    assert report["checks"][1] == {
        "name": "schema", "status": "fail", "detail": "behind", "fix": "migrate"
    }  # fmt: skip
    out = io.StringIO()
    render(checks, file=out)
    text = out.getvalue()
    assert "jobstream doctor" in text
    assert "behind" in text
    assert "1 ok, 0 warn, 1 fail" in text


async def test_kafka_settings_that_cannot_work_fail_before_connecting() -> None:
    from jobstream.streams.ops.doctor import kafka_checks
    from jobstream.streams.topics import topic_names

    s = Settings(kafka_bootstrap="127.0.0.1:1", kafka_security_protocol="SASL_SSL")
    [c] = await kafka_checks(s, topic_names("jobs"), probe=False)
    assert c.status is Status.FAIL
    assert "JOBSTREAM_KAFKA_SASL_USERNAME" in c.detail


async def test_an_unreachable_broker_fails_naming_the_setting() -> None:
    from jobstream.streams.dev.replicas import free_port
    from jobstream.streams.ops.doctor import kafka_checks
    from jobstream.streams.topics import topic_names

    s = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}")  # nothing listens there
    [c] = await kafka_checks(s, topic_names("jobs"), probe=True)
    assert c.status is Status.FAIL
    assert c.detail.endswith(")")
    assert "unreachable" in c.detail
    assert "JOBSTREAM_KAFKA_BOOTSTRAP" in c.fix


def test_dispatcher_lease_held_and_fresh_with_nothing_piling_up_is_ok() -> None:
    from jobstream.streams.ops.doctor import Dispatch, check_dispatcher

    held = Dispatch("w1:41:ab12", True, 4.2, 300.0, 3, 0.4, 0)
    got = check_dispatcher(held)
    assert got.status is Status.OK
    assert "held by w1 for 300s" in got.detail
    assert "3 due job(s) waiting" in got.detail


def test_dispatcher_due_jobs_piling_up_under_a_live_lease_warn_then_fail() -> None:
    from jobstream.streams.ops.doctor import Dispatch, check_dispatcher

    assert check_dispatcher(Dispatch("w1:1:a", True, 4.0, 9.0, 900, 90.0, 0)).status is Status.WARN
    assert check_dispatcher(Dispatch("w1:1:a", True, 4.0, 9.0, 900, 600.0, 0)).status is Status.FAIL
    behind = check_dispatcher(Dispatch("w1:1:a", True, 4.0, 9.0, 0, 0.0, 2))
    assert behind.status is Status.WARN
    assert "2 schedule(s) behind" in behind.detail


def test_dispatcher_without_a_live_lease() -> None:
    from jobstream.streams.ops.doctor import Dispatch, check_dispatcher

    idle = check_dispatcher(Dispatch(None, False, 0.0, 0.0, 0, 0.0, 0))
    assert idle.status is Status.OK  # nothing is due: nothing waits for a dispatcher
    assert "never taken" in idle.detail
    lapsed = check_dispatcher(Dispatch("w2:7:c", False, -42.0, 0.0, 5, 10.0, 0))
    assert lapsed.status is Status.WARN
    assert "the lease of w2 ended 42s ago" in lapsed.detail
    assert "start a worker" in lapsed.fix
    stalled = check_dispatcher(Dispatch("w2:7:c", False, -600.0, 0.0, 5000, 590.0, 0))
    assert stalled.status is Status.FAIL
