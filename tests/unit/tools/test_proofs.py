"""Client-side proof checks (node/tools/proofs.py) on a block signed by a real 4-validator set."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from common.crypto import SigningKey, to_hex
from common.merkle import merkle_proof
from consensus.certificate import CommitCertificate
from consensus.messages import domain, vote_content
from node.chain.block import BlockHeader, Proposal, build_block
from node.chain.tx import make_anchor, make_transfer
from node.tools.proofs import ProofError, verify_anchor_tx, verify_tx_inclusion

CHAIN = "vigil-proofs"
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
VALIDATORS = [k.public_key for k in KEYS]
USER = SigningKey(b"\x09" * 32)
DIGEST = bytes(range(32))


def _fixture(signers: tuple[int, ...] = (0, 1, 3)) -> dict[str, Any]:
    txs = [make_transfer(USER, CHAIN, b"\x01" * 20, 5, 1, n) for n in range(4)]
    anchor = make_anchor(USER, CHAIN, DIGEST, b"memo", 1, 4)
    txs.insert(2, anchor)
    proposal = Proposal(9, 1, 1_700_000_000_000, tuple(t.hash for t in txs))
    parent = BlockHeader(8, b"\x07" * 32, b"\x06" * 32, 1, 0, b"\x05" * 32)
    block = build_block(proposal, txs, parent)
    digest = proposal.digest
    commits = tuple(
        (i, KEYS[i].sign(domain("commit"), vote_content("commit", 2, 9, digest, i, CHAIN)))
        for i in signers
    )
    cert = CommitCertificate(view=2, seq=9, digest=digest, commits=commits)
    hashes = [t.hash for t in txs]
    block_json = {
        **block.header.to_json(cert.view),
        "tx_hashes": [to_hex(h) for h in hashes],
        "certificate": cert.to_json(),
    }
    proof = {
        "height": 9,
        "index": 2,
        "tx_root": to_hex(block.header.tx_root),
        "branch": [to_hex(b) for b in merkle_proof(hashes, 2)],
    }
    return {"tx": anchor, "block": block_json, "proof": proof, "cert": cert}


def test_valid_proof_passes_in_every_certificate_form() -> None:
    f = _fixture()
    verify_tx_inclusion(f["tx"].hash, f["proof"], f["block"], VALIDATORS, CHAIN)
    nested: dict[str, Any] = {
        "header": {k: v for k, v in f["block"].items() if k not in ("tx_hashes", "certificate")}
    }
    nested |= {"tx_hashes": f["block"]["tx_hashes"], "certificate": to_hex(f["cert"].encode())}
    verify_tx_inclusion(f["tx"].hash, f["proof"], nested, VALIDATORS, CHAIN)
    tx = verify_anchor_tx(f["tx"].to_json(), f["tx"].hash, DIGEST)
    assert tx.memo == b"memo"


def _flip(hex_str: str) -> str:
    return hex_str[:-1] + ("0" if hex_str[-1] != "0" else "1")


Tamper = Callable[[dict[str, Any]], object]
TAMPERS: dict[str, tuple[Tamper, str]] = {
    "branch": (
        lambda f: f["proof"]["branch"].__setitem__(0, _flip(f["proof"]["branch"][0])),
        "Merkle branch",
    ),
    "index": (lambda f: f["proof"].__setitem__("index", 3), "Merkle branch"),
    "proof_root": (
        lambda f: f["proof"].__setitem__("tx_root", _flip(f["proof"]["tx_root"])),
        "tx_root",
    ),
    "height": (lambda f: f["proof"].__setitem__("height", 8), "height"),
    "header_root": (
        lambda f: f["block"].__setitem__("tx_root", _flip(f["block"]["tx_root"])),
        "hash does not match",
    ),
    "header_time": (
        lambda f: (
            f["block"].__setitem__("timestamp", 1),
            f["block"].pop("hash"),
        ),
        "does not commit this header",
    ),
    "tx_list": (lambda f: f["block"]["tx_hashes"].pop(), "does not commit"),
    "signature": (
        lambda f: f["block"]["certificate"]["commits"][0].__setitem__(
            "signature", _flip(f["block"]["certificate"]["commits"][0]["signature"])
        ),
        "2f+1",
    ),
    "cert_view": (lambda f: f["block"]["certificate"].__setitem__("view", 3), "view"),
    "no_cert": (lambda f: f["block"].pop("certificate"), "certificate"),
    "dup_signer": (
        lambda f: f["block"]["certificate"]["commits"].append(
            f["block"]["certificate"]["commits"][0]
        ),
        "certificate",
    ),
    "bad_hex": (lambda f: f["proof"].__setitem__("tx_root", "zz"), "proof.tx_root"),
}


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_tampered_proofs_fail_with_a_reason(name: str) -> None:
    f = _fixture()
    mutate, needle = TAMPERS[name]
    mutate(f)
    with pytest.raises(ProofError) as info:
        verify_tx_inclusion(f["tx"].hash, f["proof"], f["block"], VALIDATORS, CHAIN)
    assert needle in info.value.reason


def test_too_few_signers_or_wrong_validators_or_chain() -> None:
    f = _fixture(signers=(0, 1))
    with pytest.raises(ProofError, match="2f\\+1"):
        verify_tx_inclusion(f["tx"].hash, f["proof"], f["block"], VALIDATORS, CHAIN)
    f = _fixture()
    other = [SigningKey(bytes([i + 50]) * 32).public_key for i in range(4)]
    with pytest.raises(ProofError, match="2f\\+1"):
        verify_tx_inclusion(f["tx"].hash, f["proof"], f["block"], other, CHAIN)
    with pytest.raises(ProofError, match="2f\\+1"):
        verify_tx_inclusion(f["tx"].hash, f["proof"], f["block"], VALIDATORS, "other-chain")


def test_wrong_tx_hash_fails() -> None:
    f = _fixture()
    with pytest.raises(ProofError, match="Merkle"):
        verify_tx_inclusion(b"\x00" * 32, f["proof"], f["block"], VALIDATORS, CHAIN)


def test_anchor_tx_checks() -> None:
    f = _fixture()
    tx = f["tx"]
    with pytest.raises(ProofError, match="different digest"):
        verify_anchor_tx(tx.to_json(), tx.hash, b"\x01" * 32)
    with pytest.raises(ProofError, match="do not hash"):
        verify_anchor_tx(tx.to_json(), b"\x02" * 32, DIGEST)
    forged = copy.deepcopy(tx.to_json()) | {"memo": "0x6f746865"}
    with pytest.raises(ProofError, match="do not hash"):
        verify_anchor_tx(forged, tx.hash, DIGEST)
    transfer = make_transfer(USER, CHAIN, b"\x01" * 20, 5, 1, 0)
    with pytest.raises(ProofError):
        verify_anchor_tx(transfer.to_json(), transfer.hash, DIGEST)
