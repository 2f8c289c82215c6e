"""Acme's job types; a worker runs them with ``jobstream worker --app acme_jobs.jobs:app``.

- ``ticket.summarize``: a support ticket summarized by an LLM through OpenRouter, under the
  account's rate limit (requests and tokens a minute, shared by every replica).
- ``event.fanout``: one business event (``order.paid``) delivered to every receiver subscribed
  to it, as one ``http.webhook`` job per receiver: jobstream's built-in type, which refuses
  private addresses and retries each receiver on its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
from pydantic import BaseModel, Field, JsonValue

from acme_jobs.config import AcmeSettings
from acme_jobs.llm import OpenRouter
from jobstream import (
    ConfigurationError,
    JobApp,
    JobClient,
    JobContext,
    Settings,
    builtin,
)
from jobstream.streams.kafka.security import client_options


@dataclass(frozen=True)
class Resources:
    """What the lifespan creates once per replica; handlers find it in ``ctx.resources``."""

    llm: OpenRouter
    model: str
    jobs: JobClient
    """Publishes the fan-out's deliveries."""
    webhooks: Mapping[str, list[str]]
    """Event name -> receiver URLs."""


app: JobApp[Resources] = JobApp("acme", include=[builtin])
# The OpenRouter account's budget, for every replica together. The built-in llm.chat uses the
# same key, so both draw on it; this declaration replaces the built-in one (50/s).
app.rate_limit("openrouter", rate=20, per=1.0, tokens_per_minute=200_000)


@app.lifespan  # once per replica, before the first job; closed after the drain
async def resources(settings: Settings) -> AsyncIterator[Resources]:
    acme = AcmeSettings()  # from the ACME_* variables, once per replica
    if settings.kafka_bootstrap is None:
        raise ConfigurationError("JOBSTREAM_KAFKA_BOOTSTRAP is not set")
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        JobClient(
            settings.kafka_bootstrap,
            topic_prefix=settings.topic_prefix,
            app=app,
            max_event_bytes=settings.max_event_bytes,
            options=client_options(settings),
        ) as jobs,
    ):
        yield Resources(
            llm=OpenRouter(
                http,
                str(acme.openrouter_url),
                acme.openrouter_api_key,
                timeout_s=acme.llm_timeout_s,
            ),
            model=acme.summary_model,
            jobs=jobs,
            webhooks={event: [str(u) for u in urls] for event, urls in acme.webhooks.items()},
        )


# -- ticket.summarize -----------------------------------------------------------------------------

SYSTEM_PROMPT = (
    "Summarize the support ticket for the engineer on call: what is broken, for whom, since"
    " when, and what the customer already tried. Plain sentences, no greeting."
)


class Ticket(BaseModel):
    ticket_id: str = Field(min_length=1, max_length=64)
    subject: str = Field(max_length=300)
    body: str = Field(min_length=1, max_length=20_000)
    """About 5k tokens at most: far below the model's context and the minute's budget."""
    max_tokens: int = Field(default=200, ge=16, le=1_000)
    """The summary's token limit; ``truncated`` says when the model reached it."""


class Summary(BaseModel):
    ticket_id: str
    summary: str
    model: str
    tokens: int
    truncated: bool


@app.job(
    "ticket.summarize",
    timeout_s=60,
    max_attempts=4,
    rate_limit="openrouter",
    retry_on=(aiohttp.ClientError, TimeoutError),  # a dropped connection, a slow answer
    retry_unexpected=False,  # a bug, or an answer we cannot read, will not pass by itself
)
async def summarize_ticket(ticket: Ticket, ctx: JobContext[Resources]) -> Summary:
    res = ctx.resources
    prompt = f"Ticket {ticket.ticket_id}: {ticket.subject}\n\n{ticket.body}"
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    answer = await res.llm.complete(res.model, messages, max_tokens=ticket.max_tokens)
    ctx.usage["tokens"] = answer.usage.total_tokens  # charged to the minute's token budget
    return Summary(
        ticket_id=ticket.ticket_id,
        summary=answer.text,
        model=answer.model,
        tokens=answer.usage.total_tokens,
        truncated=answer.truncated,
    )


# -- event.fanout ---------------------------------------------------------------------------------


class Notify(BaseModel):
    event: str = Field(pattern=r"^[a-z_]+(\.[a-z_]+)+$", max_length=100)
    data: dict[str, JsonValue] = Field(default_factory=dict)


class FannedOut(BaseModel):
    deliveries: list[str]
    """The ids of the ``http.webhook`` jobs, one per receiver."""


class UnknownEventError(LookupError):
    """Raised when no receiver subscribes to the event: a producer's typo or a missing
    ``ACME_WEBHOOKS`` entry, which no retry fixes."""


def delivery_id(fanout_id: str, url: str) -> str:
    """The same on every attempt of one fan-out: a retry after a partial publish sends the same
    jobs again, and jobstream runs each job id at most once."""
    return hashlib.sha256(f"{fanout_id}\n{url}".encode()).hexdigest()[:32]


@app.job(
    "event.fanout",
    timeout_s=30,
    max_attempts=5,
    fatal=(UnknownEventError,),  # other errors (Kafka trouble while publishing) are retried
)
async def fan_out(event: Notify, ctx: JobContext[Resources]) -> FannedOut:
    receivers = ctx.resources.webhooks.get(event.event)
    if not receivers:
        raise UnknownEventError(f"no receiver subscribes to {event.event!r}")
    body = {"event": event.event, "id": ctx.job_id, "data": event.data}
    deliveries = [
        ctx.resources.jobs.build(
            "http.webhook",
            {"url": url, "body": body, "headers": {"X-Acme-Event": event.event}},
            job_id=delivery_id(ctx.job_id, url),
            metadata={"fanout": ctx.job_id},
        )
        for url in receivers
    ]
    return FannedOut(deliveries=await ctx.resources.jobs.submit_many(deliveries))
