"""Static checks of the deployment and monitoring files.

promtool, amtool and helm validate what they own; the rest is parsed here and checked for the
structure the project relies on. The tools come from scripts/install-ops-tools.sh: without one,
its tests skip, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from jobstream.streams.metrics import Metrics
from jobstream.streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
PROM_DIR = MONITORING / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
ALERTMANAGER = MONITORING / "alertmanager" / "alertmanager.yml"
RUNBOOK = MONITORING / "RUNBOOK.md"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "jobstream.json"
GRAFANA_PROVISIONING = MONITORING / "grafana" / "provisioning"
CHART = ROOT / "helm" / "jobstream"
CHART_ALERTS = CHART / "files" / "alerts.yml"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
# the example team's package: its image is the jobstream image plus the package
EXAMPLE = ROOT / "examples" / "acme_jobs"
EXAMPLE_APP = "acme_jobs.jobs:app"

IN_CI = bool(os.environ.get("CI"))
# Rendered for a fixed Kubernetes version, whatever the local helm binary assumes by default.
KUBE_VERSION = "1.30.0"
SECRET_ENV = {
    "JOBSTREAM_DATABASE_URL": "DATABASE_URL",
    "JOBSTREAM_OPENROUTER_API_KEY": "OPENROUTER_API_KEY",
    "JOBSTREAM_SENTRY_DSN": "SENTRY_DSN",
    "JOBSTREAM_API_TOKEN": "API_TOKEN",
    "JOBSTREAM_METRICS_TOKEN": "METRICS_TOKEN",
}
# Metrics that come from Prometheus itself or from the Kafka lag exporter, not from jobstream.
EXTERNAL_METRICS = {"up", "kafka_consumergroup_lag", "kafka_consumergroup_lag_sum", "kafka_brokers"}


# --- helpers -------------------------------------------------------------------------------


def _unavailable(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is missing under CI: run scripts/install-ops-tools.sh")
    pytest.skip(f"{what} is not installed (scripts/install-ops-tools.sh installs it)")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def tool(name: str) -> str:
    """The tool's path: on PATH, or where `go install` put it (~/go/bin, $GOBIN, $GOPATH/bin)."""
    found = shutil.which(name)
    if found:
        return found
    dirs = [os.environ.get("GOBIN"), Path(os.environ.get("GOPATH", Path.home() / "go")) / "bin"]
    for d in dirs:
        if d and (candidate := Path(d) / name).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    _unavailable(name)
    raise AssertionError("unreachable")


def run(*args: str, cwd: Path = ROOT, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False, stdin=None
    )
    if ok:
        assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def helm_template(*values: str) -> list[dict[str, Any]]:
    out = run(
        tool("helm"), "template", "rel", str(CHART), "--namespace", "jobs",
        "--kube-version", KUBE_VERSION, *values,
    ).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(ALERTS)["groups"] for r in g["rules"] if "alert" in r]


def recording_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(ALERTS)["groups"] for r in g["rules"] if "record" in r]


def duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(number) * units[unit]
    assert total > 0, f"not a duration: {text!r}"
    return total


def github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


# --- metric names in PromQL ----------------------------------------------------------------

_PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "bool", "offset"}
_PROMQL_WORDS |= {"group_left", "group_right", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric (and recording rule) names in an expression: identifiers that are not functions,
    keywords, label names, numbers, durations or Grafana variables."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\$\{?\w+\}?", "", e)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", "", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][\w:]*", e):
        if e[m.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group(0).lower() not in _PROMQL_WORDS:
            names.add(m.group(0))
    return names


def test_promql_metric_names_parser() -> None:
    quantile = (
        "histogram_quantile(0.99, sum by (type, le) "
        '(rate(jobstream_handler_duration_seconds_bucket{type=~"$type"}[5m])))'
    )
    expr = f"{quantile} > 1e3 and on () (sum(rate(x_total[$__rate_interval])) or vector(0)) == 0"
    assert promql_metric_names(expr) == {"jobstream_handler_duration_seconds_bucket", "x_total"}
    assert promql_metric_names('absent(up{job="w"} == 1)') == {"up"}
    assert promql_metric_names("jobstream:error_ratio:rate5m > 0.1") == {
        "jobstream:error_ratio:rate5m"
    }


@cache
def exported_metric_names() -> frozenset[str]:
    """Every sample name jobstream's Metrics can expose, from a fresh registry."""
    registry = CollectorRegistry()
    Metrics(registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    suffixes["summary"] = ("_sum", "_count")
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return frozenset(names)


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield panel["title"], target["expr"]
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard["panels"])


# --- Prometheus ----------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    run(tool("promtool"), "check", "config", "prometheus.yml", cwd=PROM_DIR)


@pytest.mark.parametrize("rules", [ALERTS, CHART_ALERTS], ids=["monitoring", "chart"])
def test_promtool_check_rules(rules: Path) -> None:
    run(tool("promtool"), "check", "rules", str(rules))


def test_promtool_rule_unit_tests() -> None:
    proc = run(tool("promtool"), "test", "rules", ALERTS_TEST.name, cwd=PROM_DIR)
    assert "SUCCESS" in proc.stdout


def test_prometheus_scrapes_what_the_rules_use() -> None:
    config = load_yaml(PROM_DIR / "prometheus.yml")
    jobs = {c["job_name"] for c in config["scrape_configs"]}
    assert {"jobstream-worker", "jobstream-api", "kafka-exporter"} <= jobs
    assert config["rule_files"] == ["alerts.yml"]
    targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]
    worker = next(c for c in config["scrape_configs"] if c["job_name"] == "jobstream-worker")
    # every replica, not just the one a static name would resolve to
    assert worker["dns_sd_configs"][0]["names"] == ["worker"]
    assert worker["dns_sd_configs"][0]["port"] == Settings().web_port


REQUIRED_ALERTS = {
    "JobstreamWorkerDown",
    "JobstreamConsumerLagHigh",
    "JobstreamDeadLettersHigh",
    "JobstreamErrorRatioHigh",
    "JobstreamHandlerLatencyHigh",
    "JobstreamUpstreamThrottled",
    "JobstreamDatabaseErrors",
    "JobstreamResultFlushSlow",
    "JobstreamStuck",
}


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= REQUIRED_ALERTS
    anchors = {
        github_anchor(line[3:]) for line in RUNBOOK.read_text().splitlines() if line[:3] == "## "
    }
    for rule in rules:
        name = rule["alert"]
        assert duration_s(rule["for"]) > 0, name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        notes = rule["annotations"]
        assert notes["summary"].strip(), name
        assert notes["description"].strip(), name
        path, _, anchor = notes["runbook"].partition("#")
        assert path == "monitoring/RUNBOOK.md", name
        assert anchor in anchors, f"{name}: no section #{anchor} in RUNBOOK.md"
    # an alert name used twice is one warning and one critical, never two of a kind
    for name in {r["alert"] for r in rules}:
        severities = [r["labels"]["severity"] for r in rules if r["alert"] == name]
        assert len(severities) == len(set(severities)), name


def test_recorded_series_are_read_in_the_group_that_records_them() -> None:
    """Rules of one group run in order; across groups an alert could see the previous
    evaluation's value, which makes alerts (and their unit tests) flaky."""
    for group in load_yaml(ALERTS)["groups"]:
        recorded: set[str] = set()
        for rule in group["rules"]:
            if "record" in rule:
                recorded.add(rule["record"])
                continue
            for name in promql_metric_names(rule["expr"]):
                if ":" in name:
                    assert name in recorded, f"{rule['alert']} reads {name} from another group"


def test_runbook_has_one_section_per_alert() -> None:
    sections = [line[3:].strip() for line in RUNBOOK.read_text().splitlines() if line[:3] == "## "]
    assert sorted(sections) == sorted({r["alert"] for r in alert_rules()})
    text = RUNBOOK.read_text()
    assert "jobstream dlq stats" in text
    assert "jobstream dlq replay" in text


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    fired: set[tuple[str, str]] = set()
    silent: set[str] = set()
    for case in load_yaml(ALERTS_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                fired.update(
                    (check["alertname"], a["exp_labels"]["severity"]) for a in check["exp_alerts"]
                )
            else:
                silent.add(check["alertname"])
    for rule in alert_rules():
        assert (rule["alert"], rule["labels"]["severity"]) in fired, f"{rule['alert']} never fires"
        assert rule["alert"] in silent, f"{rule['alert']} has no test where it stays silent"


def test_metric_names_in_rules_and_dashboard_exist() -> None:
    recorded = {r["record"] for r in recording_rules()}
    known = exported_metric_names() | EXTERNAL_METRICS | recorded
    used: dict[str, set[str]] = {}
    for rule in [*alert_rules(), *recording_rules()]:
        where = rule.get("alert") or rule["record"]
        for name in promql_metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"rule {where}")
    dashboard = json.loads(DASHBOARD.read_text())
    for title, expr in dashboard_exprs(dashboard):
        for name in promql_metric_names(expr):
            used.setdefault(name, set()).add(f"panel {title!r}")
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            metric = re.fullmatch(r"label_values\((\w+),\s*\w+\)", var["definition"])
            assert metric, var["definition"]
            used.setdefault(metric.group(1), set()).add(f"variable {var['name']}")
    unknown = {name: sorted(places) for name, places in used.items() if name not in known}
    assert not unknown, f"metrics that jobstream does not export: {unknown}"
    # the check has teeth: the core metrics are really used
    assert {"jobstream_jobs_completed_total", "kafka_consumergroup_lag", "up"} <= set(used)


# --- Alertmanager --------------------------------------------------------------------------


def test_amtool_check_config() -> None:
    run(tool("amtool"), "check-config", str(ALERTMANAGER))


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=JobstreamStuck"], "critical"),
        (["severity=warning", "alertname=JobstreamLagUnknown"], "warning"),
        (["alertname=Unlabelled"], "warning"),
    ],
)
def test_alertmanager_routes_by_severity(labels: list[str], receiver: str) -> None:
    proc = run(tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels)
    assert proc.stdout.split() == [receiver]


def test_alertmanager_inhibits_warning_by_critical_and_holds_no_secrets() -> None:
    config = load_yaml(ALERTMANAGER)
    rule = config["inhibit_rules"][0]
    assert rule["source_matchers"] == ['severity="critical"']
    assert rule["target_matchers"] == ['severity="warning"']
    assert "alertname" in rule["equal"]
    assert "instance" not in rule["equal"]  # "no worker at all" covers "worker X down"
    assert config["route"]["group_by"]
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            assert ".invalid/" in hook["url"], "receivers are placeholders"
            auth = hook["http_config"]["authorization"]
            assert "credentials" not in auth
            assert auth["credentials_file"].startswith("/run/")


# --- Grafana -------------------------------------------------------------------------------


def test_grafana_dashboard_and_provisioning() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "jobstream"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
    exprs = " ".join(expr for _, expr in dashboard_exprs(dashboard))
    for needed in [
        "sum by (outcome) (rate(jobstream_jobs_completed_total",
        "histogram_quantile(0.5, sum by (type, le) (rate(jobstream_handler_duration_seconds",
        "histogram_quantile(0.99, sum by (type, le) (rate(jobstream_handler_duration_seconds",
        "jobstream_in_flight_jobs",
        "jobstream_running_jobs",
        "jobstream_waiting_jobs",
        "sum by (tier) (rate(jobstream_retries_total",
        "sum by (reason) (rate(jobstream_dead_letters_total",
        "kafka_consumergroup_lag",
        "jobstream_rate_limit_wait_seconds_bucket",
        "jobstream_upstream_throttled_total",
        "jobstream_result_flush_seconds_bucket",
        "jobstream_result_batch_size",
    ]:
        assert needed in exprs, needed

    datasource = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")
    (source,) = datasource["datasources"]
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert source["uid"] == variable["current"]["value"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"

    providers = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "jobstream.yml")["providers"]
    compose = load_yaml(COMPOSE)
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./monitoring/grafana/dashboards:{providers[0]['options']['path']}:ro" in mounts
    assert "./monitoring/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


# --- Helm ----------------------------------------------------------------------------------

ALL_ON = [
    "--set", "autoscaling.enabled=true",
    "--set", "serviceMonitor.enabled=true",
    "--set", "prometheusRule.enabled=true",
]  # fmt: skip


@pytest.mark.parametrize("values", [[], ALL_ON], ids=["defaults", "all-on"])
def test_helm_lint(values: list[str]) -> None:
    run(tool("helm"), "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), *values)


def test_chart_alerts_copy_equals_monitoring_rules() -> None:
    assert CHART_ALERTS.read_bytes() == ALERTS.read_bytes(), (
        "helm/jobstream/files/alerts.yml differs from monitoring/prometheus/alerts.yml: "
        "cp monitoring/prometheus/alerts.yml helm/jobstream/files/alerts.yml"
    )


def test_helm_template_defaults() -> None:
    docs = helm_template()
    kinds = sorted(d["kind"] for d in docs)
    expected = ["Deployment", "Deployment", "Service", "Service", "Job"]
    expected += ["PodDisruptionBudget", "PodDisruptionBudget", "NetworkPolicy", "NetworkPolicy"]
    assert kinds == sorted(expected)

    worker = find(docs, "Deployment", "rel-jobstream-worker")
    assert worker["spec"]["replicas"] == 2
    pod = worker["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = env_of(container)
    grace = float(env["JOBSTREAM_SHUTDOWN_GRACE_S"]["value"])
    assert grace == Settings().shutdown_grace_s
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace
    assert container["args"] == ["worker"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 6066, "protocol": "TCP"}]
    assert env["JOBSTREAM_CONCURRENCY"]["value"] == "25"
    assert env["JOBSTREAM_KAFKA_BOOTSTRAP"]["value"]
    assert json.loads(env["JOBSTREAM_RETRY_TIERS_S"]["value"]) == [10, 60, 600]
    assert json.loads(env["JOBSTREAM_RATE_LIMITS"]["value"]) == {
        "openrouter": {"rate": 50, "per": 1}
    }
    for var, key in SECRET_ENV.items():
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "rel-jobstream", var
        assert ref["key"] == key, var
        assert ref.get("optional", False) is (var != "JOBSTREAM_DATABASE_URL"), var
    assert not any("value" in e for n, e in env.items() if n in SECRET_ENV)
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "6066"
    anti = pod["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] > 0
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    api = find(docs, "Deployment", "rel-jobstream-api")
    assert api["spec"]["template"]["spec"]["containers"][0]["args"] == ["api"]
    service = find(docs, "Service", "rel-jobstream-api")
    assert service["spec"]["ports"][0]["targetPort"] == "http"

    job = find(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    job_container = job["spec"]["template"]["spec"]["containers"][0]
    assert job_container["args"] == ["migrate"]
    job_env = env_of(job_container)
    assert "JOBSTREAM_DATABASE_URL" in job_env
    assert "JOBSTREAM_KAFKA_BOOTSTRAP" in job_env

    pdb = find(docs, "PodDisruptionBudget", "rel-jobstream-worker")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"]


def test_helm_template_all_on() -> None:
    docs = helm_template(*ALL_ON)
    worker = find(docs, "Deployment", "rel-jobstream-worker")
    assert "replicas" not in worker["spec"], "the HPA owns the replica count"
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "rel-jobstream-worker"
    assert hpa["spec"]["maxReplicas"] <= 8

    monitor = find(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    label = monitor["spec"]["jobLabel"]
    jobs = {
        d["metadata"]["labels"][label]
        for d in docs
        if d["kind"] == "Service" and label in d["metadata"]["labels"]
    }
    assert jobs == {"jobstream-worker", "jobstream-api"}, "the job names the alert rules use"

    rule = find(docs, "PrometheusRule")
    assert rule["spec"] == load_yaml(ALERTS)


def test_helm_runs_a_teams_image_and_app() -> None:
    defaults = helm_template()
    for d in defaults:
        for container in pod_containers(d):
            assert "JOBSTREAM_APP" not in env_of(container)  # the image's, else the built-in
    docs = helm_template(
        "--set", f"app={EXAMPLE_APP}",
        "--set", "image.repository=registry.example.com/acme-jobs",
        "--set", "image.tag=1.4.2",
    )  # fmt: skip
    containers = [c for d in docs for c in pod_containers(d)]
    assert {c["args"][0] for c in containers} == {"worker", "api", "migrate"}
    for container in containers:
        assert container["image"] == "registry.example.com/acme-jobs:1.4.2"
        assert env_of(container)["JOBSTREAM_APP"]["value"] == EXAMPLE_APP
    proc = run(
        tool("helm"), "template", "rel", str(CHART), "--kube-version", KUBE_VERSION,
        "--set", "app=acme-jobs/jobs.py", ok=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "app" in proc.stderr


def pod_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a Deployment, Job, CronJob or Pod (none for other kinds)."""
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec.get("template", {}).get("spec") or (spec if doc["kind"] == "Pod" else {})
    containers: list[dict[str, Any]] = pod.get("containers", [])
    return containers


def ingress_of(docs: list[dict[str, Any]], name: str) -> dict[str, list[dict[str, Any]] | None]:
    """port name -> the peers admitted to it (None: any source)."""
    policy = find(docs, "NetworkPolicy", name)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    return {
        port["port"]: rule.get("from")
        for rule in policy["spec"]["ingress"]
        for port in rule["ports"]
    }


def test_helm_network_policies_by_default_admit_only_the_served_ports() -> None:
    docs = helm_template()
    for component in ("worker", "api"):
        # /metrics shares the web port, whose peers are "any" until apiFrom is set
        assert ingress_of(docs, f"rel-jobstream-{component}") == {"http": None}


def test_helm_metrics_on_their_own_port_behind_a_token_and_a_policy() -> None:
    producers = {"podSelector": {"matchLabels": {"role": "producer"}}}
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
    docs = helm_template(
        "--set", "config.metricsPort=6067",
        "--set", "serviceMonitor.enabled=true",
        "--set", "serviceMonitor.authorization=true",
        "--set", "console.enabled=true",
        "--set-json", f"networkPolicy.apiFrom=[{json.dumps(producers)}]",
        "--set-json", f"networkPolicy.metricsFrom=[{json.dumps(monitoring)}]",
    )  # fmt: skip
    for component in ("worker", "api"):
        deployment = find(docs, "Deployment", f"rel-jobstream-{component}")
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert {"name": "metrics", "containerPort": 6067, "protocol": "TCP"} in container["ports"]
        assert env_of(container)["JOBSTREAM_METRICS_PORT"]["value"] == "6067"
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == "6067"
        service = find(docs, "Service", f"rel-jobstream-{component}")
        assert {p["name"] for p in service["spec"]["ports"]} == {"http", "metrics"}
        assert ingress_of(docs, f"rel-jobstream-{component}") == {
            "http": [producers],
            "metrics": [monitoring],
        }
    assert ingress_of(docs, "rel-jobstream-console") == {"http": None}
    (endpoint,) = find(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "rel-jobstream", "key": "METRICS_TOKEN"},
    }
    # without a port of its own, the scrapers' peers are admitted to the web port
    shared = helm_template(
        "--set-json", f"networkPolicy.apiFrom=[{json.dumps(producers)}]",
        "--set-json", f"networkPolicy.metricsFrom=[{json.dumps(monitoring)}]",
    )  # fmt: skip
    assert ingress_of(shared, "rel-jobstream-worker") == {"http": [producers, monitoring]}


def test_helm_refuses_a_grace_period_shorter_than_the_drain() -> None:
    proc = run(
        tool("helm"), "template", "rel", str(CHART), "--kube-version", KUBE_VERSION,
        "--set", "worker.terminationGracePeriodSeconds=20", ok=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "must exceed config.shutdownGraceSeconds" in proc.stderr


def test_helm_schema_rejects_bad_values() -> None:
    proc = run(
        tool("helm"), "template", "rel", str(CHART), "--kube-version", KUBE_VERSION,
        "--set", "config.concurrency=0", ok=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "concurrency" in proc.stderr


# --- docker-compose ------------------------------------------------------------------------

JOBSTREAM_SERVICES = {"migrate", "worker", "api", "fake-openrouter"}


def test_compose_structure() -> None:
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    assert set(services) >= JOBSTREAM_SERVICES | {
        "kafka", "postgres", "prometheus", "alertmanager", "grafana", "kafka-exporter",
    }  # fmt: skip
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert services["postgres"]["image"] == "postgres:15"
    for name in ("kafka", "postgres"):
        check = services[name]["healthcheck"]
        assert check["test"], name
        assert check["interval"], name
        assert check["retries"], name

    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2
    assert "container_name" not in worker
    assert "ports" not in worker
    assert duration_s(worker["stop_grace_period"]) > Settings().shutdown_grace_s
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"

    for name in JOBSTREAM_SERVICES | {"acme-worker"}:
        service = services[name]
        if name == "fake-openrouter":  # development tooling: the image with jobstream[dev]
            assert service["image"] == "jobstream-dev:local"
            assert service["build"] == {"context": ".", "target": "dev"}
        elif name != "acme-worker":
            assert service["image"] == "jobstream:local"
            assert service["build"] == {"context": ".", "target": "runtime"}
        env = service["environment"]
        # with either missing the CLI would start a local Kafka or PostgreSQL of its own
        assert env["JOBSTREAM_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        assert "@postgres:5432/" in env["JOBSTREAM_DATABASE_URL"], name
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["api"]["command"] == ["api"]
    assert services["worker"]["command"] == ["worker"]
    assert services["fake-openrouter"]["command"][0] == "fake-openrouter"

    assert "--kafka.server=kafka:9092" in services["kafka-exporter"]["command"]
    assert "./monitoring/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    # published ports reach the laptop only
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_runs_a_teams_image_with_its_app() -> None:
    services = load_yaml(COMPOSE)["services"]
    acme, worker = services["acme-worker"], services["worker"]
    assert acme["profiles"] == ["acme"]
    assert acme["command"] == ["worker"]
    build = acme["build"]
    assert ROOT / build["context"] == EXAMPLE
    assert (EXAMPLE / "Dockerfile").is_file()
    # the team's FROM ${JOBSTREAM_IMAGE} is the image compose builds for the jobstream services
    base = build["args"]["JOBSTREAM_IMAGE"]
    service = build["additional_contexts"][base].removeprefix("service:")
    assert services[service]["image"] == worker["image"] == "jobstream:local"
    env = acme["environment"]
    assert env["JOBSTREAM_APP"] == EXAMPLE_APP
    assert "JOBSTREAM_APP" not in worker["environment"]  # the stack's workers: built-in types
    # its own topics and group: the built-in workers never see a type they do not know
    assert env["JOBSTREAM_TOPIC_PREFIX"] != worker["environment"]["JOBSTREAM_TOPIC_PREFIX"]
    assert env["JOBSTREAM_GROUP_ID"] != worker["environment"].get("JOBSTREAM_GROUP_ID")
    assert duration_s(acme["stop_grace_period"]) > Settings().shutdown_grace_s


def test_docker_compose_config() -> None:
    """`docker compose config` validates against the Compose specification without a daemon.
    Optional: the install script does not provide the compose plugin."""
    docker = shutil.which("docker")
    if not docker or run(docker, "compose", "version", ok=False).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    run(docker, "compose", "-f", str(COMPOSE), "config", "--quiet")


# --- Dockerfile ----------------------------------------------------------------------------


@dataclass
class Stage:
    base: str  # what FROM names
    name: str | None
    instructions: list[str]

    def runs(self) -> str:
        return " ".join(i for i in self.instructions if i.startswith("RUN "))


def dockerfile_stages(path: Path) -> list[Stage]:
    """The stages of a Dockerfile, each with its instructions (continuations joined, comments
    dropped), in order."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[Stage] = []
    for line in (line.strip() for line in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            words = line.split()
            stages.append(Stage(words[1], words[3] if len(words) > 3 else None, []))
        elif stages:
            stages[-1].instructions.append(re.sub(r"\s+", " ", line))
    return stages


def stage(stages: list[Stage], name: str) -> Stage:
    (found,) = [s for s in stages if s.name == name]
    return found


def dockerignored(path: Path) -> set[str]:
    return {
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }


def test_dockerfile_installs_the_runtime_lock_and_no_dev_tooling() -> None:
    text = DOCKERFILE.read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    stages = dockerfile_stages(DOCKERFILE)
    assert [(s.base, s.name) for s in stages] == [
        ("${PYTHON_IMAGE}", "build"),
        ("build", "build-dev"),
        ("${PYTHON_IMAGE}", "base"),
        ("base", "dev"),
        ("base", "runtime"),  # the last stage: what `docker build .` gives
    ]
    build = stage(stages, "build")
    # the locked versions, hashes checked, before the sources: then only the package, no resolve
    lock = "RUN pip install --require-hashes -r requirements/runtime.lock"
    assert build.instructions.index(lock) < build.instructions.index("COPY . .")
    assert "pip install --no-deps /wheels/jobstream-*.whl" in build.runs()
    assert "pip check" in build.runs()
    assert "pip install ." not in build.runs()
    dev = stage(stages, "build-dev")
    assert "--require-hashes -r requirements/dev-stack.lock" in dev.runs()
    assert '--no-index --find-links /wheels "jobstream[dev]"' in dev.runs()
    # the production image copies the venv of `build`, the dev image that of `build-dev`
    assert stage(stages, "runtime").instructions == ["COPY --from=build /opt/venv /opt/venv"]
    assert "COPY --from=build-dev /opt/venv /opt/venv" in stage(stages, "dev").instructions
    base = stage(stages, "base").instructions
    user = [i for i in base if i.startswith("USER ")]
    assert user
    assert user[-1] not in {"USER root", "USER 0"}
    healthcheck = next(i for i in base if i.startswith("HEALTHCHECK"))
    assert "/health" in healthcheck
    assert "/ready" not in healthcheck
    assert 'ENTRYPOINT ["jobstream"]' in base
    assert base[-1] == 'CMD ["worker"]'
    assert any("JOBSTREAM_WEB_HOST=0.0.0.0" in i for i in base)

    ignored = dockerignored(ROOT / ".dockerignore")
    assert {".git", ".venv", "tests", ".env", "examples"} <= ignored
    assert not {"pyproject.toml", "streams", "agents", "models", "README.md"} & ignored
    assert not {"requirements", "jobstream"} & ignored
    for copied in ("requirements/runtime.lock", "requirements/dev-stack.lock"):
        assert (ROOT / copied).is_file(), copied


def test_a_teams_dockerfile_adds_its_locked_package_to_the_jobstream_image() -> None:
    dockerfile = EXAMPLE / "Dockerfile"
    stages = dockerfile_stages(dockerfile)
    assert [(s.base, s.name) for s in stages] == [
        ("${JOBSTREAM_IMAGE}", "wheel"),
        ("${JOBSTREAM_IMAGE}", None),
    ]
    assert "ARG JOBSTREAM_IMAGE=jobstream:local" in dockerfile.read_text()
    assert "pip wheel --no-cache-dir --no-deps" in stages[0].runs()
    final = stages[1]
    assert "--require-hashes -r /tmp/requirements.lock" in final.runs()
    assert "pip install --no-cache-dir --no-deps /wheels/*.whl" in final.runs()
    assert "pip check" in final.runs()
    user = [i for i in final.instructions if i.startswith("USER ")]
    assert user[-1] == "USER 10001:10001"  # the jobstream image's user, as before the build
    assert final.instructions[-1] == f"ENV JOBSTREAM_APP={EXAMPLE_APP}"
    assert "requirements.lock" not in dockerignored(EXAMPLE / ".dockerignore")
    # the lock leaves jobstream to the base image and moves none of its pins
    runtime = lock_pins(ROOT / "requirements" / "runtime.lock")
    example = lock_pins(EXAMPLE / "requirements.lock")
    assert "jobstream" not in example
    shared = example.keys() & runtime.keys()
    assert {n: runtime[n] for n in shared} == {n: example[n] for n in shared}, (
        "examples/acme_jobs/requirements.lock moves a pin of requirements/runtime.lock: "
        "make example-lock"
    )
    assert "--hash=sha256:" in (EXAMPLE / "requirements.lock").read_text()
    pyproject = EXAMPLE / "pyproject.toml"
    if pyproject.is_file():  # every dependency of the team's package is pinned
        wanted = {
            re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0].lower().replace("_", "-")
            for d in tomllib.loads(pyproject.read_text())["project"]["dependencies"]
        }
        missing = wanted - {"jobstream"} - example.keys()
        assert not missing, (
            f"not in examples/acme_jobs/requirements.lock: {missing}: make example-lock"
        )


def lock_pins(path: Path) -> dict[str, str]:
    pins = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==([^\s;\\]+)", path.read_text(), re.M))
    assert pins, path
    return pins


def test_install_script_is_valid_bash() -> None:
    script = ROOT / "scripts" / "install-ops-tools.sh"
    assert os.access(script, os.X_OK)
    run("bash", "-n", str(script))


# --- the Compose specification and the settings the deployment files set --------------------

# schema/compose-spec.json of github.com/compose-spec/compose-spec at 170098ba07d9 (2026-06-23),
# the schema `docker compose` (compose-go) validates a file against
COMPOSE_SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"
_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>\w+)(?::?[-?](?P<default>[^}]*))?\}")


def compose_interpolated(text: str) -> Any:
    """The file as Compose sees it with no .env: ``${VAR:-default}`` becomes the default and
    ``$$`` a literal ``$`` (Compose interpolates before it validates)."""

    def sub(m: re.Match[str]) -> str:
        return "$" if m.group(0) == "$$" else (m.group("default") or "")

    return yaml.safe_load(_INTERPOLATION.sub(sub, text))


def compose_schema_errors(doc: Any) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def test_compose_file_matches_the_compose_specification() -> None:
    assert compose_schema_errors(compose_interpolated(COMPOSE.read_text())) == []


def test_compose_schema_check_catches_mistakes() -> None:
    """The check itself works: typical slips in a compose file are reported."""
    doc = compose_interpolated(COMPOSE.read_text())
    doc["services"]["worker"]["enviroment"] = {"JOBSTREAM_CONCURRENCY": "25"}
    doc["services"]["api"]["depends_on"]["kafka"]["condition"] = "service_ready"
    doc["services"]["kafka"]["healthcheck"]["interval"] = 10  # a duration is a string
    doc["services"]["kafka"]["ports"] = "127.0.0.1:29092:29092"
    errors = compose_schema_errors(doc)
    assert any("enviroment" in e for e in errors), errors
    assert any(e.startswith("services/api/depends_on:") for e in errors), errors
    assert any(e.startswith("services/kafka/healthcheck/interval:") for e in errors), errors
    assert any(e.startswith("services/kafka/ports:") for e in errors), errors


def setting_names() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def compose_jobstream_env() -> dict[str, dict[str, str]]:
    """service -> the JOBSTREAM_* variables it sets (after interpolation)."""
    doc = compose_interpolated(COMPOSE.read_text())
    found: dict[str, dict[str, str]] = {}
    for name, service in doc["services"].items():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
        found[name] = {k: str(v) for k, v in env.items() if k.startswith("JOBSTREAM_")}
    return found


def chart_jobstream_names() -> set[str]:
    """Every JOBSTREAM_* name the chart's templates and values mention, comments included: a
    name that is no setting misleads there too."""
    files = [*(CHART / "templates").iterdir(), CHART / "values.yaml"]
    return {
        m for f in files if f.is_file() for m in re.findall(r"JOBSTREAM_[A-Z0-9_]+", f.read_text())
    }


def settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in os.environ:
        if name.startswith("JOBSTREAM_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_every_jobstream_variable_in_compose_is_a_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settings ignore unknown variables (extra="ignore"), so a misspelt one would be dropped
    silently; and each value must parse as its setting."""
    known = setting_names()
    for service, env in compose_jobstream_env().items():
        assert set(env) <= known, f"{service}: not settings: {sorted(set(env) - known)}"
        with monkeypatch.context() as m:
            settings_from_env(env, m)  # raises on a value of the wrong type


def test_every_jobstream_variable_in_the_chart_is_a_setting() -> None:
    unknown = chart_jobstream_names() - setting_names()
    assert not unknown, f"the chart names variables that are not settings: {sorted(unknown)}"


KAFKA_SECURED = [
    "--set", "config.kafkaSecurity.protocol=SASL_SSL",
    "--set", "config.kafkaSecurity.saslMechanism=SCRAM-SHA-512",
    "--set", "config.kafkaSecurity.saslUsername=svc-jobstream",
    "--set", "config.kafkaSecurity.tlsSecret=kafka-tls",
    "--set", "config.kafkaSecurity.clientCertificate=true",
]  # fmt: skip


def test_every_jobstream_variable_the_chart_renders_is_a_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    known = setting_names()
    for values in ([], ALL_ON, KAFKA_SECURED):
        for doc in helm_template(*values):
            spec = doc.get("spec", {})
            pod = spec.get("template", spec.get("jobTemplate", {}).get("spec", {}).get("template"))
            if not pod:
                continue
            for container in pod["spec"].get("containers", []):
                env = {e["name"]: e for e in container.get("env", [])}
                names = {n for n in env if n.startswith("JOBSTREAM_")}
                where = f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}"
                assert names <= known, f"{where}: not settings: {sorted(names - known)}"
                literal = {n: str(env[n]["value"]) for n in names if "value" in env[n]}
                with monkeypatch.context() as m:
                    settings_from_env(literal, m)


def test_helm_kafka_security() -> None:
    run(
        tool("helm"), "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), *KAFKA_SECURED
    )
    docs = helm_template(*KAFKA_SECURED)
    for kind, name in [("Deployment", "rel-jobstream-worker"), ("Job", None)]:
        pod = find(docs, kind, name)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = env_of(container)
        assert env["JOBSTREAM_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
        assert env["JOBSTREAM_KAFKA_SASL_MECHANISM"]["value"] == "SCRAM-SHA-512"
        assert env["JOBSTREAM_KAFKA_SASL_USERNAME"]["value"] == "svc-jobstream"
        ref = env["JOBSTREAM_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "rel-jobstream", "key": "KAFKA_SASL_PASSWORD", "optional": True}
        mount = next(m for m in container["volumeMounts"] if m["name"] == "kafka-tls")
        assert mount["readOnly"] is True
        for var, file in [("CAFILE", "ca.crt"), ("CERTFILE", "tls.crt"), ("KEYFILE", "tls.key")]:
            assert env[f"JOBSTREAM_KAFKA_SSL_{var}"]["value"] == f"{mount['mountPath']}/{file}"
        volume = next(v for v in pod["volumes"] if v["name"] == "kafka-tls")
        assert volume["secret"]["secretName"] == "kafka-tls"

    plain = find(helm_template(), "Deployment", "rel-jobstream-worker")
    env = env_of(plain["spec"]["template"]["spec"]["containers"][0])
    assert "JOBSTREAM_KAFKA_SECURITY_PROTOCOL" not in env, "PLAINTEXT renders as before"

    proc = run(
        tool("helm"), "template", "rel", str(CHART), "--kube-version", KUBE_VERSION,
        "--set", "config.kafkaSecurity.protocol=SASL_SSL", ok=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "saslUsername is required" in proc.stderr


# --- backups -------------------------------------------------------------------------------

BACKUP_ON = ["--set", "backup.enabled=true"]


def test_helm_backup_cronjob() -> None:
    run(tool("helm"), "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), *BACKUP_ON)
    docs = helm_template(*BACKUP_ON)
    cron = find(docs, "CronJob", "rel-jobstream-backup")
    assert cron["spec"]["schedule"] == "17 3 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["args"] == ["backup", "/var/lib/jobstream/backups/", "--keep", "7"]
    env = env_of(container)
    ref = env["JOBSTREAM_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "rel-jobstream", "key": "DATABASE_URL"}
    assert env["JOBSTREAM_GROUP_ID"]["value"] == "jobstream"  # the group whose offsets it records
    assert "JOBSTREAM_BACKUP_DATABASE_URL" not in env
    mount = next(m for m in container["volumeMounts"] if m["name"] == "backups")
    assert container["args"][1].startswith(mount["mountPath"])
    volume = next(v for v in pod["volumes"] if v["name"] == "backups")
    pvc = find(docs, "PersistentVolumeClaim", "rel-jobstream-backups")
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"

    docs = helm_template(
        *BACKUP_ON,
        "--set", "backup.persistence.existingClaim=pg-dumps",
        "--set", "backup.databaseUrlKey=DIRECT_DATABASE_URL",
    )  # fmt: skip
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    pod = find(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "backups")
    assert volume["persistentVolumeClaim"]["claimName"] == "pg-dumps"
    direct = env_of(pod["containers"][0])["JOBSTREAM_BACKUP_DATABASE_URL"]
    assert direct["valueFrom"]["secretKeyRef"]["key"] == "DIRECT_DATABASE_URL"
    assert Settings.model_fields.keys() >= {"backup_database_url", "group_id"}

    assert not [d for d in helm_template() if d["kind"] in ("CronJob", "PersistentVolumeClaim")]
    proc = run(
        tool("helm"), "template", "rel", str(CHART), "--kube-version", KUBE_VERSION,
        *BACKUP_ON, "--set", "backup.keep=-1", ok=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "keep" in proc.stderr


# --- lag from the workers ------------------------------------------------------------------


def test_lag_rules_use_the_workers_series_and_name_no_group_or_topic() -> None:
    for rule in [*alert_rules(), *recording_rules()]:
        where = rule.get("alert") or rule["record"]
        assert "kafka_consumergroup_lag" not in rule["expr"], f"{where} needs the exporter"
        assert not re.search(r'(consumergroup|group|topic)\s*=~?\s*"', rule["expr"]), where
    recorded = {r["record"]: r["expr"] for r in recording_rules()}
    assert promql_metric_names(recorded["jobstream:consumer_lag:sum"]) == {
        "jobstream_consumer_lag_events"
    }
    assert promql_metric_names(recorded["jobstream:consumer_lag_seconds:max"]) == {
        "jobstream_consumer_lag_seconds"
    }
    lag_alerts = {r["alert"] for r in alert_rules() if "lag" in r["expr"] or "retry_" in r["expr"]}
    assert lag_alerts >= {
        "JobstreamConsumerLagHigh", "JobstreamTimeLagHigh", "JobstreamStuck",
        "JobstreamLagUnknown", "JobstreamRetryTierBehind",
    }  # fmt: skip


def test_dashboard_lag_comes_from_the_workers_with_the_exporter_optional() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [expr for _, expr in dashboard_exprs(dashboard)]
    for name in (
        "jobstream_consumer_lag_events",
        "jobstream_consumer_lag_seconds",
        "jobstream_retry_waiting_events",
        "jobstream_retry_oldest_seconds",
    ):
        assert any(name in e for e in exprs), name
    exporter = [t for t, e in dashboard_exprs(dashboard) if "kafka_consumergroup_lag" in e]
    assert exporter
    assert all("optional" in t for t in exporter)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("group", "topic"):
        expected = f"label_values(jobstream_consumer_lag_events, {name})"
        assert variables[name]["definition"] == expected


# --- autoscaling on lag (KEDA) and the doctor's probe ---------------------------------------

KEDA = ["--set", "autoscaling.enabled=true", "--set", "autoscaling.mode=keda"]


@pytest.mark.parametrize("mode", ["cpu", "keda"])
def test_helm_lint_each_autoscaling_mode(mode: str) -> None:
    run(
        tool("helm"), "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART),
        "--set", "autoscaling.enabled=true", "--set", f"autoscaling.mode={mode}",
    )  # fmt: skip


def test_helm_keda_scales_on_the_groups_lag_instead_of_cpu() -> None:
    docs = helm_template(
        *KEDA,
        "--set", "autoscaling.keda.lagThreshold=300",
        "--set", "config.groupId=orders", "--set", "config.topicPrefix=orders.jobs",
    )  # fmt: skip
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"], "never both"
    worker = find(docs, "Deployment", "rel-jobstream-worker")
    assert "replicas" not in worker["spec"], "KEDA owns the replica count"
    scaled = find(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "rel-jobstream-worker"
    assert spec["minReplicaCount"] == 2
    assert spec["maxReplicaCount"] <= int(
        env_of(worker_container(docs))["JOBSTREAM_PARTITIONS"]["value"]
    )
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == "orders"
    assert meta["topic"] == "orders.jobs"
    assert meta["lagThreshold"] == "300"
    assert meta["bootstrapServers"] == "kafka:9092"
    assert meta["allowIdleConsumers"] == "false"
    assert "authenticationRef" not in trigger  # PLAINTEXT
    assert not [d for d in docs if d["kind"] == "TriggerAuthentication"]


def worker_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    worker = find(docs, "Deployment", "rel-jobstream-worker")
    return worker["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_helm_keda_caps_replicas_at_the_partition_count() -> None:
    docs = helm_template(
        *KEDA, "--set", "config.partitions=4", "--set", "autoscaling.maxReplicas=4"
    )
    assert find(docs, "ScaledObject")["spec"]["maxReplicaCount"] == 4
    proc = run(
        tool("helm"), "template", "rel", str(CHART), "--kube-version", KUBE_VERSION, *KEDA,
        "--set", "config.partitions=4", "--set", "autoscaling.maxReplicas=6", ok=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "exceeds config.partitions" in proc.stderr
    proc = run(
        tool("helm"), "template", "rel", str(CHART), "--kube-version", KUBE_VERSION,
        "--set", "autoscaling.mode=memory", ok=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "mode" in proc.stderr


def test_helm_keda_authenticates_like_the_workers() -> None:
    docs = helm_template(
        *KEDA,
        "--set", "config.kafkaSecurity.protocol=SASL_SSL",
        "--set", "config.kafkaSecurity.saslMechanism=SCRAM-SHA-256",
        "--set", "config.kafkaSecurity.saslUsername=jobs",
        "--set", "config.kafkaSecurity.tlsSecret=kafka-ca",
    )  # fmt: skip
    (trigger,) = find(docs, "ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["sasl"] == "scram_sha256"
    assert trigger["metadata"]["tls"] == "enable"
    auth = find(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert refs["password"] == {"parameter": "password", "name": "rel-jobstream",
                                "key": "KAFKA_SASL_PASSWORD"}  # fmt: skip
    assert refs["ca"] == {"parameter": "ca", "name": "kafka-ca", "key": "ca.crt"}
    (username,) = auth["spec"]["env"]
    assert username["name"] == "JOBSTREAM_KAFKA_SASL_USERNAME"
    assert username["name"] in env_of(worker_container(docs))


def test_helm_test_runs_the_doctors_probe() -> None:
    assert not [d for d in helm_template() if d["kind"] == "Pod"]
    docs = helm_template("--set", "doctor.helmTest=true")
    pod = find(docs, "Pod", "rel-jobstream-doctor")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["doctor", "--probe"]
    env = env_of(container)
    assert "valueFrom" in env["JOBSTREAM_DATABASE_URL"]
    assert env["JOBSTREAM_KAFKA_BOOTSTRAP"]
