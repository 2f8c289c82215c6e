"""One decode rule: a producer refuses exactly the jobs a worker would dead-letter as
undecodable, because both run :func:`jobstream.agents.decode.decode_event`.

Property: for any payload (NUL and lone surrogates in keys and values, nesting around the
limit, numbers past a double), ``JobClient.build`` raises ``SubmitError`` exactly when the
worker's decode of the same event, published by a client that checks nothing, raises
``InvalidJobError``; and ``jobstream submit`` exits 2 on the same payloads without publishing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from jobstream import JobClient, SubmitError
from jobstream.agents.decode import MAX_DEPTH, decode_event
from jobstream.models.errors import InvalidJobError
from jobstream.streams.cli import main
from jobstream.streams.exits import Exit

MAX_BYTES = 1_000_000
awkward_text = st.one_of(
    st.text(max_size=6),
    # no surrogate pair as two code points: JSON's spelling of it would decode as one character
    st.sampled_from(["a\x00b", "\x00", "\ud800", "x\udfffy", "😀"]),
)
numbers = st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True))
leaves = st.one_of(st.none(), st.booleans(), numbers, awkward_text)
documents = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(awkward_text, children, max_size=3)
    ),
    max_leaves=10,
)


def nested(levels: int) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for _ in range(levels - 1):
        doc = {"a": doc}
    return doc


def worker_decodes(payload: dict[str, Any]) -> bool:
    """What a worker does with the event as a careless producer would publish it (the JSON
    module's own spelling: NaN, Infinity, escaped surrogates)."""
    raw = json.dumps({"type": "echo", "payload": payload}).encode()
    try:
        decode_event(raw, max_bytes=MAX_BYTES)
    except InvalidJobError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(payload=st.dictionaries(awkward_text, documents, max_size=4))
@example(payload=nested(MAX_DEPTH - 1))  # the event object is one level more: the limit
@example(payload=nested(MAX_DEPTH))
@example(payload={"x": 1e308 * 10})
def test_the_client_refuses_exactly_what_a_worker_would_dead_letter(
    payload: dict[str, Any],
) -> None:
    client = JobClient("127.0.0.1:1")  # never started: nothing is published
    try:
        event = client.build("echo", payload)
    except SubmitError:
        refused = True
    else:
        refused = False
        assert decode_event(event.to_bytes(), max_bytes=MAX_BYTES).payload == event.payload
    assert refused is not worker_decodes(payload), payload


@pytest.mark.parametrize(
    "payload",
    [
        '{"x": "a\\u0000b"}',
        '{"x": "\\ud800"}',
        '{"x\\udfff": 1}',
        '{"x": 1e999}',
        '{"x": NaN}',
        json.dumps(nested(MAX_DEPTH)),
    ],
)
def test_jobstream_submit_refuses_them_before_publishing(
    payload: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOBSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # never reached
    assert main(["submit", "echo", "--payload", payload]) == Exit.USAGE
    assert "invalid job" in capsys.readouterr().err
