"""The chart's optional console: absent by default; when enabled, a Deployment running
``jobstream console`` with its tokens from the Secret (and only there) and a Service."""

from __future__ import annotations

from tests.unit.test_ops_config import env_of, find, helm_template

CONSOLE = ("--set", "console.enabled=true", "--set", "config.kafkaBootstrap=kafka:9092")


def test_the_console_is_off_by_default() -> None:
    docs = helm_template("--set", "config.kafkaBootstrap=kafka:9092")
    assert not [d for d in docs if d["metadata"]["name"].endswith("-console")]


def test_the_console_deployment_and_service() -> None:
    docs = helm_template(*CONSOLE, "--set", "console.showPayloads=true")
    deployment = find(docs, "Deployment", "rel-jobstream-console")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["console"]
    env = env_of(container)
    assert env["JOBSTREAM_CONSOLE_HOST"]["value"] == "0.0.0.0"
    assert env["JOBSTREAM_CONSOLE_PORT"]["value"] == "6070"
    assert env["JOBSTREAM_CONSOLE_SHOW_PAYLOADS"]["value"] == "true"
    for name, key in [
        ("JOBSTREAM_CONSOLE_VIEWER_TOKEN", "CONSOLE_VIEWER_TOKEN"),
        ("JOBSTREAM_CONSOLE_OPERATOR_TOKEN", "CONSOLE_OPERATOR_TOKEN"),
        ("JOBSTREAM_CONSOLE_SECRET_KEY", "CONSOLE_SECRET_KEY"),
    ]:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["key"] == key
        assert ref["name"] == "rel-jobstream"
    assert "value" not in env["JOBSTREAM_DATABASE_URL"]  # from the Secret, as everywhere
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False

    service = find(docs, "Service", "rel-jobstream-console")
    assert service["spec"]["ports"][0]["port"] == 6070
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "console"
    # the console's tokens reach no other pod
    worker = find(docs, "Deployment", "rel-jobstream-worker")
    assert not {n for n in env_of(worker["spec"]["template"]["spec"]["containers"][0])} & {
        "JOBSTREAM_CONSOLE_VIEWER_TOKEN",
        "JOBSTREAM_CONSOLE_OPERATOR_TOKEN",
    }
