"""What a commit's metadata says is finished past the committed offset."""

from __future__ import annotations

import random

from jobstream.streams.worker.consumer import DONE_MAX_BITS, decode_done, encode_done


def test_the_finished_offsets_past_the_commit_come_back_as_they_went() -> None:
    rng = random.Random(5)
    acked = sorted(rng.sample(range(1001, 9000), 3000))
    text = encode_done(1000, acked)
    assert len(text) <= 3500
    assert decode_done(text) == (1000, frozenset(acked))


def test_offsets_below_the_commit_or_beyond_the_bitmap_are_left_out() -> None:
    text = encode_done(100, [50, 100, 101, 100 + DONE_MAX_BITS + 5])
    assert decode_done(text) == (100, frozenset({100, 101}))
    assert encode_done(100, []) == ""
    assert encode_done(100, [10]) == ""


def test_metadata_it_did_not_write_is_ignored() -> None:
    for text in ("", "other", "jsdone1:x:y", "jsdone1:5:not-base64!", "jsdone2:5:eJw="):
        assert decode_done(text) is None
