"""Query parameters and request bodies into typed values; anything wrong is a 400 that says why.

Every value that reaches PostgreSQL is checked here first, so no input can make a query fail:
text with U+0000 or a lone surrogate (neither fits in ``text``), times past what a UTC
``timestamptz`` or Python's ``datetime`` can hold (``0001-01-01T00:00:00+14:00`` is year 0 in
UTC; ``99999999999d`` is no ``timedelta``). A failing query is then a database that is down
(503), never a request that was wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from jobstream.agents.decode import unstorable_char
from jobstream.streams.console.queries import MAX_PAGE, CursorError, JobFilter, decode_cursor
from jobstream.streams.console.rollup import WINDOWS
from jobstream.streams.dlq.filters import FilterError, parse_time

MAX_ID_LENGTH = 200  # JobEvent.id's own limit


class BadInput(ValueError):
    """Raised when a request's parameters or body are malformed; answered with 400."""


def text(name: str, value: str) -> str:
    """``value`` if PostgreSQL's ``text`` can hold it."""
    why = unstorable_char(value)
    if why is not None:
        raise BadInput(f"{name} {why}")
    return value


def job_id(value: str) -> str:
    value = value.strip()
    if not value:
        raise BadInput("job id is empty")
    if len(value) > MAX_ID_LENGTH:
        raise BadInput(f"job id is longer than {MAX_ID_LENGTH} characters")
    return text("job id", value)


def time_bound(name: str, value: str, now: datetime) -> datetime:
    """An ISO-8601 time or an age (``2h``, ``1d12h``), in UTC, or a 400 that says why."""
    try:
        when = parse_time(value, now=now).astimezone(UTC)
    except FilterError as exc:
        raise BadInput(f"{name}: {exc}") from None
    except (OverflowError, ValueError):
        raise BadInput(
            f"{name}: {value[:40]!r} is outside the times this console can show"
        ) from None
    return when


def limit(query: Mapping[str, str], *, default: int = 50, maximum: int = MAX_PAGE) -> int:
    raw = query.get("limit", "")
    if raw == "":
        return default
    try:
        n = int(raw)
    except ValueError:
        raise BadInput(f"limit must be an integer from 1 to {maximum}, not {raw!r}") from None
    if not 1 <= n <= maximum:
        raise BadInput(f"limit must be from 1 to {maximum}, not {n}")
    return n


def window(query: Mapping[str, str]) -> str:
    w = query.get("window", "1h") or "1h"
    if w not in WINDOWS:
        raise BadInput(f"window must be one of {', '.join(WINDOWS)}, not {w!r}")
    return w


def job_filter(query: Mapping[str, str], statuses: tuple[str, ...]) -> JobFilter:
    status = query.get("status") or None
    if status is not None and status not in statuses:
        raise BadInput(f"status must be one of {', '.join(statuses)}, not {status!r}")
    values: dict[str, str | None] = {}
    for name in ("type", "worker"):
        v = (query.get(name) or "").strip() or None
        if v is not None and len(v) > MAX_ID_LENGTH:
            raise BadInput(f"{name} is longer than {MAX_ID_LENGTH} characters")
        values[name] = text(name, v) if v is not None else None
    since, until = times(query)
    if since is not None and until is not None and since >= until:
        raise BadInput("since must be before until")
    return JobFilter(
        status=status, type=values["type"], worker=values["worker"], since=since, until=until
    )


def cancel_filter(query: Mapping[str, str]) -> bool:
    """``cancel=requested``: only the jobs someone asked to cancel."""
    value = query.get("cancel") or ""
    if value not in ("", "requested"):
        raise BadInput(f"cancel must be requested (or absent), not {value[:40]!r}")
    return value == "requested"


def times(query: Mapping[str, object]) -> tuple[datetime | None, datetime | None]:
    """``since`` and ``until`` of a query or body, checked (``None`` where absent)."""
    now = datetime.now(UTC)
    bounds: list[datetime | None] = []
    for name in ("since", "until"):
        value = query.get(name)
        if value is None or value == "":
            bounds.append(None)
        elif not isinstance(value, str):
            raise BadInput(f"{name} must be a string")
        else:
            bounds.append(time_bound(name, value, now))
    return bounds[0], bounds[1]


def cursor(query: Mapping[str, str]) -> tuple[datetime, str] | None:
    raw = query.get("after") or None
    if raw is None:
        return None
    try:
        when, last_id = decode_cursor(raw)
        when = when.astimezone(UTC)
    except CursorError as exc:
        raise BadInput(f"after: {exc}") from None
    except (OverflowError, ValueError):
        raise BadInput("after: cursor is not one this console made") from None
    return when, text("after", last_id)


def all_prefixes(query: Mapping[str, str]) -> bool:
    """``scope=all`` asks for every job in the database; by default the console leaves out the
    jobs of other topic prefixes (:func:`~jobstream.streams.console.queries.source_topic_sql`)."""
    scope = query.get("scope") or "prefix"
    if scope not in ("prefix", "all"):
        raise BadInput(f"scope must be prefix or all, not {scope[:40]!r}")
    return scope == "all"


class ReplayRequest(BaseModel):
    """The body of ``POST /api/replay``: which dead letters, and how.

    ``expect`` is the confirmation: the number of dead letters the operator saw in the
    preview. A real replay whose fresh plan would republish a different number is refused,
    so what is published is what was confirmed.
    """

    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = Field(default=None, max_length=10_000)

    @field_validator("since", "until")
    @classmethod
    def _a_time(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v:
            time_bound(info.field_name or "time", v, datetime.now(UTC))
        return v

    type: str | None = None
    reason: str | None = None
    error_class: str | None = None
    since: str | None = None
    until: str | None = None
    key: str | None = None
    dry_run: bool = True
    reset_attempts: bool = False
    force: bool = False
    include_cancelled: bool = False
    limit: int | None = Field(default=None, ge=1)
    rate: float | None = Field(default=None, gt=0)
    expect: int | None = Field(default=None, ge=0)

    def filters(self) -> dict[str, str]:
        fields = ("type", "reason", "error_class", "since", "until", "key")
        return {f: v for f in fields if (v := getattr(self, f))}


def replay_request(body: object) -> ReplayRequest:
    if not isinstance(body, dict):
        raise BadInput("the body must be a JSON object")
    try:
        req = ReplayRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "body"
        raise BadInput(f"{where}: {err['msg']}") from None
    if not req.dry_run and req.expect is None:
        raise BadInput("expect is required for a replay: the would_replay count of its preview")
    if req.ids is not None and not req.ids:
        raise BadInput("ids is empty: leave it out to use the filters alone")
    return req
