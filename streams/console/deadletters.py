"""Dead letters for the console: the CLI's filters and stats, and what each role may see.

The letters themselves come from :mod:`jobstream.streams.console.dlq_tail`; replay goes through
:func:`jobstream.streams.dlq.replay.replay_matching`, the function ``jobstream dlq replay`` runs.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from jobstream.models.deadletter import DeadLetter, unb64
from jobstream.streams.dlq.filters import DeadLetterFilter, FilterError, decoded_key
from jobstream.streams.dlq.replay import Action, PlanItem, decode_event

FILTER_FIELDS = ("type", "reason", "error_class", "since", "until", "key")


def parse_filter(query: Mapping[str, str]) -> DeadLetterFilter:
    """The CLI's filters from query parameters (or a JSON body): same names, same syntax."""

    def many(name: str) -> list[str] | None:
        value = query.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise FilterError(f"{name} must be a string (a comma list for several values)")
        return [value]

    def one(name: str) -> str | None:
        value = query.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise FilterError(f"{name} must be a string")
        return value

    return DeadLetterFilter.parse(
        types=many("type"),
        reasons=many("reason"),
        error_classes=many("error_class"),
        since=one("since"),
        until=one("until"),
        keys=many("key"),
    )


def stats(matched: Sequence[DeadLetter]) -> dict[str, Any]:
    """The CLI's ``dlq stats`` groups, plus one count per criterion for the filter menus."""
    groups = Counter((d.reason.value, d.job_type or "-", d.error_class) for d in matched)
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "matched": len(matched),
        "groups": [
            {"reason": r, "type": t, "error_class": e, "count": n} for (r, t, e), n in ordered
        ],
        "by_reason": dict(Counter(d.reason.value for d in matched).most_common()),
        "by_type": dict(Counter(d.job_type or "-" for d in matched).most_common()),
        "by_error_class": dict(Counter(d.error_class for d in matched).most_common()),
    }


def summary(dl: DeadLetter, replays: int = 0) -> dict[str, Any]:
    """A list row: no payload, no headers, for every role."""
    return {
        "id": dl.id,
        "job_id": dl.job_id,
        "type": dl.job_type,
        "reason": dl.reason.value,
        "error_class": dl.error_class,
        "error_message": dl.error_message,
        "attempt": dl.attempt,
        "first_failure_at": dl.first_failure_at.isoformat(),
        "last_failure_at": dl.last_failure_at.isoformat(),
        "replays": replays,
    }


def detail(dl: DeadLetter, *, show_payload: bool) -> dict[str, Any]:
    """Everything about one dead letter; the original payload and headers only if allowed.

    Headers are treated like the payload: producers put credentials and user data in them.
    """
    doc = summary(dl)
    doc.update(
        traceback=dl.traceback,
        history=[h.model_dump(mode="json") for h in dl.history],
        source=f"{dl.source_topic} partition {dl.source_partition} offset {dl.source_offset}",
        original_key=decoded_key(dl),
        payload_shown=show_payload,
    )
    raw = dl.original_bytes()
    event = decode_event(dl)
    size = len(raw) if raw is not None else 0
    if event is not None:
        ev = event.model_dump(mode="json")
        if not show_payload:
            body = json.dumps(ev["payload"]).encode()
            ev["payload"] = f"(hidden: {len(body)} bytes; set JOBSTREAM_CONSOLE_SHOW_PAYLOADS)"
            ev["metadata"] = "(hidden)" if ev.get("metadata") else {}
        doc["original_event"] = ev
        doc["original_value"] = None
    else:
        doc["original_event"] = None
        if show_payload:
            text = _text(raw)
            doc["original_value"] = text
        else:
            doc["original_value"] = f"(hidden: {size} bytes, not a JobEvent)"
    doc["original_size"] = size
    if show_payload:
        doc["original_headers"] = [[n, _text(unb64(v))] for n, v in dl.original_headers]
    else:
        doc["original_headers"] = [[n, "(hidden)"] for n, _ in dl.original_headers]
    return doc


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "(base64) " + base64.b64encode(raw).decode()


def history_of(dl: DeadLetter) -> list[dict[str, Any]]:
    return [h.model_dump(mode="json") for h in dl.history]


def plan_json(items: Sequence[PlanItem]) -> dict[str, Any]:
    tally = Counter(i.action for i in items)
    return {
        "would_replay": tally[Action.REPLAY],
        "skipped_already_replayed": tally[Action.SKIP_REPLAYED],
        "skipped_invalid": tally[Action.SKIP_INVALID],
        "skipped_cancelled": tally[Action.SKIP_CANCELLED],
        "items": [
            {
                "action": i.action.value,
                "id": i.dead_letter.id,
                "job_id": i.dead_letter.job_id,
                "type": i.dead_letter.job_type,
            }
            for i in items
        ],
    }
