"""Every topic name comes from here, derived from one prefix, and so do the topics' configs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobstream.streams.settings import Settings

# Room for a record's key, headers and batch framing on top of its value.
RECORD_OVERHEAD_BYTES = 64 * 1024


def tier_label(seconds: float) -> str:
    """10 -> '10s', 60 -> '1m', 600 -> '10m', 3600 -> '1h'; fractions stay in ms."""
    if seconds < 1 or seconds != int(seconds):
        return f"{round(seconds * 1000)}ms"
    s = int(seconds)
    for unit, size in (("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


@dataclass(frozen=True)
class RetryTier:
    index: int
    delay_s: float
    topic: str

    @property
    def label(self) -> str:
        """The tier's name in topics, agent names and metric labels: ``10s``, ``1m``, ..."""
        return tier_label(self.delay_s)


@dataclass(frozen=True)
class TopicNames:
    prefix: str
    main: str
    outcomes: str
    dlq: str
    tiers: tuple[RetryTier, ...]

    def tier_for_attempt(self, failed_attempt: int) -> RetryTier:
        """The tier a job goes to after its ``failed_attempt``-th failure; the last one repeats."""
        return self.tiers[min(failed_attempt, len(self.tiers)) - 1]

    def all(self) -> list[str]:
        return [self.main, self.outcomes, self.dlq, *(t.topic for t in self.tiers)]


def topic_names(prefix: str, tiers_s: tuple[float, ...] = (10.0, 60.0, 600.0)) -> TopicNames:
    return TopicNames(
        prefix=prefix,
        main=prefix,
        outcomes=f"{prefix}.outcomes",
        dlq=f"{prefix}.dlq",
        tiers=tuple(
            RetryTier(index=i, delay_s=d, topic=f"{prefix}.retry.{tier_label(d)}")
            for i, d in enumerate(tiers_s)
        ),
    )


def topic_configs(settings: Settings, names: TopicNames) -> dict[str, dict[str, str]]:
    """The configs jobstream sets on each of its topics (as the broker spells them).

    ``max.message.bytes`` follows ``max_event_bytes``: an event the worker accepts must also be
    accepted as a retry or re-emitted event; a dead letter may carry the whole original
    base64-encoded (4/3 of its size), so the DLQ gets room for that. Without explicit values the
    broker's defaults apply (7 days, about 1 MB), and dead letters would vanish while their rows
    still point at them.
    """
    event_limit = settings.max_event_bytes + RECORD_OVERHEAD_BYTES
    letter_limit = math.ceil(settings.max_event_bytes * 4 / 3) + RECORD_OVERHEAD_BYTES

    def config(retention_ms: int, max_bytes: int) -> dict[str, str]:
        return {
            "cleanup.policy": "delete",
            "retention.ms": str(retention_ms),
            "max.message.bytes": str(max_bytes),
        }

    configs = {
        names.main: config(settings.main_retention_ms, event_limit),
        names.outcomes: config(settings.outcome_retention_ms, event_limit),
        names.dlq: config(settings.dlq_retention_ms, letter_limit),
    }
    for tier in names.tiers:
        configs[tier.topic] = config(settings.retry_retention_ms, event_limit)
    return configs
