"""Kafka administration: create the topics jobstream needs, with their configs, and leave existing
ones alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    TopicAlreadyExistsError,
    for_code,
)

from jobstream.streams.polling import wait_until


async def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    partitions: int,
    replication_factor: int = 1,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    options: Mapping[str, Any] | None = None,
) -> None:
    """Create the topics that do not exist yet; safe to call from every replica.

    ``configs`` (per topic name, e.g. from ``topics.topic_configs``) apply only to topics created
    here: an existing topic is never altered behind the operator's back, ``jobstream doctor``
    reports its drift instead. ``options`` are extra aiokafka client arguments (TLS, SASL).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(options or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if not missing:
            return
        new = [
            NewTopic(
                n,
                partitions,
                replication_factor,
                topic_configs=dict((configs or {}).get(n, {})),
            )
            for n in missing
        ]
        response = await admin.create_topics(new)
        for topic, code, *message in response.topic_errors:
            # another replica may have won the race; anything else (a config the broker
            # refuses, a replication factor above the broker count) must not pass silently
            if code and code != TopicAlreadyExistsError.errno:
                detail = message[0] if message and message[0] else ""
                raise for_code(code)(f"creating topic {topic}: {detail}")

        # wait until the metadata shows them, so a consumer subscribing next sees partitions
        # (a broker slower than that still creates them: the consumer then waits for them)
        async def shown() -> bool:
            return set(missing) <= set(await admin.list_topics())

        with contextlib.suppress(TimeoutError):
            await wait_until(shown, within_s=10, interval_s=0.1, what="the new topics")
    finally:
        await admin.close()
