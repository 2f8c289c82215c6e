"""Which dead letters a DLQ command acts on: time parsing and the filter."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from jobstream.models.deadletter import DeadLetter, DeadLetterReason, unb64
from jobstream.models.errors import JobstreamError


class DlqError(JobstreamError):
    """Raised when the DLQ tool cannot do what was asked; the CLI maps it to an exit code."""


class FilterError(DlqError, ValueError):
    """Raised when a filter value is malformed (exit code 2)."""


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


_RELATIVE = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")


_RELATIVE_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_time(text: str, *, now: datetime) -> datetime:
    """An ISO-8601 time (naive means UTC) or an age before ``now`` like ``2h``, ``1d12h``."""
    t = text.strip().lower()
    if _RELATIVE.fullmatch(t):
        seconds = sum(float(n) * _UNITS[u] for n, u in _RELATIVE_PART.findall(t))
        return now - timedelta(seconds=seconds)
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise FilterError(
            f"{text!r} is neither an ISO-8601 time (2024-05-01T12:00:00Z) "
            "nor a relative age (45s, 30m, 2h, 7d, 1w, 1h30m)"
        ) from None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _split(values: Iterable[str] | None, flag: str) -> frozenset[str]:
    """Repeated flags and comma lists mean the same: ``--type a,b`` is ``--type a --type b``."""
    out: set[str] = set()
    for value in values or ():
        parts = [p.strip() for p in value.split(",")]
        if any(not p for p in parts):
            raise FilterError(f"{flag}: empty value in {value!r}")
        out.update(parts)
    return frozenset(out)


def as_aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def decoded_key(dl: DeadLetter) -> str | None:
    raw = unb64(dl.original_key)
    return None if raw is None else raw.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class DeadLetterFilter:
    """All given criteria must hold; the values within one criterion are alternatives.

    Times compare with ``last_failure_at`` (when the job was dead-lettered): ``since`` is
    inclusive, ``until`` exclusive.
    """

    types: frozenset[str] = frozenset()
    reasons: frozenset[DeadLetterReason] = frozenset()
    error_classes: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    keys: frozenset[str] = frozenset()

    @classmethod
    def parse(
        cls,
        *,
        types: Iterable[str] | None = None,
        reasons: Iterable[str] | None = None,
        error_classes: Iterable[str] | None = None,
        since: str | None = None,
        until: str | None = None,
        keys: Iterable[str] | None = None,
        now: datetime | None = None,
    ) -> DeadLetterFilter:
        now = now or datetime.now(UTC)
        parsed_reasons: set[DeadLetterReason] = set()
        for r in _split(reasons, "--reason"):
            try:
                parsed_reasons.add(DeadLetterReason(r.lower()))
            except ValueError:
                valid = ", ".join(x.value for x in DeadLetterReason)
                raise FilterError(f"--reason: unknown reason {r!r} (one of: {valid})") from None
        lo = parse_time(since, now=now) if since is not None else None
        hi = parse_time(until, now=now) if until is not None else None
        if lo is not None and hi is not None and lo >= hi:
            raise FilterError(
                f"--since ({lo.isoformat()}) must be before --until ({hi.isoformat()})"
            )
        return cls(
            types=_split(types, "--type"),
            reasons=frozenset(parsed_reasons),
            error_classes=_split(error_classes, "--error-class"),
            since=lo,
            until=hi,
            keys=_split(keys, "--key"),
        )

    def matches(self, dl: DeadLetter) -> bool:
        if self.types and dl.job_type not in self.types:
            return False
        if self.reasons and dl.reason not in self.reasons:
            return False
        # an error class matches by its full dotted name or by its bare class name
        if self.error_classes and not (
            dl.error_class in self.error_classes
            or dl.error_class.rsplit(".", 1)[-1] in self.error_classes
        ):
            return False
        at = as_aware(dl.last_failure_at)
        if self.since is not None and at < self.since:
            return False
        if self.until is not None and at >= self.until:
            return False
        return not self.keys or bool({dl.id, dl.job_id, decoded_key(dl)} & self.keys)
