"""The fragment finder alone: pieces of a payload string found however they were cut or escaped.

The oracle is independent of the finder's decoder: a leak is a window of the payload string
found in the output, as it is, after ``unquote``/``unquote_plus``, or after Python's own
``unicode_escape`` decoding; or a window's own JSON, ``repr`` or percent-encoded spelling.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from yarl import URL

from jobstream.streams import fragments
from jobstream.streams.fragments import WINDOW, Fragments

PLACEHOLDER = "[payload]"


def windows(s: str) -> set[str]:
    return {s[i : i + WINDOW] for i in range(len(s) - WINDOW + 1)}


def unescaped(text: str) -> str:
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        return text


def spellings(w: str) -> set[str]:
    return {
        w,
        json.dumps(w)[1:-1],
        json.dumps(w, ensure_ascii=False)[1:-1],
        repr(w)[1:-1],
        ascii(w)[1:-1],
        quote(w, safe=""),
        quote(w),
        quote_plus(w),
    }


def leaks(secret: str, output: str) -> list[str]:
    views = {output, unquote(output), unquote_plus(output), unescaped(output)}
    found = [w for w in windows(secret) if any(w in v for v in views)]
    found += [s for w in windows(secret) for s in spellings(w) if s in output]
    return found


def py_bytes(s: str) -> str:
    return repr(s.encode("utf-8"))


TRANSFORMS: list[Callable[[str], str]] = [
    lambda s: s,
    lambda s: s[: len(s) // 2],
    lambda s: s[len(s) // 3 :],
    lambda s: " ".join(s.split())[:200],
    lambda s: json.dumps(s),
    lambda s: json.dumps(s, ensure_ascii=False),
    repr,
    ascii,
    py_bytes,
    lambda s: py_bytes(s)[: len(s) // 2 + 3],
    lambda s: quote(s, safe=""),
    quote,
    quote_plus,
    lambda s: repr(json.dumps(s[2:])),
    lambda s: json.dumps(repr(s)),
    lambda s: quote(json.dumps(s)),
    lambda s: json.dumps({"note": s, "n": 1}),
    lambda s: str(URL.build(scheme="http", host="h.example", path="/" + s)),
    lambda s: URL.build(scheme="http", host="h.example", query={"q": s}).raw_query_string,
    lambda s: str(URL.build(scheme="http", host="h.example", user=s, password=s)),
]

# every window of a generated secret holds a character no ordinary text around it holds, so a
# window found in the output can only have come from the secret
RARE = "ʘꙬ〄☃"
secrets = st.lists(
    st.tuples(
        st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=6),
        st.sampled_from(RARE),
    ),
    min_size=2,
    max_size=30,
).map(lambda parts: "".join(a + b for a, b in parts))


@settings(max_examples=400, deadline=None)
@given(
    secret=secrets,
    transform=st.sampled_from(TRANSFORMS),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
)
@example(secret='a"b\\c\nd' + "ʘ" * 8 + "é😀%+ ", transform=repr, before="", after="")
def test_no_window_of_a_secret_survives_any_cut_or_escape(
    secret: str, transform: Callable[[str], str], before: str, after: str
) -> None:
    text = f"{before}{transform(secret)}{after}"
    out = Fragments([secret]).redact(text, PLACEHOLDER)
    assert leaks(secret, out) == [], (text, out)


@pytest.mark.parametrize(
    "text",
    [
        "connection refused (127.0.0.1:5432) after 3 attempts",
        "webhook '127.0.0.1:8080' answered 400 (application/json, 12 bytes, sha256:0123456789ab)",
        'Traceback (most recent call last):\n  File "x.py", line 3, in <module>',
    ],
)
def test_text_without_the_payload_is_left_alone(text: str) -> None:
    assert Fragments(["Marker-ʘ-0001-abcdefgh", "other-ʘ-payload"]).redact(text, "[p]") == text


def test_short_coincidences_are_not_fragments() -> None:
    assert Fragments(["user-2024-ʘ"]).redact("user 2024 took 2024ms", "[p]") == (
        "user 2024 took 2024ms"
    )


def test_a_payload_string_that_was_url_encoded_is_found_decoded_too() -> None:
    f = Fragments(["http://h.example/p%20ath%2Fsecret-segment"])
    assert "secret-seg" not in f.redact("GET /p ath/secret-segment failed", "[p]")


def test_a_large_payload_is_held_by_seeds_and_pieces_of_11_are_still_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyzʘ0123456789 "
    big = "".join(rng.choice(alphabet) for _ in range(50_000))
    monkeypatch.setattr(fragments, "EXACT_LIMIT", 1_000)
    f = Fragments([big])
    assert f._exact is None
    assert len(f._seeds) <= len(big) // fragments.SEED_EVERY + 1
    for _ in range(200):
        start = rng.randrange(0, len(big) - 100)
        piece = big[start : start + rng.randrange(WINDOW + fragments.SEED_EVERY - 1, 100)]
        out = f.redact(f"error: {json.dumps(piece)} at x", PLACEHOLDER)
        assert leaks(piece, out) == [], (piece, out)
    unrelated = "connection refused (127.0.0.1:5432) after 3 attempts; retrying in 10 s"
    assert f.redact(unrelated, PLACEHOLDER) == unrelated
