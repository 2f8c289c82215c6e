"""The leak oracle of the scrubbing tests: is a piece of a payload string in what left?

Independent of the scrubber's own decoder: a leak is a window (8 characters) of a secret found
in an output string as it is, after ``unquote``/``unquote_plus``, after Python's
``unicode_escape`` decoding, or as the window's own JSON, ``repr`` or percent-encoded spelling.
Only windows holding one of :data:`RARE` count: the generated secrets put one in every window,
so a window found in the output cannot be a coincidence with text of the event or log.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from hypothesis import strategies as st

WINDOW = 8
RARE = "ʘꙬ〄☃"
"""Characters no event, envelope or log line holds unless a payload put them there."""

secret_text = st.lists(
    st.tuples(
        st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=6),
        st.sampled_from(RARE),
    ),
    min_size=2,
    max_size=24,
).map(lambda parts: "".join(a + b for a, b in parts))
"""Any text (no NUL or lone surrogate: a producer refuses those), a rare character at least
every 7 characters."""


def windows(s: str) -> set[str]:
    return {
        s[i : i + WINDOW]
        for i in range(len(s) - WINDOW + 1)
        if any(c in RARE for c in s[i : i + WINDOW])
    }


def _unescaped(text: str) -> str:
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        return text


def _spellings(w: str) -> set[str]:
    return {
        json.dumps(w)[1:-1],
        json.dumps(w, ensure_ascii=False)[1:-1],
        repr(w)[1:-1],
        ascii(w)[1:-1],
        quote(w, safe=""),
        quote(w),
        quote_plus(w),
    }


def leaks(secrets: Iterable[str], outputs: Iterable[str]) -> list[tuple[str, str]]:
    """(window, output) for every window of a secret found in an output."""
    wins = {w for s in secrets for w in windows(s)}
    spelled = {sp: w for w in wins for sp in _spellings(w)}
    found = []
    for out in outputs:
        if not any(c in out for c in RARE) and "%" not in out and "\\" not in out:
            continue  # nothing of a secret can be in it, in any spelling
        views = {out, unquote(out), unquote_plus(out), _unescaped(out)}
        found += [(w, out) for w in wins if any(w in v for v in views)]
        found += [(w, out) for sp, w in spelled.items() if sp in out]
    return found


def strings_of(doc: Any) -> Iterator[str]:
    """Every string of a JSON document, keys included."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
