"""Proposals, headers, blocks and genesis: canonical round trips and certificate matching."""

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import codec
from common.codec import CodecError
from common.crypto import SigningKey, address_of
from common.merkle import merkle_root
from consensus.api import NULL_DIGEST, Commit
from consensus.certificate import CommitCertificate
from node.chain.block import (
    Block,
    BlockHeader,
    Proposal,
    build_block,
    genesis_header,
    header_matches_certificate,
)
from node.chain.genesis import Genesis, GenesisError, Validator
from node.chain.tx import make_transfer

KEY = SigningKey(b"\x05" * 32)
GENESIS = Genesis(
    "vigil",
    tuple(Validator(i, SigningKey(bytes([i + 1]) * 32).public_key) for i in range(4)),
    ((address_of(KEY.public_key), 1000),),
    1_700_000_000_000,
)
hashes = st.lists(st.binary(min_size=32, max_size=32), max_size=20, unique=True)
u64 = st.integers(0, codec.U64_MAX)


@given(u64, st.integers(0, 100), u64, hashes)
def test_proposal_round_trip(height: int, proposer: int, ts: int, tx_hashes: list[bytes]) -> None:
    p = Proposal(height, proposer, ts, tuple(tx_hashes))
    assert Proposal.decode(p.encode()) == p
    assert p.digest == codec.sha256(p.encode())
    assert p.tx_root == merkle_root(tx_hashes)


@given(st.binary(max_size=200))
@settings(max_examples=200)
def test_garbage_payload_raises_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        Proposal.decode(data)
    with pytest.raises(CodecError):
        Block.decode(data)


def _chain() -> tuple[BlockHeader, Proposal, Block, Block]:
    g = genesis_header(GENESIS)
    txs = [make_transfer(KEY, "vigil", b"\x01" * 20, i, 1, i) for i in range(3)]
    p1 = Proposal(1, 1, 1_700_000_001_000, tuple(t.hash for t in txs))
    b1 = build_block(p1, txs, g)
    b2 = build_block(None, [], b1.header)
    return g, p1, b1, b2


def test_block_building_and_round_trip() -> None:
    g, p1, b1, b2 = _chain()
    assert b1.header.prev_hash == g.hash
    assert b1.header.payload_digest == p1.digest
    assert b1.proposal() == p1
    assert Block.decode(b1.encode()) == b1
    assert BlockHeader.decode(b1.header.encode()) == b1.header
    assert b2.height == 2
    assert b2.header.prev_hash == b1.hash
    assert b2.header.payload_digest == NULL_DIGEST
    assert b2.header.timestamp_ms == b1.header.timestamp_ms
    assert b2.header.proposer == b1.header.proposer  # a null block copies its parent's
    assert b2.txs == ()
    assert b2.proposal() is None
    assert Block.decode(b2.encode()) == b2
    j = b1.header.to_json(3)
    assert set(j) >= {"height", "hash", "prev_hash", "tx_root", "view", "proposer", "timestamp"}
    assert j["hash"] == "0x" + b1.hash.hex()
    assert j["view"] == 3  # the certificate's view, shown beside the header, not hashed


def test_block_decode_checks_tx_root() -> None:
    _, _, b1, _ = _chain()
    bad = Block(dataclasses.replace(b1.header, tx_root=b"\x00" * 32), b1.txs)
    with pytest.raises(CodecError, match="tx_root"):
        Block.decode(bad.encode())


def test_build_block_refuses_mismatches() -> None:
    g, p1, b1, _ = _chain()
    with pytest.raises(ValueError, match="height"):
        build_block(p1, b1.txs, b1.header)
    with pytest.raises(ValueError, match="tx_hashes"):
        build_block(p1, b1.txs[:2], g)


def test_one_block_hash_per_height_whatever_view_each_replica_committed_in(tmp_path: Path) -> None:
    """Issue 11 #1: node 0 commits seq 1-3 in view 1, node 2 in view 3 after a NEW-VIEW.

    Seq 1 carries txs, seq 2 is a null request (NEW-VIEW gap), seq 3 carries txs again; both
    nodes run the real chain on LevelDB. The hashes (and every later prev_hash) must agree.
    """
    from node.chain.chain import Chain
    from storage.db import Store

    txs = [make_transfer(KEY, "vigil", b"\x01" * 20, 1, 1, i) for i in range(2)]
    p1 = Proposal(1, 1, 1_700_000_001_000, (txs[0].hash,))
    p3 = Proposal(3, 3, 1_700_000_003_000, (txs[1].hash,))
    heads = []
    for node, view in ((0, 1), (2, 3)):
        store = Store(str(tmp_path / f"n{node}"))
        try:
            chain = Chain(store, GENESIS)
            chain.load()
            commits = [(1, p1.encode(), [txs[0]]), (2, b"", []), (3, p3.encode(), [txs[1]])]
            for seq, payload, block_txs in commits:
                digest = codec.sha256(payload) if payload else NULL_DIGEST
                cert = CommitCertificate(view, seq, digest, ()).encode()  # stored, not hashed
                chain.apply_commit(Commit(seq, view, digest, payload, cert), block_txs)
            heads.append([chain.header(h) for h in (1, 2, 3)])
        finally:
            store.close()
    assert [h.hash for h in heads[0] if h] == [h.hash for h in heads[1] if h]
    null = heads[0][1]
    assert null is not None
    assert null.is_null
    assert (null.proposer, null.timestamp_ms) == (1, 1_700_000_001_000)  # copied from height 1


def test_header_encoding_is_version_2_without_view() -> None:
    _, _, b1, _ = _chain()
    m = codec.decode(b1.header.encode())
    assert m["version"] == 2
    assert "view" not in m
    m["version"] = 1
    with pytest.raises(CodecError, match="version"):
        BlockHeader.decode(codec.encode(m))


def test_header_matches_certificate() -> None:
    _, p1, b1, b2 = _chain()
    assert header_matches_certificate(b1.header, b1.tx_hashes, 1, p1.digest)
    assert not header_matches_certificate(b1.header, b1.tx_hashes, 2, p1.digest)
    assert not header_matches_certificate(b1.header, b1.tx_hashes[:2], 1, p1.digest)
    assert not header_matches_certificate(b1.header, b1.tx_hashes, 1, b"\x01" * 32)
    moved = dataclasses.replace(b1.header, timestamp_ms=1)
    assert not header_matches_certificate(moved, b1.tx_hashes, 1, p1.digest)
    assert header_matches_certificate(b2.header, (), 2, NULL_DIGEST)
    assert not header_matches_certificate(b2.header, b1.tx_hashes, 2, NULL_DIGEST)


def test_genesis_json_round_trip_and_hash(tmp_path: Path) -> None:
    path = tmp_path / "genesis.json"
    GENESIS.save(path)
    loaded = Genesis.load(path)
    assert loaded == GENESIS
    assert loaded.hash == GENESIS.hash
    assert dataclasses.replace(GENESIS, timestamp_ms=1).hash != GENESIS.hash


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda j: j.pop("chain_id"), "chain_id: missing"),
        (lambda j: j.update(chain_id="bad id"), "chain_id"),
        (lambda j: j["validators"][1].update(index=5), r"validators\[1\].index"),
        (lambda j: j["validators"][0].update(public_key="0x12"), r"validators\[0\].public_key"),
        (
            lambda j: j["validators"][2].update(public_key="0x01" + "00" * 31),  # small order
            r"validators\[2\].public_key: not a usable Ed25519 key",
        ),
        (lambda j: j["balances"][0].update(amount=-1), r"balances\[0\].amount"),
        (lambda j: j["balances"][0].update(address="zz"), r"balances\[0\].address"),
        (lambda j: j.update(timestamp_ms="now"), "timestamp_ms"),
        (lambda j: j.update(validators=[]), "validators"),
    ],
)
def test_genesis_errors_name_the_field(
    mutate: Callable[[dict[str, Any]], object], field: str
) -> None:
    j = GENESIS.to_json()
    mutate(j)
    with pytest.raises(GenesisError, match=field):
        Genesis.from_json(j)


def test_genesis_load_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    path.write_text("{not json")
    with pytest.raises(GenesisError, match="not valid JSON") as err:
        Genesis.load(path)
    assert str(path) in str(err.value)
    with pytest.raises(GenesisError, match="cannot read"):
        Genesis.load(tmp_path / "missing.json")
