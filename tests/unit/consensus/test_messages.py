"""Wire messages: canonical round trips, and the fast vote encoding equals codec.encode."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import codec
from common.crypto import SigningKey
from common.crypto import verify as verify_sig
from consensus import messages as m

KEY = SigningKey(b"\x07" * 32)
DIGEST = codec.sha256(b"x")


def test_fast_vote_content_is_the_canonical_encoding() -> None:
    for kind in ("pre_prepare", "prepare", "commit"):
        for view, seq, sender in ((0, 1, 0), (300, 2**40, 3), (2**64 - 1, 0, 1023)):
            body = {"view": view, "seq": seq, "digest": DIGEST, "sender": sender}
            expected = codec.encode({"chain": "vigil-test", "type": kind, **body})
            assert m.vote_content(kind, view, seq, DIGEST, sender, "vigil-test") == expected
    expected = codec.encode(
        {"chain": "c", "type": "checkpoint", "seq": 16, "digest": DIGEST, "sender": 2}
    )
    assert m.checkpoint_content(16, DIGEST, 2, "c") == expected


def test_every_message_round_trips() -> None:
    pp = m.sign(m.PrePrepare(1, 2, m.payload_digest(b"p"), b"p", 1), KEY, "vigil")
    prepared = m.PreparedCert(1, 2, pp.digest, b"p", pp.sig, ((0, b"s" * 64), (2, b"t" * 64)))
    vc = m.sign(m.ViewChange(2, 0, b"\x00" * 32, (), (prepared,), 3), KEY, "vigil")
    nv = m.sign(m.NewView(2, (vc,), (pp,), 2), KEY, "vigil")
    msgs: list[m.Message] = [
        pp,
        m.sign(m.Prepare(1, 2, DIGEST, 3), KEY, "vigil"),
        m.sign(m.CommitVote(1, 2, DIGEST, 3), KEY, "vigil"),
        m.sign(m.Checkpoint(16, DIGEST, 3), KEY, "vigil"),
        vc,
        nv,
        m.sign(m.Retract(4, 2, 3), KEY, "vigil"),
        m.sign(m.RetractAck(4, 2, 3, 1), KEY, "vigil"),
        m.sign(m.ViewChange(5, 0, b"\x00" * 32, (), (), 3, epoch=7), KEY, "vigil"),
    ]
    for msg in msgs:
        assert m.decode(m.encode(msg), 1024, 1 << 20) == msg


@pytest.mark.parametrize(
    "value",
    [
        {"type": "prepare", "view": 1, "seq": 1, "digest": DIGEST, "sender": 1},
        {"type": "nope"},
        {
            "type": "prepare",
            "view": 1,
            "seq": 1,
            "digest": DIGEST,
            "sender": 1,
            "sig": b"s" * 64,
            "x": 1,
        },
        {"type": "commit", "view": -1, "seq": 1, "digest": DIGEST, "sender": 1, "sig": b"s" * 64},
        [1, 2, 3],
    ],
)
def test_bad_shapes_are_codec_errors(value: object) -> None:
    with pytest.raises(codec.CodecError):
        m.decode(codec.encode(value), 1024, 1 << 20)


_U64 = st.integers(min_value=0, max_value=2**64 - 1)
_INDEX = st.integers(min_value=0, max_value=m.VALIDATORS_MAX - 1)
_SIG = st.binary(min_size=64, max_size=64)


@settings(max_examples=200, deadline=None)
@given(view=_U64, epoch=_U64, target=_INDEX, sender=_INDEX, sig=_SIG)
def test_retract_messages_round_trip_canonically(
    view: int, epoch: int, target: int, sender: int, sig: bytes
) -> None:
    for msg in (
        m.Retract(view, epoch, sender, sig),
        m.RetractAck(view, epoch, target, sender, sig),
        m.ViewChange(view, 0, b"\x00" * 32, (), (), sender, sig, epoch),
    ):
        data = m.encode(msg)
        assert m.decode(data, 1024, 1 << 20) == msg
        assert m.encode(m.decode(data, 1024, 1 << 20)) == data  # one encoding per value


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_decode_or_raise_codec_error(data: bytes) -> None:
    try:
        m.decode(data, 1024, 1 << 20)
    except codec.CodecError:
        pass


def test_retract_signatures_cover_every_field() -> None:
    rt = m.sign(m.Retract(4, 2, 3), KEY, "vigil")
    ack = m.sign(m.RetractAck(4, 2, 3, 1), KEY, "vigil")
    for msg, other in (
        (rt, m.Retract(4, 3, 3, rt.sig)),
        (rt, m.Retract(5, 2, 3, rt.sig)),
        (ack, m.RetractAck(4, 2, 0, 1, ack.sig)),
        (ack, m.RetractAck(4, 1, 3, 1, ack.sig)),
    ):
        content = m.signing_content(other, "vigil")
        assert not verify_sig(KEY.public_key, m.domain(other.kind), content, msg.sig)
        good = m.signing_content(msg, "vigil")
        assert verify_sig(KEY.public_key, m.domain(msg.kind), good, msg.sig)
