"""When a submitted job may run and until when: ``delay``/``run_at`` and ``ttl``/``expires_at``
as every producer (``JobClient``, ``POST /jobs``, ``jobstream submit``) reads them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

Seconds = float | timedelta

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
MAX_DELAY = timedelta(days=3650)


def parse_duration(text: str) -> timedelta:
    """``90`` (seconds), ``500ms``, ``45s``, ``10m``, ``1h30m``, ``2d``, ``1w``."""
    value = text.strip().lower()
    try:
        return timedelta(seconds=float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
        raise ValueError(f"{text!r} is not a duration (like 90, 45s, 10m, 1h30m, 2d)")
    return timedelta(seconds=sum(float(n) * _UNIT_S[u] for n, u in parts))


def parse_instant(text: str) -> datetime:
    """An ISO-8601 time with its UTC offset (``2027-01-01T03:00:00+01:00``, or ``Z``)."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 time") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset (add +01:00, Z, ...)")
    return when


def _seconds(value: Seconds) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


@dataclass(frozen=True)
class Timing:
    """``not_before``: the job is kept until then; ``expires_at``: not started by then, it is
    never run (it ends ``expired``). A ``ttl`` counts from the submit, as Celery's ``expires``
    does."""

    not_before: datetime | None = None
    expires_at: datetime | None = None

    @classmethod
    def of(
        cls,
        *,
        delay: Seconds | None = None,
        run_at: datetime | None = None,
        ttl: Seconds | None = None,
        expires_at: datetime | None = None,
        now: datetime | None = None,
    ) -> Timing:
        """Raises ``ValueError`` saying what is wrong."""
        now = now or datetime.now(UTC)
        if delay is not None and run_at is not None:
            raise ValueError("give a delay or a run_at time, not both")
        if ttl is not None and expires_at is not None:
            raise ValueError("give a ttl or an expires_at time, not both")
        not_before = None
        if delay is not None:
            seconds = _seconds(delay)
            if not 0 <= seconds <= MAX_DELAY.total_seconds():
                raise ValueError("delay must be between 0 and 10 years")
            not_before = now + timedelta(seconds=seconds) if seconds > 0 else None
        elif run_at is not None:
            if run_at.tzinfo is None:
                raise ValueError("run_at needs its UTC offset")
            if run_at - now > MAX_DELAY:
                raise ValueError("run_at is more than 10 years ahead")
            not_before = run_at.astimezone(UTC) if run_at > now else None
        expires = None
        if ttl is not None:
            seconds = _seconds(ttl)
            if seconds <= 0:
                raise ValueError("ttl must be positive")
            expires = now + timedelta(seconds=seconds)
        elif expires_at is not None:
            if expires_at.tzinfo is None:
                raise ValueError("expires_at needs its UTC offset")
            expires = expires_at.astimezone(UTC)
        if expires is not None and expires <= (not_before or now):
            raise ValueError("the job would expire before it may run")
        return cls(not_before, expires)

    def __bool__(self) -> bool:
        return self.not_before is not None or self.expires_at is not None
