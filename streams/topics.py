"""Every topic name comes from here, derived from one prefix."""

from __future__ import annotations

from dataclasses import dataclass


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
