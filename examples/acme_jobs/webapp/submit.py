"""Acme's web application, as far as jobstream goes: it submits jobs with the typed client.

This folder has its own top-level ``models.py`` and ``agents.py``; neither clashes with
jobstream, which installs one name. Kafka's address and the topic prefix are the workers'
``JOBSTREAM_KAFKA_BOOTSTRAP`` and ``JOBSTREAM_TOPIC_PREFIX``::

    python submit.py ticket T-1 "Export fails" "Since Monday the CSV export ..."
    python submit.py paid 42 1999
    python submit.py ticket.summarize '{"ticket_id": "T-2", "subject": "s", "body": "..."}'

It prints the job's id, or the reason the job was refused (exit 2; nothing is published).
"""

from __future__ import annotations

import asyncio
import json
import sys

from acme_jobs.jobs import Notify, Ticket, app, fan_out, summarize_ticket

import agents  # this application's module, not openai-agents
from jobstream import JobClient, Settings, SubmitError
from models import Order


async def submit(client: JobClient, argv: list[str]) -> str:
    match argv:
        case ["ticket", ticket_id, subject, body]:
            ticket = Ticket(ticket_id=ticket_id, subject=subject, body=body)
            job_id = await client.submit(summarize_ticket, ticket)
        case ["paid", order_id, amount_cents]:
            order = Order(id=int(order_id), amount_cents=int(amount_cents))
            data = {"order": order.id, "amount_cents": order.amount_cents}
            paid = Notify(event="order.paid", data=data | {"on_call": agents.ON_CALL[0]})
            job_id = await client.submit(fan_out, paid)
        case [job_type, payload]:  # a name and a JSON payload: checked against the same model
            job_id = await client.submit(job_type, json.loads(payload))
        case _:
            raise SystemExit(__doc__)
    return job_id


async def main(argv: list[str]) -> int:
    settings = Settings()
    if settings.kafka_bootstrap is None:
        print("set JOBSTREAM_KAFKA_BOOTSTRAP", file=sys.stderr)
        return 2
    async with JobClient(
        settings.kafka_bootstrap, topic_prefix=settings.topic_prefix, app=app
    ) as client:
        try:
            job_id = await submit(client, argv)
        except SubmitError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 2
    print(job_id)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
