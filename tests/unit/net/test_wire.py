"""P2P frames (node/net/wire.py): decoding limits, bad frames, and metric labels."""

from __future__ import annotations

from typing import Any, cast

import pytest

from node.net.wire import BadFrame, decode_frame, encode_frame


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        encode_frame(cast(Any, [1, 2])),
        encode_frame({"t": "nope"}),
        encode_frame({"t": "c"}),
    ],
)
def test_bad_frames_raise_badframe(raw: bytes) -> None:
    with pytest.raises(BadFrame):
        decode_frame(raw, 1024)


def test_frame_round_trip_and_size_limit() -> None:
    frame = encode_frame({"t": "c", "d": b"x" * 10})
    assert decode_frame(frame, 1024)["d"] == b"x" * 10
    with pytest.raises(BadFrame):
        decode_frame(frame, 5)


def test_consensus_frames_are_labelled_by_message_kind() -> None:
    from consensus import messages as m
    from node.net.wire import consensus_kind, frame_label

    vote = m.encode(m.Prepare(1, 2, b"d" * 32, 0, b"s" * 64))
    commit = m.encode(m.CommitVote(1, 2, b"d" * 32, 0, b"s" * 64))
    pp = m.encode(m.PrePrepare(1, 2, b"d" * 32, b"p" * 5000, 0, b"s" * 64))
    assert consensus_kind(vote) == "prepare"
    assert consensus_kind(commit) == "commit"
    assert frame_label({"t": "c", "d": pp}) == "preprepare"
    assert frame_label({"t": "c", "d": b"\xc1junk"}) == "unknown"
    assert frame_label({"t": "status", "height": 1, "view": 0}) == "status"
