"""``ticket.summarize`` through jobstream's pipeline in memory, against a fake OpenRouter."""

from __future__ import annotations

import pytest
from acme_jobs.jobs import Ticket, app, summarize_ticket
from upstreams import DROP, FakeOpenRouter
from worker import settings

from jobstream import JobStatus, SubmitError
from jobstream.testing import JobTester

BODY = "Since this morning the export button returns error 500 for every user of the EU tenant"


async def test_a_ticket_is_summarized_and_its_tokens_are_charged_to_the_account(
    tester: JobTester, openrouter: FakeOpenRouter
) -> None:
    run = await tester.run(summarize_ticket, Ticket(ticket_id="T-1", subject="Export", body=BODY))

    assert run.succeeded, run.error
    prompt_words = len(f"Ticket T-1: Export {BODY}".split())
    assert run.result == {
        "ticket_id": "T-1",
        "summary": f"Ticket T-1: Export {BODY}",  # the fake answers with the prompt's words
        "model": "acme/summarizer",
        "tokens": 2 * prompt_words,
        "truncated": False,
    }
    [request] = openrouter.requests
    assert request.authorization == "Bearer sk-test"
    assert (request.body["model"], request.body["max_tokens"]) == ("acme/summarizer", 200)
    assert tester.limiter.acquired == ["openrouter"]
    assert tester.limiter.charged == [("openrouter", 2 * prompt_words)]


async def test_a_summary_cut_at_its_token_limit_says_so(tester: JobTester) -> None:
    ticket = Ticket(ticket_id="T-2", subject="Export", body=BODY * 3, max_tokens=16)
    run = await tester.run(summarize_ticket, ticket)
    assert run.succeeded
    assert run.result["truncated"] is True
    assert len(run.result["summary"].split()) == 16


async def test_a_429_pauses_the_account_for_every_replica_then_the_job_is_retried(
    tester: JobTester, openrouter: FakeOpenRouter
) -> None:
    openrouter.fail(429, retry_after=7)
    run = await tester.run(summarize_ticket, Ticket(ticket_id="T-3", subject="s", body=BODY))
    assert run.succeeded
    assert [r.error_class for r in run.retries] == ["RateLimitedError"]
    assert tester.limiter.paused == [("openrouter", 7.0)]
    assert run.attempts == len(openrouter.requests) == 2


async def test_server_errors_and_dropped_connections_are_retried_up_to_four_attempts(
    tester: JobTester, openrouter: FakeOpenRouter
) -> None:
    openrouter.fail(503, DROP, 502)
    recovered = await tester.run(summarize_ticket, Ticket(ticket_id="T-4", subject="s", body=BODY))
    assert recovered.succeeded
    assert [r.error_class for r in recovered.retries] == [
        "RetryableError",
        "ServerDisconnectedError",  # an aiohttp.ClientError: retry_on
        "RetryableError",
    ]
    assert recovered.waited_s > 60  # 10 s, 1 min, 10 min tiers, in virtual time

    openrouter.fail(500, 500, 500, 500)
    exhausted = await tester.run(summarize_ticket, Ticket(ticket_id="T-5", subject="s", body=BODY))
    assert exhausted.status is JobStatus.DEAD_LETTERED
    assert exhausted.attempts == 4
    assert exhausted.dead_letter is not None
    assert exhausted.dead_letter.reason.value == "exhausted"


@pytest.mark.parametrize("status", [400, 401, 402])
async def test_a_request_openrouter_refuses_is_dead_lettered_at_once(
    tester: JobTester, openrouter: FakeOpenRouter, status: int
) -> None:
    openrouter.fail(status)
    run = await tester.run(summarize_ticket, Ticket(ticket_id="T-6", subject="s", body=BODY))
    assert run.status is JobStatus.DEAD_LETTERED
    assert (run.attempts, run.retries, len(openrouter.requests)) == (1, [], 1)
    assert run.dead_letter is not None
    assert run.dead_letter.reason.value == "fatal_error"
    assert run.dead_letter.error_class == "UpstreamRejectedError"
    assert tester.limiter.charged == []  # no answer, no tokens


async def test_an_answer_it_cannot_read_is_dead_lettered_rather_than_retried(
    tester: JobTester, openrouter: FakeOpenRouter
) -> None:
    openrouter.answer_with({"id": "gen-1", "object": "chat.completion"})  # no model, no choices
    run = await tester.run(summarize_ticket, Ticket(ticket_id="T-7", subject="s", body=BODY))
    assert run.status is JobStatus.DEAD_LETTERED
    assert (run.attempts, run.error_class) == (1, "ValidationError")  # retry_unexpected=False


async def test_an_invalid_ticket_is_refused_before_anything_is_sent(
    tester: JobTester, openrouter: FakeOpenRouter
) -> None:
    with pytest.raises(SubmitError, match="body"):
        await tester.run(summarize_ticket, {"ticket_id": "T-8", "subject": "s", "body": ""})
    with pytest.raises(SubmitError, match="max_tokens"):
        await tester.run(
            summarize_ticket, {"ticket_id": "T-8", "subject": "s", "body": "b", "max_tokens": 5000}
        )
    assert openrouter.requests == []


def test_the_account_limit_in_code_replaces_the_built_in_one() -> None:
    registry = app.registry(settings())
    limit = registry.rate_limits["openrouter"]
    assert (limit.rate, limit.tokens_per_minute) == (20, 200_000)
    keys = {t.name: t.rate_limit_key for t in registry}
    assert (keys["ticket.summarize"], keys["llm.chat"]) == ("openrouter", "openrouter")
