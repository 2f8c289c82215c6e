"""Where a job's payload shows up inside other text: whole or in pieces, escaped or URL-encoded.

An error message rarely quotes a payload value whole: it cuts it (``text[:200]``), takes a URL
apart (``url.path``), or escapes it (``repr``, ``json.dumps``, percent-encoding). Replacing
whole values misses all of those, so the unit here is the *window*: every run of
:data:`WINDOW` characters of every payload string. Any text that repeats a piece of a payload
at least that long repeats at least one window, and every window of such a piece is found, so
the whole piece is covered; shorter coincidences (``"user"``, ``"2024"``) are left alone.

Escapes are undone on the text's side, with each decoded character remembering the span of
source characters it came from, so a match in the decoded form covers the escape sequence in
the original: backslash escapes of JSON and Python (``\\n``, ``\\"``, ``\\xe9``, ``\\u00e9``,
``\\U0001f600``, surrogate pairs), percent-encoding (UTF-8 bytes, and ``+`` for space in a
second form), and bytes reprs (``b'\\xc3\\xa9'``), up to three layers deep (a ``repr`` of a
``json.dumps``). On the payload's side each string also counts in its URL-decoded form, for a
payload that was itself percent-encoded and is shown decoded.

No library offers this: scrubbing libraries (Sentry's own, ``scrubadub``) match known key names
or whole values, not arbitrary substrings of values known only at run time.

Cost: up to :data:`EXACT_LIMIT` windows (a payload of about 250,000 characters) every window
is held, in a set of about 100 bytes a window. A larger payload holds every
:data:`SEED_EVERY`-th window with its place, and a match is extended character by character
as far as text and payload agree: a quarter of the memory and time, at the price of a weaker
bound, pieces of ``WINDOW + SEED_EVERY - 1`` (11) characters and more. Built when the first
text is checked, not when the job starts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus

WINDOW = 8
"""The shortest piece of a payload that counts as a fragment of it."""
EXACT_LIMIT = 250_000
"""Windows held exactly (a set, about 100 bytes each); past this, every :data:`SEED_EVERY`-th."""
SEED_EVERY = 4
MAX_LAYERS = 3
"""Layers of escaping undone, e.g. the ``repr`` of a ``json.dumps`` of a URL-encoded value."""

_SIMPLE_ESCAPES = {
    "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "a": "\a", "0": "\0",
    "\\": "\\", '"': '"', "'": "'", "/": "/",
}  # fmt: skip
_HEX = frozenset("0123456789abcdefABCDEF")

# a decoded form: its text, and per character the [start, end) span of the source it came from
Form = tuple[str, list[int], list[int]]


class Fragments:
    """The windows of a set of strings; :meth:`spans` finds them in a text."""

    def __init__(self, strings: Iterable[str]) -> None:
        sources: list[str] = []
        for s in strings:
            if len(s) < WINDOW:
                continue
            sources.append(s)
            if "%" in s or "+" in s:
                sources.extend({unquote(s), unquote_plus(s)} - {s})
        count = sum(len(s) - WINDOW + 1 for s in sources)
        self.empty = count == 0
        self._sources = sources
        self._exact: set[str] | None = None
        self._seeds: dict[str, tuple[int, int]] = {}
        if count <= EXACT_LIMIT:
            self._exact = set()
            for s in sources:
                self._exact.update(_windows(s, 1))
        else:
            for k, s in enumerate(sources):
                at = range(0, len(s) - WINDOW + 1, SEED_EVERY)
                places = zip(itertools.repeat(k, len(at)), at, strict=True)
                self._seeds.update(zip(_windows(s, SEED_EVERY), places, strict=True))

    def spans(self, text: str) -> list[tuple[int, int]]:
        """The ``[start, end)`` runs of ``text`` that are, or decode to, pieces of the strings."""
        if self.empty or len(text) < WINDOW:
            return []
        covered = bytearray(len(text))
        for lo, hi in self._matches(text):
            covered[lo:hi] = b"\x01" * (hi - lo)
        for decoded, starts, ends in _forms(text):
            for lo, hi in self._matches(decoded):
                a, b = starts[lo], ends[hi - 1]
                covered[a:b] = b"\x01" * (b - a)
        return _runs(covered)

    def redact(self, text: str, placeholder: str) -> str:
        spans = self.spans(text)
        if not spans:
            return text
        out, at = [], 0
        for lo, hi in spans:
            out.append(text[at:lo])
            out.append(placeholder)
            at = hi
        out.append(text[at:])
        return "".join(out)

    def _matches(self, text: str) -> list[tuple[int, int]]:
        """Where pieces of the strings are in ``text``, as ``[start, end)`` pairs."""
        found: list[tuple[int, int]] = []
        if self._exact is not None:
            exact = self._exact
            for i, window in enumerate(_windows(text, 1)):
                if window in exact:
                    found.append((i, i + WINDOW))
            return found
        reach = 0  # seeds inside a piece already extended add nothing
        for i, window in enumerate(_windows(text, 1)):
            seed = self._seeds.get(window)
            if seed is None or i + WINDOW <= reach:
                continue
            source = self._sources[seed[0]]
            lo, hi = _extend(text, i, source, seed[1])
            found.append((lo, hi))
            reach = max(reach, hi)
        return found


def _windows(s: str, every: int) -> Iterable[str]:
    """``s``'s windows starting every ``every`` characters; sliced in C, not in a Python loop."""
    at = range(0, len(s) - WINDOW + 1, every)
    return map(s.__getitem__, map(slice, at, range(WINDOW, len(s) + 1, every)))


def _extend(text: str, i: int, source: str, p: int) -> tuple[int, int]:
    """The run around the window matched at ``text[i:]`` and ``source[p:]`` as far as the two
    strings agree on both sides."""
    lo, q = i, p
    while lo > 0 and q > 0 and text[lo - 1] == source[q - 1]:
        lo, q = lo - 1, q - 1
    hi, q = i + WINDOW, p + WINDOW
    while hi < len(text) and q < len(source) and text[hi] == source[q]:
        hi, q = hi + 1, q + 1
    return lo, hi


def _runs(covered: bytearray) -> list[tuple[int, int]]:
    runs, at = [], 0
    for flag, group in itertools.groupby(covered):
        n = sum(1 for _ in group)
        if flag:
            runs.append((at, at + n))
        at += n
    return runs


# -- undoing escapes, keeping where each character came from ------------------------------------


def _forms(text: str) -> list[Form]:
    """The decoded forms of ``text`` worth matching (none when it has nothing to undo)."""
    forms: list[Form] = []
    if "\\" in text or "%" in text:
        form = _identity(text)
        for _ in range(MAX_LAYERS):
            form = _compose(form, _decode(form[0], plus=False, byte_escapes=True))
            forms.append(form)
            if "\\" not in form[0] and "%" not in form[0]:
                break
    if "+" in text:
        forms.append(_decode(text, plus=True, byte_escapes=True))
    if "\\x" in text:  # in a str repr \xe9 is one character, not a byte of UTF-8
        forms.append(_decode(text, plus=False, byte_escapes=False))
    return forms


def _identity(text: str) -> Form:
    return text, list(range(len(text))), list(range(1, len(text) + 1))


def _compose(outer: Form, inner: Form) -> Form:
    """``inner`` decoded from ``outer``'s text: its spans mapped back to ``outer``'s source."""
    _, o_starts, o_ends = outer
    text, starts, ends = inner
    return text, [o_starts[s] for s in starts], [o_ends[e - 1] for e in ends]


def _decode(text: str, *, plus: bool, byte_escapes: bool) -> Form:
    """One layer of backslash and percent escapes undone; ``\\xHH`` and ``%HH`` are bytes of
    UTF-8 (decoded as such where they form valid sequences, else one character each)."""
    chars: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pending: list[tuple[int, int, int]] = []  # undecoded bytes: (value, start, end)

    def char(c: str, start: int, end: int) -> None:
        if pending:
            _flush(pending, chars, starts, ends)
        chars.append(c)
        starts.append(start)
        ends.append(end)

    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            kind = text[i + 1]
            if kind == "x" and _is_hex(text, i + 2, 2):
                value = int(text[i + 2 : i + 4], 16)
                if byte_escapes:
                    pending.append((value, i, i + 4))
                else:
                    char(chr(value), i, i + 4)
                i += 4
            elif kind == "u" and _is_hex(text, i + 2, 4):
                point, length = _unicode_escape(text, i)
                char(chr(point), i, i + length)
                i += length
            elif (
                kind == "U" and _is_hex(text, i + 2, 8) and int(text[i + 2 : i + 10], 16) < 0x110000
            ):
                char(chr(int(text[i + 2 : i + 10], 16)), i, i + 10)
                i += 10
            elif kind in _SIMPLE_ESCAPES:
                char(_SIMPLE_ESCAPES[kind], i, i + 2)
                i += 2
            else:
                char(c, i, i + 1)
                i += 1
        elif c == "%" and _is_hex(text, i + 1, 2):
            pending.append((int(text[i + 1 : i + 3], 16), i, i + 3))
            i += 3
        else:
            char(" " if plus and c == "+" else c, i, i + 1)
            i += 1
    if pending:
        _flush(pending, chars, starts, ends)
    return "".join(chars), starts, ends


def _is_hex(text: str, at: int, length: int) -> bool:
    return at + length <= len(text) and all(c in _HEX for c in text[at : at + length])


def _unicode_escape(text: str, i: int) -> tuple[int, int]:
    """The code point of ``\\uXXXX`` at ``i`` (joining a surrogate pair) and its length."""
    point = int(text[i + 2 : i + 6], 16)
    if 0xD800 <= point < 0xDC00 and text[i + 6 : i + 8] == "\\u" and _is_hex(text, i + 8, 4):
        low = int(text[i + 8 : i + 12], 16)
        if 0xDC00 <= low < 0xE000:
            return 0x10000 + ((point - 0xD800) << 10) + (low - 0xDC00), 12
    return point, 6


def _flush(
    pending: list[tuple[int, int, int]], chars: list[str], starts: list[int], ends: list[int]
) -> None:
    """Escaped bytes into characters: valid UTF-8 sequences as one character each, any other
    byte as the Latin-1 character of its value."""
    j = 0
    while j < len(pending):
        lead = pending[j][0]
        length = _utf8_length(lead)
        seq = bytes(v for v, _, _ in pending[j : j + length])
        try:
            decoded = seq.decode("utf-8") if length > 1 and len(seq) == length else None
        except UnicodeDecodeError:
            decoded = None
        if decoded is None:
            decoded, length = chr(lead), 1
        chars.append(decoded)
        starts.append(pending[j][1])
        ends.append(pending[j + length - 1][2])
        j += length
    pending.clear()


def _utf8_length(lead: int) -> int:
    """Bytes of the UTF-8 sequence a lead byte starts (1 for a byte that starts none)."""
    if 0xC2 <= lead < 0xE0:
        return 2
    if 0xE0 <= lead < 0xF0:
        return 3
    if 0xF0 <= lead < 0xF5:
        return 4
    return 1
