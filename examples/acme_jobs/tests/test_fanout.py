"""``event.fanout`` and the ``http.webhook`` deliveries it publishes, against real receivers."""

from __future__ import annotations

import pytest
from acme_jobs.config import AcmeSettings
from acme_jobs.jobs import Notify, delivery_id, fan_out
from upstreams import Receivers
from worker import RECEIVERS, RecordingClient, settings

from jobstream import JobStatus, builtin
from jobstream.testing import JobRun, JobTester

PAID = Notify(event="order.paid", data={"order": 42, "amount_cents": 1999})


async def deliver_all(tester: JobTester, jobs: RecordingClient) -> list[JobRun]:
    """Run what the fan-out published, as the workers would take it from the topic."""
    return [await tester.deliver(event) for event in jobs.sent]


async def test_an_event_reaches_every_subscribed_receiver_once(
    tester: JobTester, jobs: RecordingClient, receivers: Receivers
) -> None:
    fanout = await tester.run(fan_out, PAID, job_id="F-1")
    urls = [receivers.url(p) for p in RECEIVERS]
    assert fanout.succeeded
    assert fanout.result == {"deliveries": [delivery_id("F-1", u) for u in urls]}
    assert [(e.type, e.payload["url"]) for e in jobs.sent] == [("http.webhook", u) for u in urls]
    assert receivers.received == []  # nothing is delivered by the fan-out itself

    runs = await deliver_all(tester, jobs)
    assert [r.status for r in runs] == [JobStatus.SUCCEEDED] * 3
    assert [r.path for r in receivers.received] == list(RECEIVERS)
    for got, run in zip(receivers.received, runs, strict=True):
        assert got.body == {"event": "order.paid", "id": "F-1", "data": PAID.data}
        assert got.headers["X-Acme-Event"] == "order.paid"
        assert got.headers["Idempotency-Key"] == run.job_id  # receivers drop duplicates with it


async def test_each_receiver_is_retried_or_dead_lettered_on_its_own(
    tester: JobTester, jobs: RecordingClient, receivers: Receivers
) -> None:
    receivers.answer("/billing", 503)  # down for a moment
    receivers.answer("/legacy", 410)  # gone for good
    await tester.run(fan_out, PAID, job_id="F-2")
    crm, billing, legacy = await deliver_all(tester, jobs)

    assert (crm.status, crm.attempts) == (JobStatus.SUCCEEDED, 1)
    assert (billing.status, billing.attempts) == (JobStatus.SUCCEEDED, 2)
    assert billing.retries[0].error_class == "RetryableError"
    assert (legacy.status, legacy.attempts) == (JobStatus.DEAD_LETTERED, 1)
    assert legacy.dead_letter is not None
    assert legacy.dead_letter.reason.value == "fatal_error"
    assert [len(receivers.at(p)) for p in RECEIVERS] == [1, 2, 1]


async def test_a_fan_out_retried_after_a_partial_publish_delivers_once_per_receiver(
    tester: JobTester, jobs: RecordingClient, receivers: Receivers
) -> None:
    jobs.fail_after(1)  # the broker stops answering after the first delivery is out
    fanout = await tester.run(fan_out, PAID, job_id="F-3")
    assert fanout.succeeded
    assert [r.error_class for r in fanout.retries] == ["KafkaTimeoutError"]
    ids = [e.id for e in jobs.sent]
    assert (len(ids), len(set(ids))) == (4, 3)
    assert ids[0] == ids[1]  # the first delivery, published by both attempts

    runs = await deliver_all(tester, jobs)
    assert [len(receivers.at(p)) for p in RECEIVERS] == [1, 1, 1]
    assert runs[1].outcome is not None
    assert runs[1].outcome.reemitted  # the copy did not run: its first outcome is repeated


async def test_an_event_nobody_subscribes_to_is_dead_lettered_at_once(
    tester: JobTester, jobs: RecordingClient
) -> None:
    run = await tester.run(fan_out, Notify(event="order.refunded"))
    assert run.status is JobStatus.DEAD_LETTERED
    assert (run.attempts, run.error_class) == (1, "UnknownEventError")
    assert jobs.sent == []


async def test_a_private_receiver_is_refused_unless_its_host_is_allowed(
    receivers: Receivers,
) -> None:
    async with JobTester(builtin, settings=settings()) as strict:  # no allowed hosts
        run = await strict.run("http.webhook", {"url": receivers.url("/crm"), "body": {}})
    assert run.status is JobStatus.DEAD_LETTERED
    assert "not a public address" in (run.error or "")
    assert receivers.received == []


def test_receivers_are_configured_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_OPENROUTER_API_KEY", "sk-x")
    monkeypatch.setenv("ACME_WEBHOOKS", '{"order.paid": ["https://crm.example.com/hooks"]}')
    acme = AcmeSettings()
    assert {k: [str(u) for u in v] for k, v in acme.webhooks.items()} == {
        "order.paid": ["https://crm.example.com/hooks"]
    }
    assert "sk-x" not in repr(acme)
