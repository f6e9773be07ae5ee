"""Commit certificates: canonical round trips and offline verification by a light client."""

from __future__ import annotations

import pytest

from common import codec
from common.crypto import SigningKey
from consensus import messages as m
from consensus.certificate import CommitCertificate, verify_certificate

SEEDS = [bytes([i + 1]) * 32 for i in range(4)]
KEYS = [SigningKey(s) for s in SEEDS]
VALIDATORS = tuple(k.public_key for k in KEYS)
DIGEST = codec.sha256(b"block")


def commit_sig(
    index: int, view: int = 2, seq: int = 7, digest: bytes = DIGEST, chain: str = "vigil"
) -> bytes:
    vote = m.sign(m.CommitVote(view, seq, digest, index), KEYS[index], chain)
    return vote.sig


def cert(indexes: tuple[int, ...] = (0, 1, 3)) -> CommitCertificate:
    return CommitCertificate(2, 7, DIGEST, tuple((i, commit_sig(i)) for i in indexes))


def test_round_trip_and_json() -> None:
    c = cert()
    assert CommitCertificate.decode(c.encode()) == c
    j = c.to_json()
    assert j["digest"] == "0x" + DIGEST.hex()
    assert [x["index"] for x in j["commits"]] == [0, 1, 3]
    assert j["commits"][0]["signature"].startswith("0x")


def test_two_f_plus_one_valid_commits_verify() -> None:
    assert verify_certificate(cert(), VALIDATORS, "vigil")
    assert verify_certificate(cert((0, 1, 2, 3)), VALIDATORS, "vigil")


def test_too_few_commits_fail() -> None:
    assert not verify_certificate(cert((0, 1)), VALIDATORS, "vigil")


def test_other_chain_or_fields_fail() -> None:
    assert not verify_certificate(cert(), VALIDATORS, "other-chain")
    c = cert()
    for tampered in (
        CommitCertificate(c.view + 1, c.seq, c.digest, c.commits),
        CommitCertificate(c.view, c.seq + 1, c.digest, c.commits),
        CommitCertificate(c.view, c.seq, codec.sha256(b"other"), c.commits),
    ):
        assert not verify_certificate(tampered, VALIDATORS, "vigil")


def test_forged_duplicate_or_unknown_signers_fail() -> None:
    c = cert()
    forged = ((0, c.commits[0][1]), (1, c.commits[0][1]), (3, c.commits[2][1]))
    assert not verify_certificate(CommitCertificate(2, 7, DIGEST, forged), VALIDATORS, "vigil")
    dup = (c.commits[0], c.commits[0], c.commits[1])
    assert not verify_certificate(CommitCertificate(2, 7, DIGEST, dup), VALIDATORS, "vigil")
    unknown = (*c.commits, (9, c.commits[0][1]))
    assert not verify_certificate(CommitCertificate(2, 7, DIGEST, unknown), VALIDATORS, "vigil")
    # A prepare signature is not a commit signature (domain separation).
    prepare = m.sign(m.Prepare(2, 7, DIGEST, 2), KEYS[2], "vigil").sig
    mixed = (c.commits[0], c.commits[1], (2, prepare))
    assert not verify_certificate(CommitCertificate(2, 7, DIGEST, mixed), VALIDATORS, "vigil")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        codec.encode({"view": 1, "seq": 1, "digest": DIGEST}),
        codec.encode({"view": 1, "seq": 1, "digest": b"short", "commits": []}),
        codec.encode(
            {"view": 1, "seq": 1, "digest": DIGEST, "commits": [[1, b"x" * 64], [0, b"y" * 64]]}
        ),
        codec.encode({"view": 1, "seq": 1, "digest": DIGEST, "commits": [[0, b"x" * 63]]}),
        codec.encode({"view": 1, "seq": 1, "digest": DIGEST, "commits": [[0]]}),
        codec.encode({"view": -1, "seq": 1, "digest": DIGEST, "commits": []}),
    ],
)
def test_malformed_bytes_raise_codec_error(data: bytes) -> None:
    with pytest.raises(codec.CodecError):
        CommitCertificate.decode(data)
